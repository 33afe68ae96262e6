"""Export: the checkpoint's weights to an ONNX model folder (model.onnx, genai_config.json,
tokenizer). stream.py is slmkit's streamed engine, builder.py the onnxruntime-genai builder called
as a library, optimize.py the target's settings and the read-back of every one. May import
quantize, families, graphs, source, plan and below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..plan.config import BuildPlan, builder_precision
from ..quantize import choices, own
from ..source.checkpoint import SourceModel, inspect_folder
from . import builder, stream


def export_model(
    src: SourceModel, plan: BuildPlan, work: Path, log: Callable[[str], None], step: str = "[2/5] "
) -> Path:
    """Export and quantize per the plan; return the folder with model.onnx and genai_config.json."""
    work.mkdir(parents=True, exist_ok=True)
    precision = builder_precision(plan.quantize, plan.export.precision)
    engine = (
        "slmkit's streamed writer (one tensor in memory at a time)"
        if plan.export.engine == "stream"
        else "the onnxruntime-genai builder"
    )
    if precision == plan.export.precision:
        log(f"{step}export + {precision} quantization with {engine}")
    else:
        log(
            f"{step}{precision} export with {engine}, then slmkit's {plan.quantize.method} "
            f"{plan.export.precision} quantization"
        )
    exported = replace(plan.export, precision=precision)
    if plan.quantize.method == "awq":
        src = inspect_folder(
            own.awq_source(src.path, plan.quantize, work, lambda m: log(f"      {m}")), src.origin, src.revision
        )
    if plan.export.engine == "stream":
        model_dir = stream.export_stream(src.path, src.weight_files, src.config, exported, plan.quantize, work)
    else:
        options = choices.builder_options(plan.quantize, plan.export.precision)
        model_dir = builder.run_builder(src.path, exported, options, work)
    if precision != plan.export.precision:
        own.apply_own_method(model_dir, plan.quantize, src.path, log=lambda m: log(f"      {m}"))
    return model_dir
