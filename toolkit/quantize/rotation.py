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

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..families import family_of
from ..families.decoder.graph import TIED_ROTATION
from ..plan.config import QuantizeConfig
from ..source.checkpoint import SourceModel
from ..source.tensors import CheckpointTensors, write_derived

READS_NORMED = {
    "input_layernorm": ("self_attn.qkv_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_up_proj", "mlp.gate_proj", "mlp.up_proj"),
}
WRITES_STREAM = ("self_attn.o_proj", "mlp.down_proj")


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = the quadratic character of (j - i) mod the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> np.ndarray | None:
    """A Hadamard matrix of order m from Paley's constructions, or None: order q + 1 for a prime
    q = 3 mod 4 (I), order 2(q + 1) for a prime q = 1 mod 4 (II)."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        s = np.zeros((m, m), dtype=np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return s + np.eye(m, dtype=np.int64)
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:
        c = np.zeros((q + 1, q + 1), dtype=np.int64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, -1], [-1, -1]])
    return None


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n (entries +-1, H H^T = n I) as Sylvester's 2^k times Paley's m,
    or None when n is not of that form."""
    power = 1
    while n % (2 * power) == 0:
        power *= 2
    for p in [power // 2**i for i in range(power.bit_length())]:
        core = np.ones((1, 1), dtype=np.int64) if n // p == 1 else _paley(n // p)
        if core is not None:
            h = core
            while h.shape[0] < n:
                h = np.block([[h, h], [h, -h]])
            return h
    return None


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


def problems(src: SourceModel, engine: str, runtime_adapters: bool) -> list[str]:
    """Why the plan's rotation cannot be built for this checkpoint (empty when it can)."""
    found = []
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


def check(src: SourceModel, engine: str, runtime_adapters: bool = False) -> None:
    found = problems(src, engine, runtime_adapters)
    if found:
        raise ConfigError(
            "quantize.rotation 'hadamard' cannot be built for " + "; ".join(found) + ". Leave it at 'none'."
        )


def for_export(src: SourceModel, q: QuantizeConfig, work: Path, log: Callable[[str], None]) -> SourceModel:
    """The checkpoint an export reads: `src`, or its rotated copy in work/rotated."""
    if q.rotation == "none":
        return src
    return rotated(src, work / "rotated", log)


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


def rotated(src: SourceModel, dest: Path, log: Callable[[str], None] = lambda _: None, seed: int = 0) -> SourceModel:
    """The checkpoint with its residual stream rotated, as a folder `dest` (model.safetensors, float32
    for what turns; links to the source's other files)."""
    weights = CheckpointTensors(src.path, src.weight_files)
    hidden = int(src.config["hidden_size"])
    q, what = rotation(hidden, seed)
    q = q.astype(np.float32)
    tied = bool(src.config.get("tie_word_embeddings"))  # a stored lm_head.weight is then not read
    log(f"rotation: {what} folded into the weights{'; the tied table stays tied' if tied else ''}")

    def value(name: str) -> np.ndarray:
        if name == TIED_ROTATION:
            return (q.T * weights.float32("model.norm.weight")) @ q
        role, norm = _role(name)
        w = weights.float32(name)
        if role == "norm":
            return np.ones_like(w)
        if role == "embed":
            return _rows_times(w, q)
        if role in ("reads", "head"):
            return _rows_times(w * weights.float32(norm), q)
        return w @ q if w.ndim == 1 else q.T @ w  # writes the stream: a bias, or the weight

    names = sorted(n for n in weights.entries if not (tied and n == "lm_head.weight"))
    tensors = [(n, weights.entries[n].shape, _role(n)[0] != "keep") for n in names]
    if tied:
        tensors.append((TIED_ROTATION, (hidden, hidden), True))
    return write_derived(src, dest, tensors, value)


def _rows_times(w: np.ndarray, q: np.ndarray, rows: int = 8192) -> np.ndarray:
    """w @ q in place, `rows` rows at a time (a token table's product holds one copy of the table)."""
    for a in range(0, w.shape[0], rows):
        w[a : a + rows] = w[a : a + rows] @ q
    return w
