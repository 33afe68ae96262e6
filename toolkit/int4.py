"""slmkit's own 4-bit weight quantizer, applied to the builder's float32 export.

Asymmetric blocks (4-bit codes with a 4-bit zero point and a float scale per block, the
MatMulNBits / GatherBlockQuantized layout), with the scale and zero point of every block chosen
to minimise the (optionally activation-weighted) squared error instead of min/max rounding.
Tied embeddings stay shared: GatherBlockQuantized reads the lm_head's quantized weight, as the
builder does, so the bundle does not carry a float32 embedding table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .progress import bar

# Candidate shrinkage of the block range [min, max]; each candidate's scale is then refined by
# weighted least squares with its codes fixed.
SHRINK = np.linspace(0.7, 1.0, 13)


@dataclass
class Packed:
    """MatMulNBits layout of a weight W[K, N]: rows are the N output features."""

    codes: np.ndarray  # uint8 [N, n_blocks, block // 2], element 2i in the low nibble
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(n_blocks / 2)], block 2j in the low nibble
    k: int
    block: int
    bits: int = 4  # 8: one code and one zero point per byte

    def dequantize(self) -> np.ndarray:
        """W[K, N] as the runtime sees it."""
        n, nb, _ = self.codes.shape
        if self.bits == 8:
            q = self.codes.astype(np.float32)
            zp = self.zero_points.astype(np.float32) if self.zero_points is not None else np.full((n, nb), 128.0)
            w = (q - zp[..., None]) * self.scales[..., None]
            return w.reshape(n, nb * self.block)[:, : self.k].T
        q = np.empty((n, nb, self.block), dtype=np.float32)
        q[..., 0::2] = self.codes & 0x0F
        q[..., 1::2] = self.codes >> 4
        if self.zero_points is None:
            zp = np.full((n, nb), 8.0, dtype=np.float32)
        else:
            zp = np.empty((n, self.zero_points.shape[1] * 2), dtype=np.float32)
            zp[:, 0::2] = self.zero_points & 0x0F
            zp[:, 1::2] = self.zero_points >> 4
            zp = zp[:, :nb]
        w = (q - zp[..., None]) * self.scales[..., None]
        return w.reshape(n, nb * self.block)[:, : self.k].T


def _blocks(w_kn: np.ndarray, block: int) -> np.ndarray:
    """[N, n_blocks, block] view of W^T, zero-padded along K."""
    k, n = w_kn.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), dtype=np.float32)
    wt[:, :k] = w_kn.T
    return wt.reshape(n, nb, block)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 codes 0..15 along the last axis (padded to even length) -> packed pairs."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), dtype=values.dtype)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def quantize(w_kn: np.ndarray, block: int, importance: np.ndarray | None = None,
             symmetric: bool = False, chunk_rows: int = 4096) -> Packed:
    """Quantize W[K, N] (MatMul weight) to 4 bits per element. `importance` [K] weights each input
    feature's error (mean squared activation from calibration); None weighs all equally."""
    k, n = w_kn.shape
    nb = -(-k // block)
    h_row = np.ones(nb * block, dtype=np.float32)
    if importance is not None:
        h_row[:k] = np.maximum(importance.astype(np.float32), 1e-8)
    h_row[k:] = 0.0  # padding never counts
    h = h_row.reshape(1, nb, block)
    codes = np.empty((n, nb, block), dtype=np.uint8)
    scales = np.empty((n, nb), dtype=np.float32)
    zps = np.empty((n, nb), dtype=np.uint8)
    search = _search_symmetric if symmetric else _search_asymmetric
    for r0 in range(0, n, chunk_rows):
        x = _blocks(w_kn[:, r0 : r0 + chunk_rows], block)
        q, s, z = search(x, h)
        codes[r0 : r0 + len(x)], scales[r0 : r0 + len(x)], zps[r0 : r0 + len(x)] = q, s, z
    return Packed(_pack_nibbles(codes), scales, None if symmetric else _pack_nibbles(zps), k, block)


def _refine(x, h, q, zp):
    """Least-squares scale for fixed codes: argmin_s sum h (x - s (q - zp))^2."""
    d = q - zp
    num = (h * x * d).sum(-1)
    den = (h * d * d).sum(-1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)


def _search(x: np.ndarray, h: np.ndarray, grid):
    """For each block, the (codes, scale, zero point) of least weighted error among the shrink
    candidates. `grid(f)` gives the starting scale and the zero point of candidate f; the scale is
    then refit by least squares with the codes fixed, and the codes recomputed."""
    best_err = np.full(x.shape[:-1], np.inf, dtype=np.float32)
    best_q = np.zeros(x.shape, dtype=np.uint8)
    best_s = np.zeros(x.shape[:-1], dtype=np.float32)
    best_z = np.zeros(x.shape[:-1], dtype=np.uint8)
    for f in SHRINK:
        s, zp = grid(f)
        q = np.clip(np.round(x / s[..., None]) + zp[..., None], 0, 15)
        s = _refine(x, h, q, zp[..., None])
        s = np.where(s > 0, s, 1.0)
        q = np.clip(np.round(x / s[..., None]) + zp[..., None], 0, 15)
        err = (h * (x - s[..., None] * (q - zp[..., None])) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[..., None], q, best_q).astype(np.uint8)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, zp, best_z).astype(np.uint8)
    return best_q, best_s.astype(np.float32), best_z


