"""quantize.method = "mixed": GPTQ int4 blocks for every matrix, then the matrices whose int4 error
costs the most moved to int8 blocks, inside the bytes the builder's default int4 (symmetric,
block 32, float32 scales) gives the same matrices.

A matrix's cost is the KL divergence of the float32 model's next-token distributions when that
matrix alone takes its int4 values, on 256 calibration tokens (transformers' own model, whole in
memory: this is why builds refuse it above 2 B parameters). Matrices move to int8 by cost per
extra byte while the room lasts. Measured on SmolLM2-135M (benchmarks/int4_methods.py): 24 of 151
matrices moved (mostly attention qkv_proj), +13.9% perplexity on the evaluation text vs +22.2% for
GPTQ alone and +39.5% for the builder default at the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .blocks import Packed, quantize8
from .calibration import LAYER_WEIGHT

SENSITIVITY_TOKENS = 256
# It holds the float32 model and runs it once per matrix (75 s for SmolLM2-135M's 151 on 2 cores;
# the time grows with parameters x matrices): builds use it up to SmolLM2-1.7B.
MAX_PARAMS = 2_000_000_000


def packed_bytes(p: Packed) -> int:
    return p.codes.nbytes + p.scales.nbytes + (p.zero_points.nbytes if p.zero_points is not None else 0)


def builder_bytes(k: int, n: int) -> int:
    """A [K, N] matrix as the builder's default stores it: 4-bit codes and a float32 scale per block of 32."""
    blocks = -(-k // 32)
    return n * blocks * (16 + 4)


def _targets(model, params: dict, name: str) -> list:
    """The rows of the Hugging Face weights an ONNX MatMul weight stands for, as views: Llama's
    q/k/v are one MatMul in the graph; Phi-3's fused gate_up rows are two (gate, then up)."""
    m = LAYER_WEIGHT.match(name)
    if not m:
        return [model.get_output_embeddings().weight.data]
    prefix, part = f"model.layers.{m.group(1)}.{'self_attn' if m.group(2) == 'attn' else 'mlp'}.", m.group(3)
    if prefix + part + ".weight" in params:
        return [params[prefix + part + ".weight"].data]
    if part in ("gate_proj", "up_proj"):
        fused = params[prefix + "gate_up_proj.weight"].data
        half = fused.shape[0] // 2
        return [fused[:half] if part == "gate_proj" else fused[half:]]
    return [params[prefix + p + ".weight"].data for p in ("q_proj", "k_proj", "v_proj")]


def sensitivities(
    source: Path, packs: dict[str, Packed], texts: list[str], on_matrix: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """KL(float32 || the model with only that matrix at its int4 values), per ONNX weight name."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..families import family_of
    from ..source.checkpoint import read_config
    from ..source.hf import load_tokenizer, quiet

    quiet()
    tokenizer = load_tokenizer(source, family_of(read_config(source)).hf_config(source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False).eval()
    ids = torch.tensor([tokenizer("\n".join(texts)).input_ids[:SENSITIVITY_TOKENS]])
    params = dict(model.named_parameters())
    out = {}
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits[0], -1)
        for name, p in packs.items():
            w = torch.from_numpy(np.ascontiguousarray(p.dequantize().T))  # [N, K], as nn.Linear holds it
            targets = _targets(model, params, name)
            kept = [t.clone() for t in targets]
            row = 0
            for t in targets:
                t.copy_(w[row : row + t.shape[0]])
                row += t.shape[0]
            logp = torch.log_softmax(model(ids).logits[0], -1)
            out[name] = float((ref.exp() * (ref - logp)).sum(-1).mean())
            for t, k in zip(targets, kept, strict=True):
                t.copy_(k)
            on_matrix()
    return out


def promote(
    packs: dict[str, Packed], weight: Callable[[str], np.ndarray], cost: dict[str, float], block: int
) -> tuple[dict[str, Packed], list[str], int, int]:
    """int8 blocks for the matrices with the highest cost per extra byte while all of them stay
    within the builder default's bytes: (the packs, the names moved, bytes used, room)."""
    room = sum(builder_bytes(p.k, p.scales.shape[0]) - packed_bytes(p) for p in packs.values())
    chosen, moved, used = dict(packs), [], 0
    eight = {n: quantize8(weight(n), block) for n in packs}
    extra = {n: packed_bytes(eight[n]) - packed_bytes(packs[n]) for n in packs}
    for n in sorted(packs, key=lambda n: cost[n] / extra[n], reverse=True):
        if used + extra[n] <= room:
            chosen[n], used = eight[n], used + extra[n]
            moved.append(n)
    return chosen, moved, used, room


def choose(
    source: Path,
    packs: dict[str, Packed],
    weight: Callable[[str], np.ndarray],
    texts: list[str],
    block: int,
    log: Callable[[str], None],
) -> dict[str, Packed]:
    from ..progress import bar

    with bar("mixed precision: cost of each matrix", len(packs), "matrices") as progress:
        cost = sensitivities(source, packs, texts, on_matrix=progress.advance)
    chosen, moved, used, room = promote(packs, weight, cost, block)
    short = [m.replace(".MatMul.weight", "").replace("model.layers.", "") for m in moved[:4]]
    log(
        f"mixed precision: {len(moved)} of {len(packs)} matrices in int8 ({used / 1e6:.2f} of the "
        f"{room / 1e6:.2f} MB the builder default would use more), costliest first: {', '.join(short)}"
    )
    return chosen
