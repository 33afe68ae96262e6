"""build(): the whole job, top to bottom. Each stage is a plain function of its own plan section."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from . import budget, bundle, doctor, export, optimize, phi3v, quantize, source, stream, verify, vision_cases
from .catalog import choose_recipe
from .config import BuildPlan, resolve
from .errors import ConfigError, OutputError, StageError
from .source import SourceModel

Log = Callable[[str], None]
# toolkit/mixed.py holds the float32 model and runs it once per matrix (75 s for SmolLM2-135M's 151
# on 2 cores; the time grows with parameters x matrices): up to SmolLM2-1.7B.
MIXED_MAX_PARAMS = 2_000_000_000


@dataclass(frozen=True)
class Staging:
    root: Path
    work: Path
    bundle: Path


# Targets a mixture of experts is not built for, and why (the bundle size is added to the message).
MOE_REFUSED = {
    "android": "more than a phone's memory (every expert stays loaded: top-2 routing picks other experts at every token)",
    "ios": "more than an iPhone's or iPad's memory (every expert stays loaded: top-2 routing picks other experts at every token)",
    "windows-dml": "and onnxruntime has no DirectML kernel for QMoE, the mixture-of-experts operator",
}


def _refuse_moe(src: SourceModel, target: str | None) -> None:
    from .doctor import estimate_bundle_bytes

    if src.architecture not in stream.MOE or target not in MOE_REFUSED:
        return
    size = estimate_bundle_bytes(src.num_params, "int4", src.config["vocab_size"], src.config["hidden_size"])
    raise ConfigError(
        f"{src.architecture} ({src.num_params / 1e9:.3g} B parameters, a mixture of "
        f"{src.config.get('num_local_experts')} experts) is not built for {target}: its int4 bundle would be about "
        f"{size / 1e9:.3g} GB, {MOE_REFUSED[target]}. Build it with --target cpu or --target linux-cuda.")


def plan_build(src: SourceModel, recipe: str | None, target: str | None, overrides: tuple[str, ...]) -> BuildPlan:
    _refuse_moe(src, target)
    chosen, tgt = choose_recipe(recipe, target, src.architecture, src.rope_scaling)
    plan = resolve(chosen, tgt, overrides)
    limit = src.config.get("max_position_embeddings", 0)
    if plan.optimize.context_cap > limit:
        raise ConfigError(
            f"optimize.context_cap = {plan.optimize.context_cap} exceeds the model's context "
            f"({limit} tokens, max_position_embeddings). Use --set optimize.context_cap={min(limit, 4096)}."
        )
    if plan.quantize.method == "mixed" and src.num_params > MIXED_MAX_PARAMS:
        raise ConfigError(
            f"quantize.method 'mixed' measures each matrix on the whole float32 model in memory, once per "
            f"matrix: it is for models up to {MIXED_MAX_PARAMS / 1e9:.0f} B parameters, and this one has "
            f"{src.num_params / 1e9:.2f} B. Use --set quantize.method=gptq (or mse) instead.")
    if src.architecture == phi3v.ARCHITECTURE and plan.optimize.context_cap < phi3v.MIN_CONTEXT:
        raise ConfigError(
            f"optimize.context_cap = {plan.optimize.context_cap} cannot hold one image: the runtime cuts a picture "
            f"into up to 16 crops, {phi3v.MAX_IMAGE_TOKENS} tokens. Use --set optimize.context_cap={phi3v.MIN_CONTEXT} "
            "or more (each further image takes up to as many again).")
    if plan.export.engine == "stream":
        stream.check_supported(src, plan.export, plan.quantize)
    elif src.architecture == phi3v.ARCHITECTURE:
        raise ConfigError(f"export.engine 'ort-genai' cannot build {phi3v.ARCHITECTURE}: the builder writes its text "
                          "decoder only and reads its config through the checkpoint's own code. Use "
                          "--set export.engine=stream (the recipes' default), which writes all three graphs.")
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


STAGING_MARK = ".slmkit-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove staging folders of this output left by builds that were killed (SIGKILL, power
    loss): their process is gone. Folders kept after a failed stage (marked 'kept') and those of
    builds still running stay."""
    for folder in out.parent.glob(f".{out.name}{STAGING_MARK}*"):
        try:
            pid = int((folder / "pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if not (folder / "kept").exists() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Staging]:
    """Build beside the output and move it into place by one rename when everything passed.
    A StageError keeps the staging folder for inspection; any other exit (Ctrl-C included)
    removes it. The output path never holds a half-written bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    root = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_MARK}", dir=out.parent))
    (root / "pid").write_text(str(os.getpid()))
    stage = Staging(root, root / "work", root / "bundle")
    stage.work.mkdir()
    stage.bundle.mkdir()
    try:
        yield stage
    except StageError:
        (root / "kept").touch()
        raise
    except BaseException as e:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            free = shutil.disk_usage(out.parent).free / 1e9
            raise OutputError(
                f"The disk of '{out.parent}' is full ({free:.1f} GB free) and the build stopped: "
                f"nothing was written at '{out}'. Free some space or choose an -o on another disk "
                "(`slmkit doctor --model ...` estimates what a build needs)."
            ) from None
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
    if quantize.builder_precision(plan.quantize, plan.export.precision) != plan.export.precision:
        need += doctor.estimate_bundle_bytes(src.num_params, "fp32", cfg["vocab_size"], cfg["hidden_size"])
    checks = doctor.package_checks() + [doctor.disk_check(out.parent, 2 * need)]
    if not skip_memory_check:
        mem = doctor.memory_check(src.num_params, src.config, plan.export.engine, plan.quantize.method,
                                         plan.export.precision)
        if not mem.ok:
            mem = doctor.Check(mem.name, False, mem.detail + " (pass --skip-memory-check to try anyway)")
        checks.append(mem)
    doctor.require(checks)


def export_model(src: SourceModel, plan: BuildPlan, work: Path, log: Log, step: str = "[2/5] ") -> Path:
    """Export and quantize per the plan; return the folder with model.onnx and genai_config.json."""
    work.mkdir(parents=True, exist_ok=True)
    precision = quantize.builder_precision(plan.quantize, plan.export.precision)
    engine = ("slmkit's streamed writer (one tensor in memory at a time)" if plan.export.engine == "stream"
              else "the onnxruntime-genai builder")
    if precision == plan.export.precision:
        log(f"{step}export + {precision} quantization with {engine}")
    else:
        log(f"{step}{precision} export with {engine}, then slmkit's {plan.quantize.method} "
            f"{plan.export.precision} quantization")
    exported = replace(plan.export, precision=precision)
    if plan.quantize.method == "awq":
        src = source.inspect_folder(quantize.awq_source(src.path, plan.quantize, work, lambda m: log(f"      {m}")),
                                    src.origin, src.revision)
    if plan.export.engine == "stream":
        model_dir = stream.export_stream(src.path, src.weight_files, src.config, exported, plan.quantize, work)
    else:
        options = quantize.builder_options(plan.quantize, plan.export.precision)
        model_dir = export.run_builder(src.path, exported, options, work)
    if precision != plan.export.precision:
        quantize.apply_own_method(model_dir, plan.quantize, src.path, log=lambda m: log(f"      {m}"))
    return model_dir


def build(src: SourceModel, plan: BuildPlan, out: Path, *, force: bool = False,
          skip_memory_check: bool = False, quality_budget: float | None = None, log: Log = print) -> dict:
    """Build, verify and publish one bundle at `out`; return its manifest."""
    check_output(out, force)
    preflight(src, plan, out, skip_memory_check)
    eos = source.eos_ids(src.path)
    with staging(out, force) as stage:
        log(f"[1/5] hashing the source checkpoint ({len(src.weight_files)} weight files)")
        source_files = src.file_hashes()
        if not src.weight_files[0].endswith(".safetensors"):
            src = source.inspect_folder(source.convert_pickle_weights(src, stage.work / "source"), src.origin, src.revision)
        quality = None
        if quality_budget is None:
            model_dir = export_model(src, plan, stage.work, log)
        else:
            log(f"[2/5] quantization within +{quality_budget:.1%} perplexity of float32: "
                "candidates from the smallest bundle up")
            plan, model_dir, quality = budget.choose(
                src, plan, quality_budget, stage.work,
                lambda p, work: export_model(src, p, work, lambda m: log(f"      {m}"), step=""), log)
        log(f"[3/5] optimize: context cap {plan.optimize.context_cap}, reading every setting back")
        optimize.apply_context_cap(model_dir, plan.optimize)
        eos = optimize.add_stop_ids(model_dir, eos)
        optimize.check_settings(model_dir, plan, src.config, eos)
        log("[4/5] bundle: model, runner, tests, manifest")
        bundle.assemble(model_dir, stage.bundle, plan)
        bundle.write_readme(stage.bundle, plan, src.origin if src.revision else src.path.name)
        log("[5/5] verify: PyTorch reference tokens (float32, layer by layer), then the bundle's own smoke "
            "test on this machine")
        cases, prompt_format = verify.reference_cases(src.path, src.weight_files, plan.verify, eos)
        if vision_cases.is_vision_bundle(stage.bundle / "model"):
            cases += vision_cases.image_cases(stage.bundle, src.path, src.weight_files, plan.verify, eos, prompt_format)
        verify.write_prompt_format(stage.bundle, prompt_format)
        verify.write_golden(stage.bundle, cases, plan.verify)
        provider = verify.host_provider(plan.export.execution_provider)
        failure = verify.record_bundle_tokens(stage.bundle, provider)
        if failure:
            raise StageError("verify", f"the bundle does not load or run:\n{failure}", stage.root)
        bundle.write_manifest(stage.bundle, plan, src, source_files, None, quality)
        result, output = verify.run_smoke_test(stage.bundle, provider)
        summary = verify.summarize(result, provider, plan.export.execution_provider, plan.runtime.runner)
        manifest = bundle.write_manifest(stage.bundle, plan, src, source_files, summary, quality)
        if result.get("failed", 1):
            raise StageError("verify", f"the bundle's smoke test failed:\n{output.strip()}", stage.root)
    return manifest
