"""slmkit's own int4 methods (quantize.method mse, gptq, awq, mixed) on a float32 export: the
entry points the export calls, and the size limit they are built for."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError
from ..plan.config import QuantizeConfig
from .calibration import GPTQ_TOKENS, calibration_texts, python_docs_text
from .mixed import MAX_PARAMS as MIXED_MAX_PARAMS


def check_size(cfg: QuantizeConfig, num_params: int) -> None:
    """Refuse a method the model is too large for, before anything is built."""
    if cfg.method == "mixed" and num_params > MIXED_MAX_PARAMS:
        raise ConfigError(
            f"quantize.method 'mixed' measures each matrix on the whole float32 model in memory, once per "
            f"matrix: it is for models up to {MIXED_MAX_PARAMS / 1e9:.0f} B parameters, and this one has "
            f"{num_params / 1e9:.2f} B. Use --set quantize.method=gptq (or mse) instead."
        )


def apply_own_method(model_dir: Path, cfg: QuantizeConfig, source: Path, log) -> dict[str, int]:
    """Quantize the float32 export in model_dir to int4 in place, with statistics of the PyTorch
    model's inputs to each weight on the calibration text. "mse": each block's scale and zero point
    minimise the error weighted by the mean squared activations ("awq" too, on the checkpoint
    awq_source wrote). "gptq": GPTQ with those blocks, each column's error pushed onto the columns
    not yet quantized through the inputs' X^T X. "mixed": GPTQ, then the costliest matrices in
    int8 within the builder default's bytes (mixed.py)."""
    from .calibration import activation_importance, by_onnx_name, linear_input_stats
    from .gptq import gptq
    from .rewrite import quantize_model

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
            model_dir,
            block,
            cfg.accuracy_level,
            calibrate=lambda weights: by_onnx_name(linear_input_stats(source, more, GPTQ_TOKENS, gram=True), weights),
            quantizer=lambda _, w, gram: gptq(w, gram, block),
            log=log,
            finish=finish,
        )
    return quantize_model(
        model_dir,
        block,
        cfg.accuracy_level,
        cfg.symmetric,
        calibrate=lambda weights: activation_importance(source, texts, weights),
        log=log,
    )


def awq_source(source: Path, cfg: QuantizeConfig, work: Path, log) -> Path:
    """method = "awq": a copy of the checkpoint (float32) with AWQ scales folded into the layer
    norms, v_proj and up_proj rows: the same float function, with the inputs' large features
    moved into the weights so the int4 search that follows spends its levels where the
    activations are large. Returns the folder the export then reads."""
    from .awq import awq_checkpoint
    from .calibration import linear_input_stats

    out = work / "awq-checkpoint"
    if out.exists():
        shutil.rmtree(out)
    alphas = awq_checkpoint(source, out, linear_input_stats(source, calibration_texts(), gram=True), cfg.block_size)
    log(f"AWQ scales folded into {len(alphas)} groups (exponent mean {sum(alphas.values()) / len(alphas):.2f})")
    return out
