"""A PEFT LoRA adapter (adapter_config.json and adapter_model.safetensors), checked against the
checkpoint it was trained on and merged into it: W + s B A (s = lora_alpha / r, or / sqrt(r) with
rsLoRA) for every target Linear, written as a safetensors checkpoint one tensor at a time (memory:
one tensor and its A and B), before anything reads the weights. Export, calibration and the float32
reference then all see the fine-tuned model, as if it had been trained in full."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputModelError
from .checkpoint import SourceModel, safetensors_header, sha256_file

PREFIX = "base_model.model."  # PEFT's name of the wrapped model in its saved tensors


@dataclass(frozen=True)
class Adapter:
    path: Path
    name: str
    rank: int
    scale: float  # of each module: PEFT's lora_alpha / r (rsLoRA: / sqrt(r)), its patterns applied
    scales: dict[str, float]  # module (checkpoint name without .weight) -> its scale
    base: str  # base_model_name_or_path

    def summary(self) -> dict[str, Any]:
        files = {
            p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(self.path.iterdir())
            if p.is_file()
        }
        return {
            "name": self.name,
            "base_model": self.base,
            "rank": self.rank,
            "modules": len(self.scales),
            "files": files,
        }


def read_adapter(path: Path, name: str = "adapter") -> Adapter:
    """Read and refuse an adapter folder before anything is built from it."""
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise InputModelError(f"--adapter {path}: no adapter_config.json (a PEFT LoRA adapter folder has one).")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in path.glob("adapter_model*.bin"))
        raise InputModelError(
            f"--adapter {path}: no adapter_model.safetensors"
            + (
                f"; it has pickle weights ({', '.join(pickles)}), which slmkit does not unpickle. Save the adapter "
                "with safe_serialization=True (PEFT's default)."
                if pickles
                else "."
            )
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputModelError(f"{config_path} is not valid JSON ({e}).") from None
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (slmkit merges LoRA adapters)")
    if config.get("use_dora"):
        problems.append("use_dora (DoRA rescales each column by a learned magnitude; slmkit merges plain LoRA)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')!r} (trained biases; these checkpoints' Linears have none)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (whole modules retrained, not LoRA)")
    if problems:
        raise InputModelError(f"--adapter {path} cannot be merged: " + "; ".join(problems) + ".")
    r, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    header, _ = safetensors_header(weights)
    modules = sorted({k[len(PREFIX) :].rsplit(".lora_", 1)[0] for k in header if ".lora_A." in k})

    def scale(module: str) -> float:
        rank = next((v for p, v in config.get("rank_pattern", {}).items() if module.endswith(p)), r)
        a = next((v for p, v in config.get("alpha_pattern", {}).items() if module.endswith(p)), alpha)
        return a / (math.sqrt(rank) if config.get("use_rslora") else rank)

    scales = {m: scale(m) for m in modules}
    return Adapter(path, name, r, alpha / r, scales, str(config.get("base_model_name_or_path") or ""))


def check_against(adapter: Adapter, src: SourceModel) -> None:
    """Refuse an adapter whose modules the checkpoint does not have (Phi-3 fuses q/k/v and gate/up:
    an adapter trained on q_proj names another model's layout), whose A/B shapes do not fit, or whose
    base names another Hub model than the one being built."""
    from .tensors import CheckpointTensors

    weights = CheckpointTensors(src.path, src.weight_files)
    header, _ = safetensors_header(adapter.path / "adapter_model.safetensors")
    missing = [m for m in adapter.scales if f"{m}.weight" not in weights]
    if missing:
        have = sorted({k.rsplit(".", 2)[-2] for k in weights.entries if k.endswith(".weight") and ".layers.0." in k})
        raise InputModelError(
            f"--adapter {adapter.path} targets modules that {src.architecture} does not have: "
            f"{', '.join(sorted({m.rsplit('.', 1)[-1] for m in missing}))} (e.g. {missing[0]}). This checkpoint's "
            f"layer modules are {', '.join(have)}: the adapter was trained on another model's layout."
        )
    for m in adapter.scales:
        out_in = weights.entries[f"{m}.weight"].shape
        a = header[f"{PREFIX}{m}.lora_A.weight"]["shape"]
        b = header[f"{PREFIX}{m}.lora_B.weight"]["shape"]
        if a[1] != out_in[1] or b[0] != out_in[0] or a[0] != b[1]:
            raise InputModelError(
                f"--adapter {adapter.path}: {m} is {list(out_in)} in the checkpoint, the adapter's A {a} and B {b} "
                "do not fit it: the adapter belongs to another base model."
            )
    hub_ids = "/" in adapter.base and "/" in src.origin and not Path(src.origin).exists()
    if hub_ids and adapter.base.lower() != src.origin.lower():
        raise InputModelError(
            f"--adapter {adapter.path} was trained on {adapter.base}, not on {src.origin}. Build it with "
            f"--model {adapter.base}."
        )


def merged(src: SourceModel, adapter: Adapter, dest: Path) -> SourceModel:
    """The checkpoint with the adapter merged, as a folder `dest` (model.safetensors: every target
    weight W + s B A in float32, the others as they are; links to the source's other files)."""
    from .tensors import CheckpointTensors, write_derived

    weights = CheckpointTensors(src.path, src.weight_files)
    lora = CheckpointTensors(adapter.path, ("adapter_model.safetensors",))
    targets = {f"{m}.weight": m for m in adapter.scales}

    def value(name: str) -> np.ndarray:
        m = targets[name]
        a, b = lora.float32(f"{PREFIX}{m}.lora_A.weight"), lora.float32(f"{PREFIX}{m}.lora_B.weight")
        return weights.float32(name) + np.float32(adapter.scales[m]) * (b @ a)

    tensors = [(n, weights.entries[n].shape, n in targets) for n in sorted(weights.entries)]
    return write_derived(src, dest, tensors, value)