def _search_asymmetric(x: np.ndarray, h: np.ndarray):
    # The range holds 0, so the zero point fits 0..15.
    lo, hi = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)

    def grid(f):
        s = (hi - lo) * f / 15.0
        s = np.where(s > 0, s, 1.0)
        return s, np.clip(np.round(-lo * f / s), 0, 15)

    return _search(x, h, grid)


def _search_symmetric(x: np.ndarray, h: np.ndarray):
    amax = np.abs(x).max(-1)
    eight = np.full(amax.shape, 8.0)
    return _search(x, h, lambda f: (np.where(amax > 0, amax * f / 8.0, 1.0), eight))


# ---------------------------------------------------------------- graph rewrite

def _int64(name: str, values: list[int]):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def quantize_model(model_dir: Path, block: int, accuracy_level: int, symmetric: bool = False,
                   calibrate=None, log=lambda _: None, quantizer=None, finish=None) -> dict[str, int]:
    """Rewrite model_dir/model.onnx (a float32 builder export) in place: every MatMul with a
    weight initializer becomes MatMulNBits, the token embedding becomes GatherBlockQuantized
    (sharing the lm_head's codes when the embeddings are tied). `calibrate(weight names)` returns
    per-input-feature importance for the weights it knows; `quantizer(name, W, importance)`, when
    given, returns each MatMul weight's Packed (its own method, block size and bits) instead of
    `quantize`; `finish(packed, float32 weight by name)`, when given, may then replace any of them
    (mixed precision). Returns counts for the log."""
    import onnx
    from onnx import helper, numpy_helper

    path = model_dir / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2]
    matmul_weights = list(dict.fromkeys(n.input[1] for n in matmuls))  # graph order, once each
    importance = calibrate(matmul_weights) if calibrate is not None else {}
    log(f"activation statistics for {len(importance)} of {len(matmul_weights)} weights")
    packed: dict[str, Packed] = {}
    new_nodes, new_inits, dropped = [], [], set()
    counts = {"matmul": 0, "embedding": 0}

    def add_packed(weight: str, p: Packed) -> tuple[str, str, str | None]:
        names = (f"{weight}_Q4", f"{weight}_scales", f"{weight}_zp" if p.zero_points is not None else None)
        new_inits.append(numpy_helper.from_array(p.codes, names[0]))
        new_inits.append(numpy_helper.from_array(p.scales, names[1]))
        if p.zero_points is not None:
            new_inits.append(numpy_helper.from_array(p.zero_points, names[2]))
        return names

    # The lm_head / MatMul weights first, so a tied embedding can reuse them.
    with bar("int4 search", len(matmul_weights), "matrices") as progress:
        for weight in matmul_weights:
            w = numpy_helper.to_array(inits[weight]).astype(np.float32)
            packed[weight] = (quantizer(weight, w, importance.get(weight)) if quantizer
                              else quantize(w, block, importance.get(weight), symmetric))
            progress.advance()
    if finish is not None:
        packed = finish(packed, lambda weight: numpy_helper.to_array(inits[weight]).astype(np.float32))
    names = {w: add_packed(w, p) for w, p in packed.items()}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    skip: set[int] = set()
    for node in graph.node:
        if id(node) in skip:
            continue
        if node.op_type == "MatMul" and node.input[1] in packed:
            p, (q, s, z) = packed[node.input[1]], names[node.input[1]]
            inputs = [node.input[0], q, s] + ([z] if z else [])
            new_nodes.append(helper.make_node(
                "MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q4", domain="com.microsoft",
                K=p.k, N=p.scales.shape[0], bits=p.bits, block_size=p.block, accuracy_level=accuracy_level))
            dropped.add(node.input[1])
            counts["matmul"] += 1
            continue
        if node.op_type == "Transpose" and node.input[0] in packed:
            # Tied embeddings: Transpose(lm_head weight) -> Gather(ids). Read the lm_head's codes instead.
            gathers = consumers.get(node.output[0], [])
            if len(gathers) == 1 and gathers[0].op_type == "Gather":
                new_nodes += _embedding_nodes(gathers[0], packed[node.input[0]], names[node.input[0]], new_inits)
                skip.add(id(gathers[0]))
                dropped.add(node.input[0])
                counts["embedding"] += 1
                continue
        if node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2 \
                and "embed" in node.name:
            table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            p = quantize(table.T, block, None, symmetric)
            new_nodes += _embedding_nodes(node, p, add_packed(node.input[0], p), new_inits)
            dropped.add(node.input[0])
            counts["embedding"] += 1
            continue
        new_nodes.append(node)
    still_used = {i for n in new_nodes for i in n.input}
    kept = [i for i in graph.initializer if not (i.name in dropped and i.name not in still_used)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = model_dir / "model.onnx.data"
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    bits = sorted({p.bits for p in packed.values()})
    log(f"quantized {counts['matmul']} MatMul weights and {counts['embedding']} embedding table(s) to "
        f"{' and '.join(f'int{b}' for b in bits)}")
    return counts


def _embedding_nodes(gather, p: Packed, names: tuple[str, str, str | None], new_inits: list) -> list:
    """Gather(table, ids) -> Reshape(codes) + GatherBlockQuantized [+ Slice of the block padding]."""
    from onnx import helper

    n, nb, half = p.codes.shape
    base = gather.name.rsplit("/", 1)[0]
    shape_name = f"{base}/quantized_shape"
    new_inits.append(_int64(shape_name, [n, nb * half]))
    nodes = [helper.make_node("Reshape", [names[0], shape_name], [f"{base}/Reshape/output_0"], name=f"{base}/Reshape")]
    inputs = [f"{base}/Reshape/output_0", gather.input[1], names[1]] + ([names[2]] if names[2] else [])
    padded = nb * p.block != p.k
    out = f"{base}/GatherBlockQuantized/output_0" if padded else gather.output[0]
    nodes.append(helper.make_node(
        "GatherBlockQuantized", inputs, [out], name=f"{base}/GatherBlockQuantized", domain="com.microsoft",
        bits=p.bits, block_size=p.block, gather_axis=0, quantize_axis=1))
    if padded:
        for name, value in (("starts", 0), ("ends", p.k), ("axes", -1)):
            new_inits.append(_int64(f"{base}/slice_{name}", [value]))
        nodes.append(helper.make_node("Slice", [out, f"{base}/slice_starts", f"{base}/slice_ends", f"{base}/slice_axes"],
                                      [gather.output[0]], name=f"{base}/Slice"))
    return nodes


# ---------------------------------------------------------------- calibration

# A decoder layer's MatMul weight as the builder names it: (layer, "attn" or "mlp", projection).
LAYER_WEIGHT = re.compile(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.MatMul\.weight$")
# ONNX weight role (builder naming) -> the Hugging Face Linear modules that read the same input.
_ROLES = {
    "attn.qkv_proj": ("self_attn.qkv_proj", "self_attn.q_proj"),
    "attn.q_proj": ("self_attn.q_proj",), "attn.k_proj": ("self_attn.k_proj",), "attn.v_proj": ("self_attn.v_proj",),
    "attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_up_proj", "mlp.gate_proj"),
    "mlp.gate_proj": ("mlp.gate_proj", "mlp.gate_up_proj"), "mlp.up_proj": ("mlp.up_proj", "mlp.gate_up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


def linear_input_stats(source: Path, texts: list[str], max_tokens: int = 2048,
                       gram: bool = False) -> dict[str, np.ndarray]:
    """Mean squared input activation per feature of every Linear of the float32 PyTorch model
    (run one decoder layer at a time, toolkit/reference.py) on the calibration texts, keyed by the
    checkpoint's module names (model.layers.N.self_attn.q_proj, lm_head). With `gram`, the whole
    mean X^T X [K, K] (float64) instead of its diagonal."""
    import torch

    from .reference import layerwise_model, watch_linears
    from .source import open_source

    tokenizer, model = layerwise_model(source, open_source(str(source)).weight_files)
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


def activation_importance(source: Path, texts: list[str], onnx_weights: list[str],
                          max_tokens: int = 2048) -> dict[str, np.ndarray]:
    """linear_input_stats' diagonal, keyed by ONNX weight name."""
    return by_onnx_name(linear_input_stats(source, texts, max_tokens), onnx_weights)
