"""Weight quantization choices, expressed as onnxruntime-genai builder options.

Only the builder's current option names are used (`block_size`, `accuracy_level`, `is_symmetric`,
`algo_config`, `matmul_mixed_precision`): the old `int4_*` names are silently ignored by builder 0.18,
and `optimize.check_settings` reads the graph back to prove each setting took.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .config import OWN_METHODS, QuantizeConfig

QUANTIZED_PRECISIONS = ("int4", "int8")


def builder_precision(cfg: QuantizeConfig, precision: str) -> str:
    """slmkit's own methods quantize a float32 export; the builder quantizes everything else."""
    return "fp32" if cfg.method in OWN_METHODS and precision == "int4" else precision


def builder_options(cfg: QuantizeConfig, precision: str) -> dict[str, Any]:
    if precision not in QUANTIZED_PRECISIONS or builder_precision(cfg, precision) != precision:
        return {}
    options: dict[str, Any] = {
        "block_size": cfg.block_size,
        "accuracy_level": cfg.accuracy_level,
        "is_symmetric": str(cfg.symmetric).lower(),
        "algo_config": cfg.method,
    }
    if precision == "int4" and cfg.lm_head == "int8":
        options["matmul_mixed_precision"] = "last_matmul:int8"
    return options


def expected_bits(cfg: QuantizeConfig, precision: str, is_lm_head: bool) -> set[int]:
    """The MatMulNBits bit widths the plan allows for a node."""
    if precision == "int8":
        return {8}
    if cfg.method in ("k_quant_mixed", "mixed"):
        return {4, 8}
    if is_lm_head and (cfg.lm_head == "int8" or cfg.method == "k_quant_last"):
        return {8}
    return {4}


def apply_own_method(model_dir: Path, cfg: QuantizeConfig, source: Path, log) -> dict[str, int]:
    """Quantize the float32 export in model_dir to int4 in place, with statistics of the PyTorch
    model's inputs to each weight on the calibration text. "mse": each block's scale and zero point
    minimise the error weighted by the mean squared activations ("awq" too, on the checkpoint
    awq_source wrote). "gptq": GPTQ with those blocks, each column's error pushed onto the columns
    not yet quantized through the inputs' X^T X. "mixed": GPTQ, then the costliest matrices in
    int8 within the builder default's bytes (toolkit/mixed.py)."""
    from .int4 import activation_importance, by_onnx_name, linear_input_stats, quantize_model
    from .int4_methods import gptq

    texts, block = calibration_texts(), cfg.block_size
    if cfg.method in ("gptq", "mixed"):
        # X^T X from the 764 shipped tokens is rank-deficient for wide inputs (SmolLM2's down_proj
        # reads 1536): GPTQ fits it and loses (+37% perplexity vs +20% for mse); 8192 tokens with
        # Python's documentation added made it the closest to float32 in KL and top-1.
        more = texts + [python_docs_text()]
        finish = None
        if cfg.method == "mixed":
            from .mixed import choose

            finish = lambda packed, weight: choose(source, packed, weight, texts, block, log)  # noqa: E731
        return quantize_model(
            model_dir, block, cfg.accuracy_level,
            calibrate=lambda weights: by_onnx_name(linear_input_stats(source, more, GPTQ_TOKENS, gram=True), weights),
            quantizer=lambda _, w, gram: gptq(w, gram, block),
            log=log, finish=finish,
        )
    return quantize_model(
        model_dir, block, cfg.accuracy_level, cfg.symmetric,
        calibrate=lambda weights: activation_importance(source, texts, weights), log=log,
    )


def awq_source(source: Path, cfg: QuantizeConfig, work: Path, log) -> Path:
    """method = "awq": a copy of the checkpoint (float32) with AWQ scales folded into the layer
    norms, v_proj and up_proj rows: the same float function, with the inputs' large features
    moved into the weights so the int4 search that follows spends its levels where the
    activations are large. Returns the folder the export then reads."""
    from .int4 import linear_input_stats
    from .int4_methods import awq_checkpoint

    out = work / "awq-checkpoint"
    if out.exists():
        shutil.rmtree(out)
    alphas = awq_checkpoint(source, out, linear_input_stats(source, calibration_texts(), gram=True), cfg.block_size)
    log(f"AWQ scales folded into {len(alphas)} groups (exponent mean {sum(alphas.values()) / len(alphas):.2f})")
    return out


GPTQ_TOKENS = 8192


def python_docs_text() -> str:
    """English prose and code from Python's own documentation (pydoc_data, in every CPython):
    more calibration text for GPTQ, and none of the texts slmkit evaluates or selects on."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def calibration_texts() -> list[str]:
    """The calibration text shipped with slmkit (English prose and chat turns written for it; not
    the evaluation text)."""
    from .tiny import chat_pairs, corpus

    return [corpus()] + [f"{q}\n{a}" for q, a in chat_pairs()]
