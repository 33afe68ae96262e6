"""Export: the checkpoint's weights to an ONNX model folder (model.onnx, genai_config.json,
tokenizer) or a GGUF one (model.gguf), for the output formats of toolkit/formats/. stream.py is
slmkit's streamed engine, builder.py the onnxruntime-genai builder called as a library, gguf.py
the GGUF writer, optimize.py the target's settings and the read-back of every one. May import
quantize, families, graphs, source, plan and below."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..plan.config import OWN_METHODS, BuildPlan
from ..quantize import choices, rotation
from ..source.checkpoint import SourceModel
from . import builder, gguf, stream


def export_onnx(src: SourceModel, plan: BuildPlan, work: Path, log: Callable[[str], None], step: str) -> Path:
    """Export and quantize per the plan with slmkit's streamed engine or the onnxruntime-genai
    builder; return the folder with model.onnx and genai_config.json."""
    work.mkdir(parents=True, exist_ok=True)
    q, precision = plan.quantize, plan.export.precision
    src = rotation.for_export(src, q, work, lambda m: log(f"{step}{m}"))
    if plan.export.engine == "stream":
        how = (
            f"slmkit's calibrated {q.method}, one decoder layer at a time"
            if q.method in OWN_METHODS
            else "slmkit's streamed writer (one tensor in memory at a time)"
        )
        log(f"{step}export + {precision} quantization with {how}")
        return stream.export_stream(
            src.path, src.weight_files, src.config, plan.export, q, work, lambda m: log(f"      {m}"), src.lora_modules
        )
    log(f"{step}export + {precision} quantization with the onnxruntime-genai builder")
    options = choices.builder_options(q, precision) | stream.PROVIDER_OPTIONS.get(plan.export.execution_provider, {})
    return builder.run_builder(src.path, plan.export, options, work)


def export_gguf(src: SourceModel, plan: BuildPlan, work: Path, log: Callable[[str], None], step: str) -> Path:
    """Export and quantize per the plan into model.gguf; return its folder."""
    work.mkdir(parents=True, exist_ok=True)
    q, precision = plan.quantize, plan.export.precision
    src = rotation.for_export(src, q, work, lambda m: log(f"{step}{m}"))
    how = f"slmkit's calibrated {q.method}" if q.method in OWN_METHODS else "llama.cpp's round-to-nearest"
    log(f"{step}GGUF export + {precision} quantization with {how}, one tensor at a time")
    return gguf.export_gguf(src.path, src.weight_files, src.config, plan.export, q, work, lambda m: log(f"      {m}"))
