"""Runtime LoRA adapters (`adapters.mode = "runtime"`): the streamed graph's MatMuls that adapters
target take an A [K, r] and a B [r, N] input each (toolkit/graphs/ops.py GraphWriter._lora_branch,
empty by default: no adapter adds zeros), and each adapter becomes one `.onnx_adapter` file
(onnxruntime's adapter format) holding those tensors, which onnxruntime-genai binds when the adapter
is active. A graph MatMul made of several checkpoint Linears (Llama's q, k and v in one qkv_proj)
gets their A matrices side by side and their B matrices block-diagonal, each B scaled by its
module's alpha / r: x A B is then exactly the sum of the modules' s B_m A_m x over their rows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..plan.config import BuildPlan
from ..source.adapter import PREFIX, Adapter
from ..source.checkpoint import SourceModel
from ..source.tensors import CheckpointTensors

ADAPTERS_DIR = "adapters"  # in the model folder
SUFFIX = ".onnx_adapter"
# The decoder layers' projections: what the graph writers make MatMuls of, by checkpoint name.
LAYER_MODULE = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_runtime(src: SourceModel, plan: BuildPlan, adapters: list[Adapter]) -> None:
    """Refuse, before anything is written, runtime adapters that this target or these adapters
    cannot have."""
    if plan.export.engine != "stream" or plan.runtime.runner != "python":
        raise ConfigError(
            f"adapters.mode=runtime on target '{plan.target}': runtime adapters are written into slmkit's streamed "
            "ONNX graphs for the Python runner (targets cpu, linux-cuda, windows-dml). Merge the adapter into this "
            "target's weights instead: leave adapters.mode at 'merged' (one --adapter)."
        )
    names = [a.name for a in adapters]
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ConfigError(
            f"--adapter name {bad[0]!r}: an adapter's name becomes its file name; use letters, digits, '.', '_' "
            "and '-' (at most 64), e.g. --adapter support=./support-lora."
        )
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(
            f"--adapter: the name {twice[0]!r} is given twice; name each adapter, e.g. "
            "--adapter a=./one --adapter b=./two."
        )
    for a in adapters:
        other = sorted(m for m in a.scales if not LAYER_MODULE.match(m))
        if other:
            raise ConfigError(
                f"--adapter {a.name}={a.path}: it adapts {other[0]}, which is not a decoder layer's projection; "
                "runtime adapters take the layers' attention and MLP projections. Merge it instead "
                "(adapters.mode=merged)."
            )


def pieces_of(family: Any, shape: Any, weights: CheckpointTensors, modules: frozenset[str]):
    """For GraphWriter.lora: the checkpoint rows of a decoder MatMul that any adapter targets."""
    has = weights.__contains__

    def pieces(base: str) -> list[tuple[str, Any, Any, int]] | None:
        """(module, first row, end row or None for all, rows) in the MatMul's output order."""
        if base == "/lm_head" or family.hf_rows is None:
            return None
        try:
            rows = family.hf_rows(base, shape, lambda m: has(f"{m}.weight"))
        except AttributeError:  # a MatMul no decoder Linear makes (a vision encoder's)
            return None
        if not any(m in modules for m, *_ in rows):
            return None
        return [(m, s, e, e - s if s is not None else weights.entries[f"{m}.weight"].shape[0]) for m, s, e in rows]

    return pieces


def write_slots(slots: dict[str, dict[str, Any]], modules: frozenset[str], path: Path) -> None:
    """The graph's LoRA inputs and the checkpoint rows each is made of; every targeted module
    must have one."""
    covered = {m for slot in slots.values() for m, *_ in slot["rows"]}
    missing = sorted(modules - covered)
    if missing:
        raise ConfigError(
            f"The adapters target {missing[0]}, which no MatMul of this graph is made of (this family writes "
            "its projections differently). Merge the adapter instead (adapters.mode=merged)."
        )
    path.write_text(json.dumps(slots, indent=1) + "\n", encoding="utf-8")


def parameters(adapter: Adapter, slots: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The adapter's A and B tensors for each graph input pair it targets."""
    lora = CheckpointTensors(adapter.path, ("adapter_model.safetensors",))
    out: dict[str, np.ndarray] = {}
    for slot in slots.values():
        rows = slot["rows"]
        if not any(m in adapter.scales for m, *_ in rows):
            continue
        a_parts, b_parts, column = [], [], 0
        for module, start, end, width in rows:
            if module in adapter.scales:
                a = lora.float32(f"{PREFIX}{module}.lora_A.weight")  # [r, K]
                b = lora.float32(f"{PREFIX}{module}.lora_B.weight")  # [out, r]
                b = b if start is None else b[start:end]
                block = np.zeros((a.shape[0], slot["N"]), dtype=np.float32)  # its rank's rows of B
                block[:, column : column + width] = np.float32(adapter.scales[module]) * b.T
                a_parts.append(a)
                b_parts.append(block)
            column += width  # a module the adapter leaves alone keeps zero columns
        dtype = np.dtype(slot["dtype"])
        out[slot["A"]] = np.ascontiguousarray(np.concatenate(a_parts).T, dtype=dtype)
        out[slot["B"]] = np.concatenate(b_parts).astype(dtype)
    return out


def write_adapters(adapters: list[Adapter], work: Path, model_dir: Path) -> list[dict[str, Any]]:
    """One .onnx_adapter file per adapter in model_dir/adapters; their manifest entries."""
    import onnxruntime as ort

    slots = json.loads((work / "lora_slots.json").read_text(encoding="utf-8"))
    folder = model_dir / ADAPTERS_DIR
    folder.mkdir()
    entries = []
    for adapter in adapters:
        params = parameters(adapter, slots)
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(1)
        fmt.set_model_version(1)
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
        path = folder / f"{adapter.name}{SUFFIX}"
        fmt.export_adapter(str(path))
        entries.append(
            adapter.summary() | {"mode": "runtime", "file": f"model/{ADAPTERS_DIR}/{path.name}", "inputs": len(params)}
        )
    return entries
