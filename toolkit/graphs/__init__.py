"""Graph writers: the ONNX graphs slmkit writes itself, one checkpoint tensor at a time.

ops.py        what they share: shape, rope caches, the builder's quantizer, GraphWriter
attention.py  attention in the builder's CPU/CUDA and DirectML flavours
decoder.py    the decoder (Phi-3, Phi-3.5, Llama) for the CPU, CUDA and DirectML providers
"""
