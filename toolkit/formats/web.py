"""The browser's format: the ONNX model of the WebGPU provider (float32 inputs and outputs, the CPU
graph node for node) with a chat page and an ES module on onnxruntime-web (bundle/web.py). Checked
here in headless Chromium (WASM and WebGPU) after the native run of the same graph records the tokens."""

from __future__ import annotations

from pathlib import Path

from ..bundle import readme, web
from ..export import export_onnx, optimize
from ..plan import doctor
from ..plan.config import BuildPlan
from ..plan.doctor import Check
from ..source.checkpoint import SourceModel
from . import onnx
from .format import Format

NOTE = (
    "greedy tokens on a hardware GPU's WebGPU adapter (this host's WebGPU run used SwiftShader, "
    "Vulkan on the CPU), and in Safari and Firefox"
)


def toolchain() -> list[Check]:
    """Chromium for the check, and npm unless onnxruntime-web is already in slmkit's cache."""
    return doctor.web_checks(need_npm=not web.vendored())


def check_plan(src: SourceModel, plan: BuildPlan) -> None:
    onnx.check_stream(src, plan)
    doctor.require(toolchain())


def add_page(bundle: Path, _src: SourceModel, _plan: BuildPlan, _stops: list[int]) -> None:
    web.add_page(bundle)


FORMAT = Format(
    name="web",
    description="a chat page on onnxruntime-web (WebGPU, else WASM) around the ONNX model",
    engines=("stream",),
    providers=("webgpu",),
    runners=("web",),
    wrong_runner="export.execution_provider 'webgpu' with runtime.runner '{runner}': a browser page runs it "
    "(runner 'web'). Use --target web.",
    host_runner=onnx.HOST,
    refuse_source=onnx.refuse_nothing,
    check_plan=check_plan,
    toolchain=toolchain,
    export=export_onnx,
    apply_settings=onnx.apply_settings,
    setting_mismatches=optimize.setting_mismatches,
    add_to_bundle=add_page,
    readme=readme.web_readme,
    runtime_version=lambda plan: web.packages()[plan.runtime.package],
    stop_ids=onnx.genai_stop_ids,
    host_provider=lambda _ep: "bundle",
    pending_on_device=lambda _plan: [NOTE],
    illegal_instruction=onnx.ILLEGAL_INSTRUCTION,
    in_browser=True,
)
