"""The float32 reference: transformers' own model class, one decoder layer in memory at a time
(layerwise.py), asking the model's family for what differs. Calibration (quantize) and
verification (golden cases, eval) both run it. May import families, source, plan and below."""
