"""Quantization: the builder's options for the plan (choices.py) and slmkit's own int4 methods on a
float32 export (own.py: mse blocks.py, gptq.py, awq.py, mixed.py; calibration.py runs the
layer-by-layer reference on the calibration text; rewrite.py writes the quantized graph).
May import reference, families, graphs, source, plan and below."""
