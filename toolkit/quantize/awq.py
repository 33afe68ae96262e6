"""AWQ-style input scaling: per-input-feature scales chosen on the calibration inputs' second
moments and folded into a float32 copy of the checkpoint (the same float function), so that the
int4 search that follows spends its levels where the activations are large.
"""

from __future__ import annotations

from pathlib import Path

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
        for norm, names, stat in (
            (p + "input_layernorm.weight", attn_in, attn_in[0]),
            (p + "post_attention_layernorm.weight", mlp_in, mlp_in[0]),
        ):
            s, alphas[norm] = awq_scale([sd[n].T for n in names], grams[stat[: -len(".weight")]], block)
            sd[norm] = sd[norm] / s
            for n in names:
                sd[n] = sd[n] * s[None, :]
        # o_proj's input comes from v_proj's rows; down_proj's from up_proj's rows.
        s, alphas[a + "o_proj"] = awq_scale([sd[a + "o_proj.weight"].T], grams[a + "o_proj"], block, share)
        t = np.zeros(kv * hd)
        t[share] = s
        v_name, v_rows = (
            (a + "qkv_proj.weight", slice((heads + kv) * hd, None)) if fused_qkv else (a + "v_proj.weight", slice(None))
        )
        sd[v_name][v_rows] /= t[:, None]
        sd[a + "o_proj.weight"] = sd[a + "o_proj.weight"] * s[None, :]
        s, alphas[m + "down_proj"] = awq_scale([sd[m + "down_proj.weight"].T], grams[m + "down_proj"], block)
        inter = sd[m + "down_proj.weight"].shape[1]
        up_name, up_rows = (
            (m + "gate_up_proj.weight", slice(inter, None)) if fused_mlp else (m + "up_proj.weight", slice(None))
        )
        sd[up_name][up_rows] /= s[:, None]
        sd[m + "down_proj.weight"] = sd[m + "down_proj.weight"] * s[None, :]
    out.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file(
        {k: v.astype(np.float32) for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    return alphas
