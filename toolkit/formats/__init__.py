"""Output formats, each in one place: which plans write it, how it is exported, which settings it
applies and reads back, what its bundle adds, how this machine checks it and what stays pending on
the device (format.py says what a record holds). May import bundle, export and below; build and
verify ask `format_of`.

  onnx  onnxruntime-genai's ONNX model (cpu, android, ios, windows-dml, linux-cuda)
  gguf  one GGUF file for llama.cpp, Ollama and LM Studio
  web   a chat page on onnxruntime-web around the ONNX model
  npu   QNN context binaries for the Hexagon NPU (snapdragon), run by onnxruntime-genai
"""

from __future__ import annotations

from ..errors import ConfigError
from ..plan.catalog import load_target
from ..plan.config import BuildPlan, ExportConfig
from . import gguf, npu, onnx, web
from .format import Format

FORMATS: dict[str, Format] = {f.name: f for f in (onnx.FORMAT, gguf.FORMAT, web.FORMAT, npu.FORMAT)}


def format_for(engine: str, provider: str) -> Format:
    """The format that `export.engine` writes for `export.execution_provider`, or ConfigError."""
    for f in FORMATS.values():
        if engine in f.engines and provider in f.providers:
            return f
    writes = "; ".join(
        f"{f.name}: engines {', '.join(f.engines)} for {', '.join(f.providers)}" for f in FORMATS.values()
    )
    raise ConfigError(
        f"export.engine '{engine}' writes nothing for execution provider '{provider}'. The formats: {writes}."
    )


def format_of(plan: BuildPlan) -> Format:
    """The plan's format; ConfigError when its runner cannot run what its engine writes."""
    f = format_for(plan.export.engine, plan.export.execution_provider)
    if plan.runtime.runner not in f.runners:
        raise ConfigError(f.wrong_runner.format(engine=plan.export.engine, runner=plan.runtime.runner))
    return f


def format_of_target(name: str) -> Format:
    """The format a target's own settings write (recipes keep their target's engine and provider)."""
    export = load_target(name).sections.get("export", {})
    defaults = ExportConfig()
    return format_for(
        export.get("engine", defaults.engine), export.get("execution_provider", defaults.execution_provider)
    )
