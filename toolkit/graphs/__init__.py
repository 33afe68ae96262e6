"""ONNX building blocks every graph writer shares (the families' writers use them), one checkpoint
tensor at a time: ops.py (shape, rope caches, the builder's quantizer, GraphWriter, save_graph),
attention.py (the builder's CPU/CUDA and DirectML attention), external.py (the external data
file). May import source, plan and below.
"""
