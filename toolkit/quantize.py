"""Weight quantization choices, expressed as onnxruntime-genai builder options.

Only the builder's current option names are used (`block_size`, `accuracy_level`, `is_symmetric`,
`algo_config`, `matmul_mixed_precision`): the old `int4_*` names are silently ignored by builder 0.18,
and `optimize.check_settings` reads the graph back to prove each setting took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import QuantizeConfig

QUANTIZED_PRECISIONS = ("int4", "int8")
OWN_METHOD = "mse"


def builder_precision(cfg: QuantizeConfig, precision: str) -> str:
    """slmkit's own method quantizes a float32 export; the builder quantizes everything else."""
    return "fp32" if cfg.method == OWN_METHOD and precision == "int4" else precision


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
    if cfg.method == "k_quant_mixed":
        return {4, 8}
    if is_lm_head and (cfg.lm_head == "int8" or cfg.method == "k_quant_last"):
        return {8}
    return {4}


def apply_own_method(model_dir: Path, cfg: QuantizeConfig, source: Path, log) -> dict[str, int]:
    """method = "mse": quantize the float32 export in model_dir to int4 in place, weighting each
    weight's error by the mean squared activations of the PyTorch model on the calibration text."""
    from .int4 import activation_importance, quantize_model

    texts = calibration_texts()
    return quantize_model(
        model_dir, cfg.block_size, cfg.accuracy_level, cfg.symmetric,
        calibrate=lambda weights: activation_importance(source, texts, weights), log=log,
    )


def calibration_texts() -> list[str]:
    """The calibration text shipped with slmkit (English prose and chat turns written for it; not
    the evaluation text)."""
    from .tiny import chat_pairs, corpus

    return [corpus()] + [f"{q}\n{a}" for q, a in chat_pairs()]
