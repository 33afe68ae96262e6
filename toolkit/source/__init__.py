"""The source checkpoint: a local folder or a Hub download (hub.py), read and refused when it
cannot be built safely (checkpoint.py), its tensors one at a time (tensors.py), transformers'
config and tokenizer (hf.py), a GGUF file turned into a folder (gguf.py). May import plan and below."""
