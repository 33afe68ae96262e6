"""Calibration for slmkit's own int4 methods: the shipped calibration texts, and the inputs of
every Linear of the float32 model on them (run one decoder layer at a time by toolkit/reference/),
keyed by the ONNX weight names of the builder's graph."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..progress import bar

# A decoder layer's MatMul weight as the builder names it: (layer, "attn" or "mlp", projection).
LAYER_WEIGHT = re.compile(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.MatMul\.weight$")


# ONNX weight role (builder naming) -> the Hugging Face Linear modules that read the same input.
_ROLES = {
    "attn.qkv_proj": ("self_attn.qkv_proj", "self_attn.q_proj"),
    "attn.q_proj": ("self_attn.q_proj",),
    "attn.k_proj": ("self_attn.k_proj",),
    "attn.v_proj": ("self_attn.v_proj",),
    "attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_up_proj", "mlp.gate_proj"),
    "mlp.gate_proj": ("mlp.gate_proj", "mlp.gate_up_proj"),
    "mlp.up_proj": ("mlp.up_proj", "mlp.gate_up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


def linear_input_stats(
    source: Path, texts: list[str], max_tokens: int = 2048, gram: bool = False
) -> dict[str, np.ndarray]:
    """Mean squared input activation per feature of every Linear of the float32 PyTorch model
    (run one decoder layer at a time, toolkit/reference/) on the calibration texts, keyed by the
    checkpoint's module names (model.layers.N.self_attn.q_proj, lm_head). With `gram`, the whole
    mean X^T X [K, K] (float64) instead of its diagonal."""
    import torch

    from ..families import open_checkpoint
    from ..reference.layerwise import layerwise_model, watch_linears

    tokenizer, model = layerwise_model(source, open_checkpoint(str(source)).weight_files)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str, x: torch.Tensor) -> None:
        x = x.detach().double().reshape(-1, x.shape[-1])
        sums[name] = sums.get(name, 0) + (x.T @ x if gram else (x * x).sum(0))
        counts[name] = counts.get(name, 0) + x.shape[0]

    handles = watch_linears(model, record)
    used = 0
    with torch.no_grad(), bar("calibration", len(texts), "texts") as progress:
        for text in texts:
            ids = tokenizer(text).input_ids[: max(0, max_tokens - used)]
            for start in range(0, len(ids), 512):
                if len(ids[start : start + 512]) > 1:
                    model(torch.tensor([ids[start : start + 512]]))
            used += len(ids)
            progress.advance()
    for h in handles:
        h.remove()
    return {n: (sums[n] / counts[n]).numpy() if gram else (sums[n] / counts[n]).float().numpy() for n in sums}


def by_onnx_name(stats: dict[str, np.ndarray], onnx_weights: list[str]) -> dict[str, np.ndarray]:
    """Statistics keyed by checkpoint module -> keyed by the ONNX weight names (builder naming)
    that read the same inputs."""
    out = {}
    for weight in onnx_weights:
        if weight.startswith("lm_head"):
            if "lm_head" in stats:
                out[weight] = stats["lm_head"]
            continue
        m = LAYER_WEIGHT.match(weight)
        if not m:
            continue
        for hf in _ROLES.get(f"{m.group(2)}.{m.group(3)}", ()):
            key = f"model.layers.{m.group(1)}.{hf}"
            if key in stats:
                out[weight] = stats[key]
                break
    return out


def activation_importance(
    source: Path, texts: list[str], onnx_weights: list[str], max_tokens: int = 2048
) -> dict[str, np.ndarray]:
    """linear_input_stats' diagonal, keyed by ONNX weight name."""
    return by_onnx_name(linear_input_stats(source, texts, max_tokens), onnx_weights)


GPTQ_TOKENS = 8192


def python_docs_text() -> str:
    """English prose and code from Python's own documentation (pydoc_data, in every CPython):
    more calibration text for GPTQ, and none of the texts slmkit evaluates or selects on."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def calibration_texts() -> list[str]:
    """The calibration text shipped with slmkit (English prose and chat turns written for it; not
    the evaluation text)."""
    from ..data import chat_pairs, corpus

    return [corpus()] + [f"{q}\n{a}" for q, a in chat_pairs()]
