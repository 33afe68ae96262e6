"""Other ways to choose a weight's int4 codes than int4.quantize's per-block search alone: GPTQ
(error feedback through the inputs' second moments, in the same Packed layout) and AWQ-style input
scaling folded into the checkpoint before that search. benchmarks/int4_methods.py measures them
against each other (an HQQ-style weight-only fit lost to both everywhere: see the README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .int4 import Packed, _blocks, _pack_nibbles, _search_asymmetric, quantize


def _minmax(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest of blocks x [..., block] to codes 0..top: (codes, scales, zero points)."""
    lo, hi = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)
    s = np.where(hi > lo, (hi - lo) / top, 1.0)
    z = np.clip(np.round(-lo / s), 0, top)
    return np.clip(np.round(x / s[..., None]) + z[..., None], 0, top), s, z


def quantize8(w_kn: np.ndarray, block: int) -> Packed:
    """Asymmetric 8-bit blocks (min-max: at 256 levels the rounding error is already small)."""
    q, s, z = _minmax(_blocks(w_kn, block), 255)
    return Packed(q.astype(np.uint8), s.astype(np.float32), z.astype(np.uint8), w_kn.shape[0], block, bits=8)


def gptq(w_kn: np.ndarray, gram: np.ndarray | None, block: int, damp: float = 0.01) -> Packed:
    """GPTQ (Frantar et al. 2022) with static asymmetric 4-bit groups of `block` inputs: the
    columns of W^T are quantized in input order and each one's error is pushed onto the columns
    not yet quantized through the Cholesky factor of H^-1 (H = mean X^T X of the layer's input).
    Each group's scale and zero point are chosen, when the group is reached, by int4's search
    on the error-updated weights. Without `gram` (a weight calibration never reached), that
    search alone, unweighted."""
    if gram is None:
        return quantize(w_kn, block)
    k0, n = w_kn.shape
    k = -(-k0 // block) * block  # the last group padded with dead inputs
    w = np.zeros((n, k))
    w[:, :k0] = w_kn.T
    h = np.zeros((k, k))
    h[:k0, :k0] = gram
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    codes = np.empty((n, k), dtype=np.uint8)
    scales = np.empty((n, k // block), dtype=np.float32)
    zps = np.empty((n, k // block), dtype=np.uint8)
    for g, b0 in enumerate(range(0, k, block)):
        b1 = b0 + block
        wb = w[:, b0:b1]
        _, s, z = _search_asymmetric(wb[:, None, :].astype(np.float32), np.diag(h)[None, None, b0:b1])
        s, z = s[:, 0].astype(np.float64), z[:, 0].astype(np.float64)
        scales[:, g], zps[:, g] = s, z
        err = np.empty_like(wb)
        for j in range(block):
            q = np.clip(np.round(wb[:, j] / s) + z, 0, 15)
            codes[:, b0 + j] = q
            e = (wb[:, j] - s * (q - z)) / u[b0 + j, b0 + j]
            wb[:, j + 1:] -= np.outer(e, u[b0 + j, b0 + j + 1:b1])
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return Packed(_pack_nibbles(codes.reshape(n, k // block, block)), scales, _pack_nibbles(zps), k0, block)


# ---------------------------------------------------------------- AWQ-style scaling

def _rtn_error(w_kn: np.ndarray, gram: np.ndarray, block: int) -> float:
    """Output error tr(E^T H E) of asymmetric min-max 4-bit blocks (AWQ searches with plain rounding)."""
    x = _blocks(w_kn, block)
    q, s, z = _minmax(x, 15)
    e = (x - s[..., None] * (q - z[..., None])).reshape(x.shape[0], -1)[:, : w_kn.shape[0]].T  # [K, N]
    return float(np.einsum("kn,kj,jn->", e, gram, e, optimize=True))


def awq_scale(weights_kn: list[np.ndarray], gram: np.ndarray, block: int, share: np.ndarray | None = None,
              grid: np.ndarray = np.linspace(0.0, 1.0, 11)) -> tuple[np.ndarray, float]:
    """AWQ (Lin et al. 2023): per-input-feature scales s = rms(x)^alpha (normalised), alpha
    chosen on a grid to minimise the rounding error of W' = diag(s) W seen by inputs x / s.
    `share[c]` names the scale feature c must share with others (one value per index: the
    features of the heads that read one key/value head). Returns (s, alpha)."""
    rms = np.sqrt(np.maximum(np.diag(gram), 1e-12))
    best = (np.ones_like(rms), 0.0, np.inf)
    for alpha in grid:
        s = rms ** alpha
        if share is not None:
            s = np.exp(np.bincount(share, np.log(s)) / np.bincount(share))[share]
        s = s / np.sqrt(s.max() * s.min())
        g = gram / np.outer(s, s)
        err = sum(_rtn_error(w * s[:, None], g, block) for w in weights_kn)
        if err < best[2]:
            best = (s, float(alpha), err)
    return best[0], best[1]


def awq_checkpoint(source: Path, out: Path, grams: dict[str, np.ndarray], block: int) -> dict[str, float]:
    """Write a copy of the checkpoint in `source` with AWQ scales folded in, so the float model
    computes the same function: input_layernorm / post_attention_layernorm weights divided by s
    (the attention and MLP input projections' columns times s), v_proj rows divided by the
    o_proj's s (tied across the query heads of each key/value head), up_proj rows divided by the
    down_proj's s. Llama and Phi-3 layouts (fused qkv_proj / gate_up_proj). Returns alpha per group."""
    import json
    import shutil

    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    cfg = json.loads((source / "config.json").read_text(encoding="utf-8"))
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    files = sorted(source.glob("*.safetensors"))
    sd = {k: v.float().numpy() for f in files for k, v in load_file(str(f)).items()}
    share = (np.arange(heads * hd) // hd // (heads // kv)) * hd + np.arange(heads * hd) % hd
    alphas = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        fused_qkv, fused_mlp = a + "qkv_proj.weight" in sd, m + "gate_up_proj.weight" in sd
        attn_in = [a + "qkv_proj.weight"] if fused_qkv else [a + n + ".weight" for n in ("q_proj", "k_proj", "v_proj")]
        mlp_in = [m + "gate_up_proj.weight"] if fused_mlp else [m + "gate_proj.weight", m + "up_proj.weight"]
        for norm, names, stat in ((p + "input_layernorm.weight", attn_in, attn_in[0]),
                                  (p + "post_attention_layernorm.weight", mlp_in, mlp_in[0])):
            s, alphas[norm] = awq_scale([sd[n].T for n in names], grams[stat[: -len(".weight")]], block)
            sd[norm] = sd[norm] / s
            for n in names:
                sd[n] = sd[n] * s[None, :]
        # o_proj's input comes from v_proj's rows; down_proj's from up_proj's rows.
        s, alphas[a + "o_proj"] = awq_scale([sd[a + "o_proj.weight"].T], grams[a + "o_proj"], block, share)
        t = np.zeros(kv * hd)
        t[share] = s
        v_name, v_rows = (a + "qkv_proj.weight", slice((heads + kv) * hd, None)) if fused_qkv \
            else (a + "v_proj.weight", slice(None))
        sd[v_name][v_rows] /= t[:, None]
        sd[a + "o_proj.weight"] = sd[a + "o_proj.weight"] * s[None, :]
        s, alphas[m + "down_proj"] = awq_scale([sd[m + "down_proj.weight"].T], grams[m + "down_proj"], block)
        inter = sd[m + "down_proj.weight"].shape[1]
        up_name, up_rows = (m + "gate_up_proj.weight", slice(inter, None)) if fused_mlp \
            else (m + "up_proj.weight", slice(None))
        sd[up_name][up_rows] /= s[:, None]
        sd[m + "down_proj.weight"] = sd[m + "down_proj.weight"] * s[None, :]
    out.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file({k: v.astype(np.float32) for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return alphas
