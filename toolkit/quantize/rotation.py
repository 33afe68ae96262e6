"""A rotation of the residual stream folded into the weights (QuaRot's R1, arXiv 2404.00456), before
anything is quantized: outlier features of the hidden state are spread over all channels, so the
input columns that an int4 block (or a per-channel scale) shares are alike.

With an orthogonal Q (a Hadamard matrix with random signs, / sqrt(n)) and every RMSNorm's scale
folded into the projections that read it, the model computes the same logits on the rotated
stream h Q: RMSNorm with a unit scale commutes with Q (it keeps the norm), so

    embedding      T        -> T Q
    q/k/v, gate/up W        -> W diag(norm) Q      (they read the normed stream)
    o_proj, down   W        -> Q^T W               (they write the stream; a bias b -> b Q)
    lm_head        L        -> L diag(final norm) Q
    every norm     scale    -> 1

A tied table cannot be both T Q and T diag(final norm) Q; it stays tied as T Q, and the checkpoint
gets `model.norm.rotation` = Q^T diag(final norm) Q, a hidden x hidden MatMul after the final norm
that the ONNX graph (int8 blocks in a quantized graph, counted in mixed's bytes: SmolLM2's 0.35 MB)
and the layer-by-layer model apply; untying would cost a second table. The rotated checkpoint is
written one tensor at a time (float32), so memory holds one tensor and Q."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..families import family_of
from ..families.decoder.graph import DOWN_HADAMARD, TIED_ROTATION
from ..graphs import hadamard as online
from ..graphs.hadamard import hadamard
from ..plan.config import QuantizeConfig
from ..source.checkpoint import SourceModel
from ..source.tensors import CheckpointTensors, write_derived

READS_NORMED = {
    "input_layernorm": ("self_attn.qkv_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_up_proj", "mlp.gate_proj", "mlp.up_proj"),
}
WRITES_STREAM = ("self_attn.o_proj", "mlp.down_proj")


def rotation(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(orthogonal n x n float64 Q, what it is): a Hadamard matrix with random column signs, / sqrt(n);
    a random orthogonal matrix where no Hadamard of order n is built."""
    rng = np.random.default_rng(seed)
    h = hadamard(n)
    if h is None:
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return q * np.sign(np.diag(r)), f"random orthogonal {n}x{n} (no Hadamard of order {n} is built)"
    signs = rng.choice([-1.0, 1.0], size=n)
    return h * signs / math.sqrt(n), f"Hadamard {n}x{n} with random signs"


def problems(src: SourceModel, q: QuantizeConfig, engine: str, runtime_adapters: bool) -> list[str]:
    """Why the plan's rotation cannot be built for this checkpoint (empty when it can)."""
    found = []
    if q.rotation == "hadamard+down":
        if engine != "stream":
            found.append(
                f"export.engine '{engine}' with an online Hadamard on the down_proj input (only slmkit's streamed "
                "ONNX graph has a place for it; 'hadamard' alone rotates what llama.cpp and the NPU read)"
            )
        if q.method == "awq":
            found.append("quantize.method 'awq' with an online Hadamard (awq folds down_proj's scales into up_proj)")
        n = int(src.config.get("intermediate_size", 0))
        if online.factor_orders(n) is None:
            found.append(f"an MLP width of {n} (no Hadamard of that order is built for the online product)")
        if src.config.get("mlp_bias"):
            found.append("MLP biases (the online Hadamard's signs are folded into up_proj's rows only)")
    family = family_of(src.config)
    if family.name != "decoder":
        found.append(
            f"{src.architecture} ({family.name}: a rotation is written for the Phi-3/Phi-4-mini and Llama decoders)"
        )
    if runtime_adapters:
        found.append("runtime adapters (their A and B would need the rotation too; merged adapters take it)")
    if src.config.get("tie_word_embeddings") and engine != "stream":
        found.append(
            f"a tied token table on export.engine '{engine}' (its graph has no MatMul after the final norm to keep "
            "the table tied, and untying adds a second table's bytes)"
        )
    return found


def check(src: SourceModel, q: QuantizeConfig, engine: str, runtime_adapters: bool = False) -> None:
    found = problems(src, q, engine, runtime_adapters)
    if found:
        plain = q.rotation == "hadamard+down" and not problems(
            src, dataclasses.replace(q, rotation="hadamard"), engine, runtime_adapters
        )
        raise ConfigError(
            f"quantize.rotation '{q.rotation}' cannot be built for "
            + "; ".join(found)
            + (". Use 'hadamard' (no online product) or 'none'." if plain else ". Leave it at 'none'.")
        )


