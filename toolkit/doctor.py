"""Is the toolchain here, and is there room? Run by `slmkit doctor` and at the start of every build."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolchainError

# (import name, distribution, minimum version, what it is for)
REQUIRED = (
    ("onnxruntime_genai", "onnxruntime-genai", "0.18", "model builder and runtime"),
    ("onnxruntime", "onnxruntime", "1.22", "graph checks and quantization"),
    ("onnx", "onnx", "1.17", "reading the built graph"),
    ("transformers", "transformers", "5.0", "reading checkpoints, the reference model"),
    ("torch", "torch", "2.4", "the reference model"),
    ("safetensors", "safetensors", "0.4", "reading weights"),
    ("numpy", "numpy", "1.26", "everything"),
)
# Peak resident memory of the onnxruntime-genai builder, measured: 8.8 GB for 1.1 B parameters,
# 15.1 GB for 2.0 B (shared/ANCHORS.md), i.e. about 8 bytes per parameter.
BUILDER_BYTES_PER_PARAM = 8.0
# The streamed engine (toolkit/stream.py): Python with torch and onnxruntime loaded, plus a few
# copies of the largest tensor. benchmarks/build_memory.py measured 1.68 GB for the Phi-3.5-mini
# shape at 8 and at 32 layers; this estimate gives 2.6 GB there.
STREAM_BASE_BYTES = 1.0e9
STREAM_BYTES_PER_LARGEST_PARAM = 16
# Python with torch and transformers loaded, and generation's working memory, around the weights.
REFERENCE_BASE_BYTES = 1.0e9
BYTES_PER_PARAM = {"int4": 0.6, "int8": 1.1, "fp16": 2.0, "fp32": 4.0}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def package_checks() -> list[Check]:
    checks = []
    for module, dist, minimum, purpose in REQUIRED:
        if importlib.util.find_spec(module) is None:
            checks.append(Check(dist, False, f"not installed ({purpose}): pip install '{dist}>={minimum}'"))
            continue
        version = importlib.metadata.version(dist)
        ok = _version_tuple(version) >= _version_tuple(minimum)
        detail = version if ok else f"{version} is older than {minimum}: pip install -U '{dist}>={minimum}'"
        checks.append(Check(dist, ok, detail))
    return checks


def estimate_bundle_bytes(num_params: int, precision: str, vocab: int, hidden: int) -> int:
    # int4/int8 graphs keep the embedding table in float32 next to the quantized weights.
    extra = vocab * hidden * 4 if precision in ("int4", "int8") else 0
    return int(num_params * BYTES_PER_PARAM[precision]) + extra


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def disk_check(out: Path, need: int) -> Check:
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1e9:.1f} GB free at {probe}, the build needs about {need / 1e9:.2f} GB"
    return Check("disk", free >= need, detail)


def export_memory_bytes(num_params: int, config: dict, engine: str) -> int:
    """Peak resident memory of the export stage. The builder holds the whole model; the streamed
    engine holds the largest tensor a few times over (read, widened, transposed, packed)."""
    if engine != "stream":
        return int(num_params * BUILDER_BYTES_PER_PARAM)
    hidden = config["hidden_size"]
    largest = max(config["vocab_size"] * hidden, 2 * config["intermediate_size"] * hidden)
    return int(STREAM_BASE_BYTES + STREAM_BYTES_PER_LARGEST_PARAM * largest)


def reference_dtype(num_params: int) -> str:
    """The PyTorch reference that verification runs: float32 where it fits with room to spare,
    else bfloat16 (half the memory; Phi-3 and Phi-3.5 ship bfloat16 weights)."""
    fits = REFERENCE_BASE_BYTES + 4 * num_params < 0.8 * total_memory_bytes()
    return "float32" if fits else "bfloat16"


def reference_memory_bytes(num_params: int, dtype: str) -> int:
    return int(REFERENCE_BASE_BYTES + (4 if dtype == "float32" else 2) * num_params)


def memory_check(num_params: int, config: dict, engine: str) -> Check:
    """The build's peak: the export stage, or the PyTorch reference of the verify stage."""
    export = export_memory_bytes(num_params, config, engine)
    dtype = reference_dtype(num_params)
    reference = reference_memory_bytes(num_params, dtype)
    need = max(export, reference)
    have = total_memory_bytes()
    who = "streamed export" if engine == "stream" else "builder"
    detail = (f"{who} peak about {export / 1e9:.1f} GB, {dtype} reference for "
              f"verification {reference / 1e9:.1f} GB, for {num_params / 1e9:.2f} B parameters; "
              f"machine has {have / 1e9:.1f} GB")
    return Check("memory", need < have, detail)


def require(checks: list[Check]) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in bad)
        raise ToolchainError(f"The toolchain check failed:\n{lines}\nRun `slmkit doctor` after fixing it.")
