"""Weight quantization choices, expressed as onnxruntime-genai builder options.

Only the builder's current option names are used (`block_size`, `accuracy_level`, `is_symmetric`,
`algo_config`, `matmul_mixed_precision`): the old `int4_*` names are silently ignored by builder 0.18,
and `export.optimize.check_settings` reads the graph back to prove each setting took.
"""

from __future__ import annotations

from typing import Any

from ..plan.config import OWN_METHODS, QuantizeConfig

QUANTIZED_PRECISIONS = ("int4", "int8")


def builder_options(cfg: QuantizeConfig, precision: str) -> dict[str, Any]:
    if precision not in QUANTIZED_PRECISIONS or cfg.method in OWN_METHODS:
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
