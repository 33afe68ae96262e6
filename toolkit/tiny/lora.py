"""Random LoRA adapters laid out as PEFT saves one (adapter_config.json and adapter_model.safetensors
with base_model.model.<module>.lora_A/lora_B), for the tests and the benchmarks: A random, B scaled
by `b_scale` (large enough that the adapted model's greedy tokens differ from the base's). Only the
checkpoint's shapes are read, so a 32-layer real-shaped checkpoint costs its adapter's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..source.tensors import CheckpointTensors


def make_lora_adapter(
    model: Path,
    out: Path,
    modules: tuple[str, ...],
    rank: int = 4,
    alpha: float = 8.0,
    b_scale: float = 0.05,
    seed: int = 0,
    **config,
) -> Path:
    """A LoRA adapter on every layer's `modules` (e.g. "self_attn.qkv_proj") of the checkpoint folder
    `model`; `config` adds to or overrides adapter_config.json's entries."""
    from safetensors.numpy import save_file

    weights = CheckpointTensors(model, tuple(sorted(p.name for p in model.glob("*.safetensors"))))
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    rng = np.random.default_rng(seed)
    lora = {}
    for i in range(layers):
        for m in modules:
            rows, inputs = weights.entries[f"model.layers.{i}.{m}.weight"].shape
            key = f"base_model.model.model.layers.{i}.{m}"
            lora[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, inputs)) / np.sqrt(inputs)).astype(np.float32)
            lora[f"{key}.lora_B.weight"] = (rng.standard_normal((rows, rank)) * b_scale).astype(np.float32)
    out.mkdir(parents=True)
    save_file(lora, str(out / "adapter_model.safetensors"))
    settings = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted({m.split(".")[-1] for m in modules}),
        "bias": "none",
        "base_model_name_or_path": str(model),
    }
    (out / "adapter_config.json").write_text(json.dumps(settings | config))
    return out
