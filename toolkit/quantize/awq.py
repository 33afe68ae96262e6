"""AWQ-style input scaling: per-input-feature scales chosen on the calibration inputs' second
moments and folded into the layer (the same float function), so that the int4 search that follows
spends its levels where the activations are large.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blocks import _blocks, _minmax


def _rtn_error(w_kn: np.ndarray, gram: np.ndarray, block: int) -> float:
    """Output error tr(E^T H E) of asymmetric min-max 4-bit blocks (AWQ searches with plain rounding)."""
    x = _blocks(w_kn, block)
    q, s, z = _minmax(x, 15)
    e = (x - s[..., None] * (q - z[..., None])).reshape(x.shape[0], -1)[:, : w_kn.shape[0]].T  # [K, N]
    return float(np.einsum("kn,kj,jn->", e, gram, e, optimize=True))


ALPHAS = np.linspace(0.0, 1.0, 11)  # the exponents awq_scale tries


def awq_scale(
    weights_kn: list[np.ndarray],
    gram: np.ndarray,
    block: int,
    share: np.ndarray | None = None,
    grid: np.ndarray = ALPHAS,
) -> tuple[np.ndarray, float]:
    """AWQ (Lin et al. 2023): per-input-feature scales s = rms(x)^alpha (normalised), alpha
    chosen on a grid to minimise the rounding error of W' = diag(s) W seen by inputs x / s.
    `share[c]` names the scale feature c must share with others (one value per index: the
    features of the heads that read one key/value head). Returns (s, alpha)."""
    rms = np.sqrt(np.maximum(np.diag(gram), 1e-12))
    best = (np.ones_like(rms), 0.0, np.inf)
    for alpha in grid:
        s = rms**alpha
        if share is not None:
            s = np.exp(np.bincount(share, np.log(s)) / np.bincount(share))[share]
        s = s / np.sqrt(s.max() * s.min())
        g = gram / np.outer(s, s)
        err = sum(_rtn_error(w * s[:, None], g, block) for w in weights_kn)
        if err < best[2]:
            best = (s, float(alpha), err)
    return best[0], best[1]


def fold_layer(layer: Any, grams: dict[str, Any], shape: Any, block: int) -> dict[str, float]:
    """Fold AWQ scales into one decoder layer (a torch module, Llama or Phi-3 layout: fused qkv_proj /
    gate_up_proj or not) so that it computes the same function: input_layernorm and
    post_attention_layernorm weights divided by s and the projections reading them times s; v_proj
    rows divided by o_proj's s (tied across the query heads of each key/value head), o_proj columns
    times s; up_proj rows divided by down_proj's s, down_proj columns times s. `grams` (each
    Linear's mean X^T X, torch) become those of the scaled inputs. Returns alpha per group."""
    import torch

    params = dict(layer.named_parameters())
    heads, kv, hd = shape.heads, shape.kv_heads, shape.head
    share = (np.arange(heads * hd) // hd // (heads // kv)) * hd + np.arange(heads * hd) % hd
    attn_in = (
        ["self_attn.qkv_proj"]
        if "self_attn.qkv_proj.weight" in params
        else ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    )
    mlp_in = ["mlp.gate_up_proj"] if "mlp.gate_up_proj.weight" in params else ["mlp.gate_proj", "mlp.up_proj"]
    weight = {n: params[f"{n}.weight"] for n in (*attn_in, *mlp_in, "self_attn.o_proj", "mlp.down_proj")}
    alphas = {}

    def scaled(names: list[str], s: np.ndarray) -> None:
        """Inputs divided by s: the weights' columns times s, their X^T X divided by s s^T."""
        st = torch.from_numpy(s).to(weight[names[0]].device)
        for n in names:
            weight[n].mul_(st.float()[None, :])
            grams[n] = grams[n] / torch.outer(st, st)

    def gram(name: str) -> np.ndarray:
        return grams[name].cpu().numpy()

    with torch.no_grad():
        for norm, names in (("input_layernorm", attn_in), ("post_attention_layernorm", mlp_in)):
            s, alphas[norm] = awq_scale([weight[n].cpu().numpy().T for n in names], gram(names[0]), block)
            params[f"{norm}.weight"].div_(torch.from_numpy(s).float().to(weight[names[0]].device))
            scaled(names, s)
        # o_proj reads v_proj's rows (head by head); down_proj reads up_proj's rows.
        o, down = weight["self_attn.o_proj"], weight["mlp.down_proj"]
        s, alphas["o_proj"] = awq_scale([o.cpu().numpy().T], gram("self_attn.o_proj"), block, share)
        t = np.zeros(kv * hd)
        t[share] = s
        v, rows = (
            (weight["self_attn.qkv_proj"], slice((heads + kv) * hd, None))
            if "self_attn.qkv_proj" in weight
            else (weight["self_attn.v_proj"], slice(None))
        )
        v[rows] /= torch.from_numpy(t).float().to(v.device)[:, None]
        scaled(["self_attn.o_proj"], s)
        s, alphas["down_proj"] = awq_scale([down.cpu().numpy().T], gram("mlp.down_proj"), block)
        up, rows = (
            (weight["mlp.gate_up_proj"], slice(shape.intermediate, None))
            if "mlp.gate_up_proj" in weight
            else (weight["mlp.up_proj"], slice(None))
        )
        up[rows] /= torch.from_numpy(s).float().to(up.device)[:, None]
        scaled(["mlp.down_proj"], s)
    return alphas
