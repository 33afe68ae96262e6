"""llama.cpp's format: one GGUF file (weights, tokenizer, chat template) and an Ollama Modelfile,
for llama.cpp, Ollama and LM Studio on a CPU (target gguf); checked here with llama-cpp-python."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ..bundle import modelfile, readme
from ..errors import ConfigError
from ..export import export_gguf, gguf
from ..families import family_of
from ..plan import llama
from ..plan.config import BuildPlan
from ..source.checkpoint import SourceModel
from . import onnx
from .format import Format


def refuse_source(src: SourceModel) -> None:
    if family_of(src.config).gguf is None:
        raise ConfigError(
            f"{src.architecture} is not written as GGUF: slmkit has no llama.cpp tensor layout for its family "
            f"({family_of(src.config).name}). Build it with --target cpu (onnxruntime-genai)."
        )


def check_plan(src: SourceModel, plan: BuildPlan) -> None:
    gguf.check_supported(src.config, plan.export, plan.quantize)
    llama.require("The GGUF target verifies its bundle")


def apply_settings(model_dir: Path, plan: BuildPlan, _config: dict[str, Any], eos: list[int]) -> list[int]:
    """The context cap and stop ids in gguf.json; every tensor's type and shape read back."""
    stops = gguf.apply_settings(model_dir, plan.optimize.context_cap, eos)
    gguf.check_settings(model_dir, plan.export, plan.quantize)
    return stops


def add_modelfile(bundle: Path, src: SourceModel, plan: BuildPlan, stops: list[int]) -> None:
    modelfile.write_modelfile(bundle / "model", src, stops, plan.optimize.context_cap)


def llama_cpp_version(_plan: BuildPlan) -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "not installed"


FORMAT = Format(
    name="gguf",
    description="llama.cpp: model.gguf and an Ollama Modelfile",
    engines=("gguf",),
    providers=("cpu",),
    runners=("llama-cpp",),
    wrong_runner=onnx.WRONG_RUNNER,
    host_runner="llama-cpp",
    refuse_source=refuse_source,
    check_plan=check_plan,
    toolchain=lambda: [llama.check()],
    export=export_gguf,
    apply_settings=apply_settings,
    setting_mismatches=lambda model_dir, plan, _arch: gguf.setting_mismatches(model_dir, plan.export, plan.quantize),
    add_to_bundle=add_modelfile,
    readme=readme.gguf_readme,
    runtime_version=llama_cpp_version,
    stop_ids=lambda model_dir: json.loads((model_dir / "gguf.json").read_text(encoding="utf-8"))["stop_ids"],
    host_provider=lambda _ep: "bundle",
    pending_on_device=lambda _plan: [],
    illegal_instruction=llama.SIGILL_FIX,
)