def for_export(src: SourceModel, q: QuantizeConfig, work: Path, log: Callable[[str], None]) -> SourceModel:
    """The checkpoint an export reads: `src`, or its rotated copy in work/rotated."""
    if q.rotation == "none":
        return src
    return rotated(src, work / "rotated", log, down=q.rotation == "hadamard+down")


def _role(name: str) -> tuple[str, str | None]:
    """How tensor `name` turns: ("embed" | "reads" | "writes" | "head" | "norm" | "keep", the norm whose
    scale it takes)."""
    if name == "model.embed_tokens.weight":
        return "embed", None
    if name == "lm_head.weight":
        return "head", "model.norm.weight"
    if name == "model.norm.weight":
        return "norm", None
    parts = name.split(".")
    if name.startswith("model.layers.") and len(parts) > 4:
        module, leaf = ".".join(parts[3:-1]), parts[-1]
        prefix = ".".join(parts[:3])
        if module in READS_NORMED and leaf == "weight":
            return "norm", None
        for norm, readers in READS_NORMED.items():
            if module in readers and leaf == "weight":
                return "reads", f"{prefix}.{norm}.weight"
        if module in WRITES_STREAM:
            return "writes", None
    return "keep", None


def rotated(
    src: SourceModel, dest: Path, log: Callable[[str], None] = lambda _: None, seed: int = 0, down: bool = False
) -> SourceModel:
    """The checkpoint with its residual stream rotated, as a folder `dest` (model.safetensors, float32
    for what turns; links to the source's other files). With `down`, each down_proj input is also
    rotated online (QuaRot's R4): its graph multiplies the MLP's product by H = hadamard(n) / sqrt(n)
    (the factors' orders stored as DOWN_HADAMARD), so down_proj W -> W D H, with random signs D
    folded into up_proj's rows (silu(gate) * up D = (silu(gate) * up) D)."""
    weights = CheckpointTensors(src.path, src.weight_files)
    hidden, width = int(src.config["hidden_size"]), int(src.config["intermediate_size"])
    q, what = rotation(hidden, seed)
    q = q.astype(np.float32)
    tied = bool(src.config.get("tie_word_embeddings"))  # a stored lm_head.weight is then not read
    log(f"rotation: {what} folded into the weights{'; the tied table stays tied' if tied else ''}")
    orders = online.factor_orders(width) if down else None
    if orders is not None:
        mats = online.factors(orders)
        signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=width).astype(np.float32)
        log(f"rotation: online Hadamard {' x '.join(map(str, orders))} on every down_proj input")

    def value(name: str) -> np.ndarray:
        if name == TIED_ROTATION:
            return (q.T * weights.float32("model.norm.weight")) @ q
        if name == DOWN_HADAMARD:
            return np.array(orders, dtype=np.float32)
        role, norm = _role(name)
        w = weights.float32(name)
        if role == "norm":
            return np.ones_like(w)
        if role == "embed":
            return _rows_times(w, q)
        if role in ("reads", "head"):
            w = _rows_times(w * weights.float32(norm), q)
            if orders is not None and name.endswith(("mlp.up_proj.weight", "mlp.gate_up_proj.weight")):
                w[-width:] *= signs[:, None]  # up_proj's rows: the last `width` of gate_up_proj
            return w
        if w.ndim == 1:  # writes the stream: a bias ...
            return w @ q
        w = q.T @ w  # ... or the weight
        return online.apply(w * signs, mats, np) if orders is not None and name.endswith("mlp.down_proj.weight") else w

    names = sorted(n for n in weights.entries if not (tied and n == "lm_head.weight"))
    tensors = [(n, weights.entries[n].shape, _role(n)[0] != "keep") for n in names]
    if tied:
        tensors.append((TIED_ROTATION, (hidden, hidden), True))
    if orders is not None:
        tensors.append((DOWN_HADAMARD, (len(orders),), True))
    return write_derived(src, dest, tensors, value)


def _rows_times(w: np.ndarray, q: np.ndarray, rows: int = 8192) -> np.ndarray:
    """w @ q in place, `rows` rows at a time (a token table's product holds one copy of the table)."""
    for a in range(0, w.shape[0], rows):
        w[a : a + rows] = w[a : a + rows] @ q
    return w
