"""What an output format tells the generic stages about itself: one frozen record of data and
functions per format (an onnxruntime-genai ONNX model, a GGUF file, a browser page), registered in
toolkit/formats/__init__.py. build(), verify and the bundle ask the record; none of them tests for
a format by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plan.config import BuildPlan
from ..plan.doctor import Check
from ..source.checkpoint import SourceModel

Log = Callable[[str], None]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    # -- which plans write it: export.engine and export.execution_provider values, and the
    # runtime.runner values that run it; `wrong_runner` says why another runner cannot
    engines: tuple[str, ...]
    providers: tuple[str, ...]
    runners: tuple[str, ...]
    wrong_runner: str
    # runners/<host_runner>/: the runner and smoke test this machine checks the bundle with
    host_runner: str
    # -- before anything is written (ConfigError with the reason) --------------------------------
    refuse_source: Callable[[SourceModel], None]  # a checkpoint it cannot hold, before a recipe is chosen
    check_plan: Callable[[SourceModel, BuildPlan], None]  # after the family's own check
    toolchain: Callable[[], list[Check]]  # what this machine needs to build and check it (doctor)
    # -- the stages --------------------------------------------------------------------------------
    # export(src, plan, work, log, step): the model folder
    export: Callable[[SourceModel, BuildPlan, Path, Log, str], Path]
    # apply_settings(model dir, plan, checkpoint config, stop ids): the target's settings written and
    # read back (StageError when one did not take); returns the bundle's stop ids
    apply_settings: Callable[[Path, BuildPlan, dict[str, Any], list[int]], list[int]]
    # setting_mismatches(model dir, plan, architecture): what differs from the plan (slmkit verify)
    setting_mismatches: Callable[[Path, BuildPlan, str], list[str]]
    # add_to_bundle(bundle, source, plan, stop ids): what the format adds to the common layout
    add_to_bundle: Callable[[Path, SourceModel, BuildPlan, list[int]], None]
    readme: Callable[[BuildPlan, str], list[str]]  # the bundle's README.md lines (plan, origin)
    runtime_version: Callable[[BuildPlan], str]  # of the runtime package, for the manifest
    stop_ids: Callable[[Path], list[int] | int]  # as the bundle's settings file has them
    # -- verification ------------------------------------------------------------------------------
    host_provider: Callable[[str], str]  # the --provider this machine checks a bundle with
    pending_on_device: Callable[[BuildPlan], list[str]]  # what only the device checks
    # what to do when the runtime dies of SIGILL here (an instruction the CPU does not execute)
    illegal_instruction: str
    in_browser: bool = False  # its smoke test drives a browser (--provider wasm / webgpu)
    # host_model(bundle, build work folder or None (slmkit verify), plan): the model folder this
    # machine checks instead of the bundle's own (None: the bundle's)
    host_model: Callable[[Path, Path | None, BuildPlan], Path | None] = lambda *_: None
