"""onnxruntime-genai's format: model.onnx (and its data), genai_config.json and the tokenizer, for
the CPU, CUDA and DirectML providers (targets cpu, android, ios, linux-cuda, windows-dml), run by
the Python, Kotlin and Objective-C runners; checked here with the Python runner on the CPU."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ..bundle import layout, readme
from ..export import export_onnx, optimize, stream
from ..plan.config import BuildPlan
from ..source.checkpoint import SourceModel
from .format import Format

HOST = "python"
# What a host check on the CPU provider cannot tell about a GPU bundle.
DEVICE_ONLY = {
    "cuda": "greedy tokens with the CUDA provider's fp16/int4 kernels (onnxruntime-genai-cuda on an NVIDIA GPU)",
    "dml": "greedy tokens with the DirectML provider (onnxruntime-genai-directml on Windows)",
}
ARM_NOTE = "the ARM64 int4 kernels of the device (this host ran the same graph on x86-64 CPU kernels)"
PHONE_RUNNERS = ("android", "ios")
ILLEGAL_INSTRUCTION = (
    "onnxruntime and onnxruntime-genai pick their kernels for the CPU at run time, so a wheel built for "
    "another machine is the likely cause: pip install --no-cache-dir --force-reinstall onnxruntime onnxruntime-genai"
)
WRONG_RUNNER = (
    "export.engine '{engine}' with runtime.runner '{runner}': a GGUF file is run by llama.cpp (runner "
    "'llama-cpp'), an ONNX model by onnxruntime-genai. Use --target gguf for a GGUF bundle."
)


def refuse_nothing(_src: SourceModel) -> None:
    return None


def check_stream(src: SourceModel, plan: BuildPlan) -> None:
    """What the streamed engine does not write is refused before anything is (the builder checks its own)."""
    if plan.export.engine == "stream":
        stream.check_supported(src, plan.export, plan.quantize)


def apply_settings(model_dir: Path, plan: BuildPlan, config: dict[str, Any], eos: list[int]) -> list[int]:
    """Context cap, threads, CUDA graph, rope caches, external data files and stop ids in the graph
    and genai_config.json, each read back."""
    optimize.apply_context_cap(model_dir, plan.optimize)
    optimize.apply_threads(model_dir, plan.optimize)
    optimize.apply_cuda_graph(model_dir, plan)
    optimize.trim_rope_caches(model_dir, plan.optimize)
    optimize.split_external_data(model_dir, plan.optimize)
    stops = optimize.add_stop_ids(model_dir, eos)
    optimize.check_settings(model_dir, plan, config, stops)
    return stops


def add_runner(bundle: Path, _src: SourceModel, plan: BuildPlan, _stops: list[int]) -> None:
    if plan.runtime.runner != HOST:
        layout.add_device_runner(bundle, plan.runtime.runner)


def genai_version(_plan: BuildPlan | None = None) -> str:
    """onnxruntime-genai's version here (its -cuda and -directml builds are checked with the CPU package)."""
    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return "not installed"


def genai_stop_ids(model_dir: Path) -> list[int] | int:
    return json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]


def pending_on_device(execution_provider: str, runner: str) -> list[str]:
    pending = [DEVICE_ONLY[execution_provider]] if execution_provider in DEVICE_ONLY else []
    if runner in PHONE_RUNNERS:
        pending += [ARM_NOTE, f"the {runner} runner and its instrumented smoke test on a device"]
    return pending


FORMAT = Format(
    name="onnx",
    description="onnxruntime-genai: model.onnx, genai_config.json, tokenizer",
    engines=("ort-genai", "stream"),
    providers=("cpu", "cuda", "dml"),
    runners=(HOST, *PHONE_RUNNERS),
    wrong_runner=WRONG_RUNNER,
    host_runner=HOST,
    refuse_source=refuse_nothing,
    check_plan=check_stream,
    toolchain=list,
    export=export_onnx,
    apply_settings=apply_settings,
    setting_mismatches=optimize.setting_mismatches,
    add_to_bundle=add_runner,
    readme=readme.onnx_readme,
    runtime_version=genai_version,
    stop_ids=genai_stop_ids,
    host_provider=lambda ep: "bundle" if ep == "cpu" else "cpu",
    pending_on_device=lambda plan: pending_on_device(plan.export.execution_provider, plan.runtime.runner),
    illegal_instruction=ILLEGAL_INSTRUCTION,
)
