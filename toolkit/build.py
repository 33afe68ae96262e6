"""build(): the whole job, top to bottom. Each stage is a plain function of its own plan section."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import bundle, doctor, export, optimize, quantize, source, verify
from .catalog import choose_recipe
from .config import BuildPlan, resolve
from .errors import ConfigError, OutputError, StageError
from .source import SourceModel

Log = Callable[[str], None]


@dataclass(frozen=True)
class Staging:
    root: Path
    work: Path
    bundle: Path


def plan_build(src: SourceModel, recipe: str | None, target: str | None, overrides: tuple[str, ...]) -> BuildPlan:
    chosen, tgt = choose_recipe(recipe, target, src.architecture, src.rope_scaling)
    plan = resolve(chosen, tgt, overrides)
    limit = src.config.get("max_position_embeddings", 0)
    if plan.optimize.context_cap > limit:
        raise ConfigError(
            f"optimize.context_cap = {plan.optimize.context_cap} exceeds the model's context "
            f"({limit} tokens, max_position_embeddings). Use --set optimize.context_cap={min(limit, 4096)}."
        )
    return plan


def check_output(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise OutputError(f"Output folder '{out}' already exists. Pass --force to replace it, or choose another -o.")
    is_bundle = out.is_dir() and (out / "manifest.json").is_file()
    if not is_bundle and not (out.is_dir() and not any(out.iterdir())):
        raise OutputError(
            f"Refusing to replace '{out}' with --force: it is not an slmkit bundle (no manifest.json). "
            "Remove it yourself or choose another -o."
        )


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Staging]:
    """Build beside the output and move it into place by one rename when everything passed.
    A StageError keeps the staging folder for inspection; any other exit (Ctrl-C included)
    removes it. The output path never holds a half-written bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{out.name}.slmkit-", dir=out.parent))
    stage = Staging(root, root / "work", root / "bundle")
    stage.work.mkdir()
    stage.bundle.mkdir()
    try:
        yield stage
    except StageError:
        raise
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        if out.exists():
            check_output(out, force)  # the folder may have appeared or changed while we built
            out.rename(root / "replaced")
        stage.bundle.rename(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def preflight(src: SourceModel, plan: BuildPlan, out: Path, skip_memory_check: bool) -> None:
    cfg = src.config
    need = doctor.estimate_bundle_bytes(src.num_params, plan.export.precision, cfg["vocab_size"], cfg["hidden_size"])
    checks = doctor.package_checks() + [doctor.disk_check(out.parent, 2 * need)]
    if not skip_memory_check:
        mem = doctor.memory_check(src.num_params)
        if not mem.ok:
            mem = doctor.Check(mem.name, False, mem.detail + " (pass --skip-memory-check to try anyway)")
        checks.append(mem)
    doctor.require(checks)


def build(src: SourceModel, plan: BuildPlan, out: Path, *, force: bool = False,
          skip_memory_check: bool = False, log: Log = print) -> dict:
    """Build, verify and publish one bundle at `out`; return its manifest."""
    check_output(out, force)
    preflight(src, plan, out, skip_memory_check)
    eos = source.eos_ids(src.path)
    with staging(out, force) as stage:
        log(f"[1/5] hashing the source checkpoint ({len(src.weight_files)} weight files)")
        source_files = src.file_hashes()
        if not src.weight_files[0].endswith(".safetensors"):
            src = source.inspect_folder(source.convert_pickle_weights(src, stage.work / "source"), src.origin, src.revision)
        log(f"[2/5] export + {plan.export.precision} quantization with the onnxruntime-genai builder")
        options = quantize.builder_options(plan.quantize, plan.export.precision)
        model_dir = export.run_builder(src.path, plan.export, options, stage.work)
        log(f"[3/5] optimize: context cap {plan.optimize.context_cap}, reading every setting back")
        optimize.apply_context_cap(model_dir, plan.optimize)
        optimize.check_settings(model_dir, plan, src.config, eos)
        log("[4/5] bundle: model, runner, tests, manifest")
        bundle.assemble(model_dir, stage.bundle, plan)
        bundle.write_readme(stage.bundle, plan, src.origin if src.revision else src.path.name)
        log(f"[5/5] verify: PyTorch reference tokens, then the bundle's own smoke test on this machine")
        cases, prompt_format = verify.reference_cases(src.path, plan.verify, eos)
        verify.write_prompt_format(stage.bundle, prompt_format)
        verify.write_golden(stage.bundle, cases, plan.verify)
        provider = verify.host_provider(plan.export.execution_provider)
        failure = verify.record_bundle_tokens(stage.bundle, provider)
        if failure:
            raise StageError("verify", f"the bundle does not load or run:\n{failure}", stage.root)
        bundle.write_manifest(stage.bundle, plan, src, source_files, None)
        result, output = verify.run_smoke_test(stage.bundle, provider)
        summary = verify.summarize(result, provider, plan.export.execution_provider, plan.runtime.runner)
        manifest = bundle.write_manifest(stage.bundle, plan, src, source_files, summary)
        if result.get("failed", 1):
            raise StageError("verify", f"the bundle's smoke test failed:\n{output.strip()}", stage.root)
    return manifest
