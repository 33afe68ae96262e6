"""Verification of a bundle: golden cases from the reference (golden.py), its smoke test here
(smoke.py), on emulated ARM64 CPUs (emulate.py) and on its GPU (device.py); quality against float32
(quality.py, and --quality-budget: budget.py); speed (bench.py). May import bundle, export and below."""
