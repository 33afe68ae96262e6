"""build(): the whole job, top to bottom. Each stage is a plain function of its own plan section,
in the package that owns it; the model's family answers what differs between families."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .bundle import layout, readme, staging
from .errors import ConfigError, StageError
from .export import lora
from .families import family_of
from .formats import format_of, format_of_target
from .plan import doctor
from .plan.catalog import choose_recipe
from .plan.config import BuildPlan, resolve
from .quantize import rotation
from .source import checkpoint
from .source.adapter import Adapter, merged
from .source.checkpoint import SourceModel
from .verify import budget, golden, smoke

Log = Callable[[str], None]


def plan_build(src: SourceModel, recipe: str | None, target: str | None, overrides: tuple[str, ...]) -> BuildPlan:
    """The recipe for this checkpoint and target, resolved with the overrides; ConfigError when
    the family, the quantizer or the output format cannot build it so."""
    family = family_of(src.config)
    family.refuse_target(src, target)
    if target is not None:
        format_of_target(target).refuse_source(src)
    chosen, tgt = choose_recipe(recipe, target, src.architecture, src.rope_scaling, src.partial_rotary_factor)
    plan = resolve(chosen, tgt, overrides)
    fmt = format_of(plan)
    limit = src.config.get("max_position_embeddings", 0)
    if plan.optimize.context_cap > limit:
        raise ConfigError(
            f"optimize.context_cap = {plan.optimize.context_cap} exceeds the model's context "
            f"({limit} tokens, max_position_embeddings). Use --set optimize.context_cap={min(limit, 4096)}."
        )
    family.check_plan(src, plan)
    fmt.check_plan(src, plan)
    if plan.quantize.target_mb and (plan.quantize.method != "mixed" or plan.export.engine not in ("stream", "gguf")):
        raise ConfigError(
            f"quantize.target_mb = {plan.quantize.target_mb} is the byte budget of quantize.method 'mixed' on the "
            f"stream and gguf engines (this plan: method '{plan.quantize.method}', engine '{plan.export.engine}'). "
            "Add --set quantize.method=mixed, or leave quantize.target_mb at 0."
        )
    asked = any(o.split("=", 1)[0].strip() == "quantize.rotation" for o in overrides)
    if plan.adapters.mode == "runtime" and plan.quantize.rotation != "none" and not asked:
        # The recipe's rotation gives way to runtime adapters (their A and B are not rotated); the
        # manifest's plan says so.
        plan = dataclasses.replace(plan, quantize=dataclasses.replace(plan.quantize, rotation="none"))
    if plan.quantize.rotation != "none":
        rotation.check(src, plan.quantize, plan.export.engine, plan.adapters.mode == "runtime")
    return plan


def build(
    src: SourceModel,
    plan: BuildPlan,
    out: Path,
    *,
    force: bool = False,
    skip_memory_check: bool = False,
    quality_budget: float | None = None,
    adapters: tuple[Adapter, ...] = (),
    log: Log = print,
) -> dict:
    """Build, verify and publish one bundle at `out`, with the LoRA `adapters` merged into the
    weights (adapters.mode "merged": one adapter) or as files the runner switches between
    ("runtime"); return its manifest."""
    fmt = format_of(plan)
    runtime = plan.adapters.mode == "runtime"
    if runtime:
        if not adapters:
            raise ConfigError("adapters.mode=runtime needs at least one --adapter NAME=FOLDER.")
        if quality_budget is not None:
            raise ConfigError(
                "--quality-budget with runtime adapters: choose the base's quantization first, then "
                "build the adapters over it without --quality-budget."
            )
        lora.check_runtime(src, plan, list(adapters))
    elif len(adapters) > 1:
        raise ConfigError(
            f"{len(adapters)} adapters given: the merged mode folds one adapter into the weights. Keep several as "
            "switchable files with --set adapters.mode=runtime, or build one bundle per adapter."
        )
    staging.check_output(out, force)
    doctor.preflight(src.num_params, src.config, plan, out.parent, skip_memory_check)
    eos = checkpoint.eos_ids(src.path)
    with staging.staging(out, force) as stage:
        log(f"[1/5] hashing the source checkpoint ({len(src.weight_files)} weight files)")
        source_files = src.file_hashes()
        if not src.weight_files[0].endswith(".safetensors"):
            converted = checkpoint.convert_pickle_weights(src, stage.work / "source")
            src = checkpoint.inspect_folder(converted, src.origin, src.revision)
        entries = None
        base = src
        if runtime:
            modules = frozenset(m for a in adapters for m in a.scales)
            log(
                f"[1/5] {len(adapters)} runtime LoRA adapter(s) over {len(modules)} matrices: "
                "the graph takes their inputs"
            )
            src = dataclasses.replace(src, lora_modules=modules)
        elif adapters:
            (adapter,) = adapters
            log(
                f"[1/5] merging the LoRA adapter {adapter.path.name} (rank {adapter.rank}, {len(adapter.scales)} "
                "matrices) into the weights, one tensor at a time"
            )
            entries = [adapter.summary()]
            src = merged(src, adapter, stage.work / "merged")
        quality = None
        if quality_budget is None:
            model_dir = fmt.export(src, plan, stage.work, log, "[2/5] ")
        else:
            log(
                f"[2/5] quantization within +{quality_budget:.1%} perplexity of float32: "
                "candidates from the smallest bundle up"
            )
            plan, model_dir, quality = budget.choose(src, plan, quality_budget, stage.work, log)
        if runtime:
            entries = lora.write_adapters(list(adapters), src, plan, stage.work, model_dir)
        log(f"[3/5] optimize: context cap {plan.optimize.context_cap}, reading every setting back")
        eos = fmt.apply_settings(model_dir, plan, src.config, eos)
        log("[4/5] bundle: model, runner, tests, manifest")
        layout.assemble(model_dir, stage.bundle, fmt.host_runner)
        fmt.add_to_bundle(stage.bundle, src, plan, eos)
        version = fmt.runtime_version(plan)
        origin = src.origin if src.revision else src.path.name
        readme.write_readme(stage.bundle, fmt.readme(plan, origin, version))
        log(
            "[5/5] verify: PyTorch reference tokens (float32, layer by layer), then the bundle's own smoke "
            "test on this machine"
        )
        cases, prompt_format = golden.reference_cases(src.path, src.weight_files, plan.verify, eos, stage.bundle)
        golden.write_prompt_format(stage.bundle, prompt_format)
        adapted = {}
        for adapter in adapters if runtime else ():
            with_adapter = merged(base, adapter, stage.work / f"reference-{adapter.name}")
            adapted[adapter.name] = {
                "file": lora.adapter_file(plan, adapter.name),
                "cases": golden.reference_cases(with_adapter.path, with_adapter.weight_files, plan.verify, eos)[0],
            }
        golden.write_golden(stage.bundle, cases, plan.verify, adapted)
        provider = fmt.host_provider(plan.export.execution_provider)
        model_dir = fmt.host_model(stage.bundle, stage.work, plan)
        failure = smoke.record_bundle_tokens(stage.bundle, provider, fmt, model_dir)
        if failure:
            raise StageError("verify", failure, stage.root)
        stops = fmt.stop_ids(stage.bundle / "model")
        layout.write_manifest(stage.bundle, plan, src, source_files, None, quality, version, stops, entries)
        result, output = smoke.run_smoke_test(stage.bundle, provider, fmt, model_dir)
        summary = smoke.summarize(result, provider, plan, fmt)
        manifest = layout.write_manifest(
            stage.bundle, plan, src, source_files, summary, quality, version, stops, entries
        )
        if result.get("crashed"):
            raise StageError("verify", result["error"], stage.root)
        if result.get("failed", 1):
            raise StageError("verify", f"the bundle's smoke test failed:\n{output.strip()}", stage.root)
    return manifest
