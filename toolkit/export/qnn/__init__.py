"""The Hexagon NPU engine (`export.engine = "qnn"`): static w4a16 graphs written by slmkit from the
checkpoint's weights, one decoder layer at a time (decoder.py), the CPU's embeddings and positions
graphs (cpu_graphs.py), QNN context binaries compiled at build time in a child process per part
(compile.py, compiler.py), and onnxruntime-genai's decoder-pipeline config (config.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...graphs.ops import Shape
from ...plan.config import SOCS, BuildPlan, ExportConfig
from ...quantize import rotation
from ...source.checkpoint import SourceModel
from ...source.tensors import CheckpointTensors
from ..stream import write_config_files
from .compile import compile_part
from .config import pipeline_config
from .cpu_graphs import write_embeddings, write_logits, write_positions
from .decoder import DecoderWriter

REPORT = "npu.json"  # the parts, their compile reports and the mask value, beside genai_config.json


def export_qnn(src: SourceModel, plan: BuildPlan, work: Path, log: Callable[[str], None], step: str) -> Path:
    """model/: embeddings.onnx, positions.onnx, each part's context models and binaries,
    genai_config.json, the tokenizer files and npu.json; the QDQ graphs stay in work/qdq."""
    work.mkdir(parents=True, exist_ok=True)
    src = rotation.for_export(src, plan.quantize, work, lambda m: log(f"{step}{m}"))
    npu, shape = plan.npu, Shape.of(src.config)
    soc, arch = SOCS[npu.soc]
    log(
        f"{step}static w4a16 graphs for the Hexagon NPU ({npu.soc}: soc_model {soc}, HTP v{arch}), "
        f"calibrated one decoder layer at a time"
    )
    out, qdq = work / "export", work / "qdq"
    out.mkdir()
    qdq.mkdir()
    write_config_files(src.path, ExportConfig(engine="stream", execution_provider="cpu", precision="int4"), out, work)
    weights = CheckpointTensors(src.path, src.weight_files)
    write_embeddings(weights.float32("model.embed_tokens.weight"), out / "embeddings.onnx")
    writer = DecoderWriter(src, plan, qdq, lambda m: log(f"      {m}"))
    parts = writer.write(work)
    write_positions(shape, plan.optimize.context_cap, writer.cos, writer.sin, writer.mask, out / "positions.onnx")
    pieces = [p["outputs"][0] for p in parts if p["head"]]
    if pieces != ["logits"]:
        write_logits(pieces, shape.vocab, out / "logits.onnx")
    reports = compile_parts(qdq, out, parts, plan, log)
    base = json.loads((out / "genai_config.json").read_text(encoding="utf-8"))
    config = pipeline_config(base, shape, plan, parts)
    (out / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    report = {"mask_value": writer.mask, "parts": [p | {"compile": r} for p, r in zip(parts, reports, strict=True)]}
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def compile_parts(
    qdq: Path, out: Path, parts: list[dict[str, Any]], plan: BuildPlan, log: Callable[[str], None]
) -> list:
    """Every part's context binary for the device; with weight sharing, also one binary per graph in
    work/check for the x86 HTP backend, which cannot load shared ones."""
    reports = []
    for part in parts:
        layers = f"layers {part['layers'][0]}-{part['layers'][-1]}" if part["layers"] else "final norm and lm_head"
        what = f"part {part['index'] + 1} of {len(parts)} ({layers})"
        report = compile_part(qdq, out, part, plan.npu, plan.npu.weight_sharing, what)
        log(f"      {what}: compiled in {report['seconds']:.0f} s, compiler peak {report['peak_mb']} MB")
        if plan.npu.weight_sharing:
            check = out.parent / "check"
            check.mkdir(exist_ok=True)
            report["check"] = compile_part(qdq, check, part, plan.npu, False, f"{what} (x86 check copy)")
        reports.append(report)
    return reports
