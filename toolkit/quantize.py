"""Weight quantization choices, expressed as onnxruntime-genai builder options.

Only the builder's current option names are used (`block_size`, `accuracy_level`, `is_symmetric`,
`algo_config`, `matmul_mixed_precision`): the old `int4_*` names are silently ignored by builder 0.18,
and `optimize.check_graph` reads the graph back to prove each setting took.
"""

from __future__ import annotations

from typing import Any

from .config import QuantizeConfig

QUANTIZED_PRECISIONS = ("int4", "int8")


def builder_options(cfg: QuantizeConfig, precision: str) -> dict[str, Any]:
    if precision not in QUANTIZED_PRECISIONS:
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


def expected_bits(cfg: QuantizeConfig, precision: str, is_lm_head: bool) -> int:
    if precision == "int8":
        return 8
    return 8 if (is_lm_head and cfg.lm_head == "int8") else 4
