"""--quality-budget: try quantization settings from the smallest bundle to the largest and keep
the first whose perplexity stays within the budget of the float32 reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StageError
from ..export.stream import problems
from ..formats import format_of
from ..plan.config import OWN_METHODS, BuildPlan, _check_combination
from ..source.checkpoint import SourceModel
from .quality import Reference, evaluate, model_bytes, selection_text, table

# (label, quantize changes, precision), in order of bundle size. Measured on SmolLM2-135M
# (benchmarks/int4_methods.py, float-trained checkpoint, the evaluation text): slmkit's calibrated
# gptq block 64 at 79.2 MB +13.8% perplexity, mixed block 64 at 86.5 MB +11.7% (the builder's
# default there: +44.6%), gptq block 32 at 88.6 MB +11.2% (an earlier run); the builder's k_quant_mixed (112 MB)
# and int8 (259 MB) follow. The builder's default RTN int4 (86.5 MB) is not a candidate: mixed is
# no larger and closer to float32. quantize.lm_head stays the recipe's (Phi-4-mini's is int8).
CANDIDATES: list[tuple[str, dict[str, Any], str]] = [
    ("int4 slmkit gptq, block 64", {"method": "gptq", "symmetric": False, "block_size": 64}, "int4"),
    (
        "int4 slmkit mixed (int8 where it costs most), block 64",
        {"method": "mixed", "symmetric": False, "block_size": 64},
        "int4",
    ),
    ("int4 slmkit gptq, block 32", {"method": "gptq", "symmetric": False, "block_size": 32}, "int4"),
    (
        "int4 builder k_quant_mixed",
        {"method": "k_quant_mixed", "symmetric": True, "block_size": 32},
        "int4",
    ),
    ("int8 builder", {"method": "default", "symmetric": True, "block_size": 32}, "int8"),
]


def parse_budget(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 10:
        raise ConfigError(f"--quality-budget '{text}': expected a perplexity increase such as 5% or 0.05.")
    return value


def candidate_plans(plan: BuildPlan, src: SourceModel) -> list[tuple[str, BuildPlan]]:
    """The candidates the target's provider can run, with the plan's other settings kept. A
    candidate the streamed engine cannot write (the builder's k_quant_mixed) uses the builder."""
    out = []
    for label, changes, precision in CANDIDATES:
        candidate = replace(
            plan, export=replace(plan.export, precision=precision), quantize=replace(plan.quantize, **changes)
        )
        if candidate.export.engine == "stream" and problems(src, candidate.export, candidate.quantize):
            if changes["method"] in OWN_METHODS:  # slmkit's calibrated int4 is the streamed engine's only
                continue
            candidate = replace(candidate, export=replace(candidate.export, engine="ort-genai"))
        try:
            _check_combination(candidate)
        except ConfigError:
            continue
        out.append((label, candidate))
    return out


def choose(src: SourceModel, plan: BuildPlan, budget: float, work: Path, log: Callable[[str], None]):
    """Export each candidate (toolkit/export/) and keep the first within the budget. Returns (chosen
    plan, its exported model folder, quality section for the manifest)."""
    name, text = selection_text()
    log(f"      reference perplexity on the {name}")
    ref = Reference(src.path, text, name)
    rows: list[tuple[str, int | None, Any, str]] = []
    records = []
    for i, (label, candidate) in enumerate(candidate_plans(plan, src)):
        model_dir = format_of(candidate).export(
            src, candidate, work / f"candidate-{i}", lambda m: log(f"      {m}"), ""
        )
        quality = evaluate(model_dir, ref)
        size = model_bytes(model_dir)
        ok = quality.ppl_increase <= budget
        rows.append((label, size, quality, "chosen" if ok else "over budget"))
        records.append({"variant": label, "model_bytes": size, **quality.to_dict(), "within_budget": ok})
        log(f"      {label}: {size / 1e6:.1f} MB, perplexity {quality.ppl_increase:+.1%} vs fp32")
        if ok:
            log(table([("fp32 reference", None, None, f"perplexity {ref.ppl:.2f}"), *rows]))
            section = {"budget": budget, "text": name, "reference_ppl": ref.ppl, "chosen": label, "candidates": records}
            return candidate, model_dir, section
    raise StageError(
        "quantize",
        f"no candidate is within the quality budget of +{budget:.1%} perplexity over float32 "
        f"({ref.tokens} tokens of the {name}):\n"
        + table([("fp32 reference", None, None, f"perplexity {ref.ppl:.2f}"), *rows])
        + "\nRaise --quality-budget, or build without it to take the target's default.",
    )
