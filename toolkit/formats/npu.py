"""The Hexagon NPU's format (target snapdragon): QNN context binaries of slmkit's static w4a16
graphs with their EPContext models, two small CPU graphs and onnxruntime-genai's decoder-pipeline
config. Checked here with onnxruntime-genai on onnxruntime-qnn's x86-64 HTP backend; with weight
sharing (the default) that backend cannot load the bundle's binaries, so the build checks the
same QDQ graphs compiled one per binary, and the shared binaries stay pending on the device."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..bundle import readme
from ..errors import ConfigError, StageError, VerificationError
from ..export import optimize
from ..export.qnn import REPORT, export_qnn
from ..families import family_of
from ..plan.config import SOCS, BuildPlan
from ..plan.doctor import Check
from ..source.checkpoint import SourceModel
from . import onnx
from .format import Format

QNN_VERSION = "2.7.0"
INSTALL = f"pip install onnxruntime-qnn=={QNN_VERSION}"
HOST = "python"
CHECK = "check"  # the build's work folder: the per-graph binaries the x86 backend loads


def toolchain() -> list[Check]:
    """onnxruntime-qnn (its x86-64 offline preparer compiles the context binaries; its HTP backend
    runs them here)."""
    if sys.version_info < (3, 11):
        return [Check("onnxruntime-qnn", False, "needs Python 3.11 or newer (the wheels on PyPI start there)")]
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        return [Check("onnxruntime-qnn", False, f"not installed (compiles and checks NPU bundles): {INSTALL}")]
    return [Check("onnxruntime-qnn", True, metadata.version("onnxruntime-qnn"))]


def refuse_source(src: SourceModel) -> None:
    family = family_of(src.config)
    if family.npu is None:
        raise ConfigError(
            f"{src.architecture} is not built for the Hexagon NPU: slmkit writes no static graphs for its "
            f"family ({family.name}). Build it with --target android or --target cpu."
        )


def check_plan(src: SourceModel, plan: BuildPlan) -> None:
    q, npu, cap = plan.quantize, plan.npu, plan.optimize.context_cap
    original = src.config.get("original_max_position_embeddings") or (src.config.get("rope_scaling") or {}).get(
        "original_max_position_embeddings"
    )
    problems = []
    if q.method != "gptq" or not q.symmetric or q.lm_head != "int8":
        problems.append(
            "w4a16 takes quantize.method gptq, symmetric true (the HTP's int4 has no zero point) and lm_head int8 "
            f"(this plan: {q.method}, symmetric {str(q.symmetric).lower()}, lm_head {q.lm_head})"
        )
    width = (src.config["hidden_size"], src.config["intermediate_size"])
    if npu.weights == "lpbq" and any(k % q.block_size for k in width):
        problems.append(f"LPBQ blocks of {q.block_size} do not divide the layers' inputs {width}")
    if npu.prompt_tokens >= cap:
        problems.append(f"npu.prompt_tokens {npu.prompt_tokens} must be below the context cap {cap}")
    if src.rope_scaling == "longrope" and original and cap > original:
        problems.append(
            f"optimize.context_cap {cap} beyond the original context {original} (longrope switches its factors "
            "there; the static graphs keep the short ones)"
        )
    if problems:
        raise ConfigError("The snapdragon target cannot build " + "; ".join(problems) + ".")
    missing = [c for c in toolchain() if not c.ok]
    if missing:
        raise ConfigError(
            f"The snapdragon target compiles and checks its bundle with onnxruntime-qnn: {missing[0].detail}."
        )


def settings(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / REPORT).read_text(encoding="utf-8"))


def setting_mismatches(model_dir: Path, plan: BuildPlan, _architecture: str = "") -> list[str]:
    """What in genai_config.json, npu.json and the EPContext models differs from the plan."""
    import onnx as onnx_lib

    config = optimize.read_genai_config(model_dir)
    decoder, cap, npu = config["model"]["decoder"], plan.optimize.context_cap, plan.npu
    found = []
    if config["search"]["max_length"] != cap or config["model"].get("context_length") != cap:
        found.append(f"the context is {config['search']['max_length']}, the plan's cap {cap}")
    if decoder["sliding_window"]["window_size"] != npu.prompt_tokens:
        found.append(f"the prompt window is {decoder['sliding_window']['window_size']}, the plan's {npu.prompt_tokens}")
    soc = decoder["session_options"]["provider_options"][0]["qnn"].get("soc_model")
    if soc != str(SOCS[npu.soc][0]):
        found.append(f"the QNN soc_model is {soc}, the plan's {npu.soc} is {SOCS[npu.soc][0]}")
    if settings(model_dir).get("weight_sharing") != npu.weight_sharing:
        found.append(f"npu.json's weight_sharing is not the plan's {npu.weight_sharing}")
    for stage in decoder["pipeline"]:
        ((name, spec),) = stage.items()
        path = model_dir / spec["filename"]
        if not path.is_file():
            found.append(f"stage {name}: {spec['filename']} is missing")
            continue
        graph = onnx_lib.load(str(path), load_external_data=False).graph
        for node in graph.node:
            binary = next((a.s.decode() for a in node.attribute if a.name == "ep_cache_context"), None)
            if node.op_type == "EPContext" and binary and not (model_dir / binary).is_file():
                found.append(f"stage {name}: its context binary {binary} is missing")
        for value in graph.input:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            if value.name.startswith("past_key_values.") and dims[2] != cap:
                found.append(f"stage {name}: {value.name} holds {dims[2]} positions, the plan's cap {cap}")
    return found


def apply_settings(model_dir: Path, plan: BuildPlan, _config: dict[str, Any], eos: list[int]) -> list[int]:
    """The checkpoint's stop ids in genai_config.json, npu.json's weight sharing; every setting read back."""
    stops = optimize.add_stop_ids(model_dir, eos)
    report = settings(model_dir) | {"weight_sharing": plan.npu.weight_sharing, "soc": plan.npu.soc}
    (model_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    problems = setting_mismatches(model_dir, plan)
    if problems:
        raise StageError(
            "optimize", "the NPU bundle does not match the plan:\n  - " + "\n  - ".join(problems), model_dir.parent
        )
    return stops


def host_model(bundle: Path, work: Path | None, plan: BuildPlan) -> Path | None:
    """The model folder this machine checks: the bundle's own, or (weight sharing) a copy of it with
    the per-graph binaries the build compiled into work/check. `slmkit verify` has no such copy."""
    if not plan.npu.weight_sharing:
        return None
    if work is None or not (work / CHECK).is_dir():
        raise VerificationError(
            f"'{bundle}' shares each part's weights between its prompt and token graphs in one context binary, "
            "which the Hexagon NPU loads and onnxruntime-qnn's x86-64 HTP backend does not ('Shared weights "
            "buffer isn't supported on this platform'). Check it on the Snapdragon device (python "
            "tests/smoke_test.py), or build with --set npu.weight_sharing=false to check it here."
        )
    check = work / "check-model"
    shutil.copytree(bundle / "model", check, ignore=shutil.ignore_patterns("part*_ctx*"))
    for path in (work / CHECK).iterdir():
        shutil.copy2(path, check / path.name)
    report = settings(check) | {"weight_sharing": False}
    (check / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return check


def pending_on_device(plan: BuildPlan) -> list[str]:
    pending = [
        f"greedy tokens and speed on the {plan.npu.soc}'s Hexagon NPU (this host ran the graphs on onnxruntime-qnn's "
        "x86-64 HTP backend)"
    ]
    if plan.npu.weight_sharing:
        pending.append(
            "the weight-shared context binaries themselves (the x86-64 backend cannot load them: the build checked "
            "the same graphs compiled one per binary)"
        )
    return pending


FORMAT = Format(
    name="npu",
    description="QNN context binaries for the Hexagon NPU, run by onnxruntime-genai with onnxruntime-qnn",
    engines=("qnn",),
    providers=("qnn",),
    runners=(HOST,),
    wrong_runner="export.engine 'qnn' with runtime.runner '{runner}': NPU bundles run with the python runner. "
    "Use --target snapdragon.",
    host_runner=HOST,
    refuse_source=refuse_source,
    check_plan=check_plan,
    toolchain=toolchain,
    export=export_qnn,
    apply_settings=apply_settings,
    setting_mismatches=setting_mismatches,
    add_to_bundle=lambda *_: None,
    readme=readme.npu_readme,
    runtime_version=onnx.genai_version,
    stop_ids=onnx.genai_stop_ids,
    host_provider=lambda _ep: "bundle",
    pending_on_device=pending_on_device,
    illegal_instruction=onnx.ILLEGAL_INSTRUCTION,
    host_model=host_model,
)
