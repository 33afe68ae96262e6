"""Attention as the builder writes it, in its two flavours.

CPU and CUDA: one packed q/k/v MatMul into GroupQueryAttention, which applies the rotary embedding
itself (do_rotary) from cos/sin caches; for longrope an If node picks the long pair once the
sequence passes the original context.

DirectML: q, k and v as three MatMuls, RotaryEmbedding nodes on q and k fed by a `position_ids`
input, GroupQueryAttention without rotary. For longrope the short and long caches are one table
(short rows first) and the positions move into the long part once any passes the original context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .ops import ELEM, MS, GraphWriter, Shape, rope_caches


@dataclass(frozen=True)
class AttentionInputs:
    seqlens: str
    total_len: str
    cos: str
    sin: str
    positions: str | None  # DirectML: the position ids the RotaryEmbedding nodes read
    pending: tuple[np.ndarray, np.ndarray] | None = None  # DirectML: caches written at first use


def _mask_inputs(g: GraphWriter) -> tuple[str, str, str]:
    """seqlens_k and total_sequence_length from the attention mask; also the mask's width."""
    sub = "/model/attn_mask_reformat/attn_mask_subgraph"
    one = g.constant([1])
    reduced = g.node("ReduceSum", f"{sub}/ReduceSum", ["attention_mask", one], keepdims=0)
    seqlens = g.node("Cast", f"{sub}/Sub/Cast", [g.node("Sub", f"{sub}/Sub", [reduced, one])], to=6)
    total = g.node(
        "Gather", f"{sub}/Gather", [g.node("Shape", f"{sub}/Shape", ["attention_mask"]), g.constant(1)], axis=0
    )
    return seqlens, g.node("Cast", f"{sub}/Gather/Cast", [total], to=6), total


def attention_inputs(g: GraphWriter, shape: Shape, config: dict[str, Any], split: bool) -> AttentionInputs:
    """The nodes every layer's attention reads, made once before the first layer."""
    caches = rope_caches(config, shape)
    if split:
        return _split_inputs(g, shape, caches)
    seqlens, total_len, total = _mask_inputs(g)
    if "" in caches:
        cos, sin = caches[""]
        return AttentionInputs(seqlens, total_len, g.weight("cos_cache", cos), g.weight("sin_cache", sin), None)
    from onnx import helper, numpy_helper

    def branch(kind: str) -> Any:
        nodes, outputs = [], []
        for part, array in zip(("cos", "sin"), caches[kind], strict=True):
            name = f"{part}_cache_{kind}"
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=f"/{kind}/{part}_cache/Constant",
                    value=numpy_helper.from_array(array.astype(g.dtype), ""),
                )
            )
            outputs.append(helper.make_tensor_value_info(name, ELEM[g.dtype], list(array.shape)))
        return helper.make_graph(nodes, f"{kind}_rope_caches_graph", [], outputs)

    longer = g.node("Greater", "/model/rope_caches_subgraph/Greater", [total, g.constant(shape.original_context)])
    g.node(
        "If",
        "/model/rope_caches_subgraph/If",
        [longer],
        ["cos_cache", "sin_cache"],
        then_branch=branch("large"),
        else_branch=branch("small"),
    )
    return AttentionInputs(seqlens, total_len, "cos_cache", "sin_cache", None)


def _split_inputs(g: GraphWriter, shape: Shape, caches: dict) -> AttentionInputs:
    if "" in caches:  # the builder writes this table when the first RotaryEmbedding needs it
        seqlens, total_len, _ = _mask_inputs(g)
        return AttentionInputs(seqlens, total_len, "", "", "position_ids", pending=caches[""])
    # longrope: one table, short rows first; positions shift to the long rows
    sub, orig = "/model/pos_ids_reformat", shape.original_context
    cos = g.weight("cos_cache", np.concatenate([caches["small"][0], caches["large"][0]]))
    sin = g.weight("sin_cache", np.concatenate([caches["small"][1], caches["large"][1]]))
    top = g.node("ReduceMax", f"{sub}/ReduceMax", ["position_ids"], keepdims=0)
    limit = g.constant(orig)
    longer = g.node("GreaterOrEqual", f"{sub}/GreaterOrEqual", [top, limit])
    shift = g.node("Mul", f"{sub}/Mul", [g.node("Cast", f"{sub}/Cast", [longer], to=7), limit])
    positions = g.node("Add", f"{sub}/Add_1", [shift, "position_ids"])
    seqlens, total_len, _ = _mask_inputs(g)
    return AttentionInputs(seqlens, total_len, cos, sin, positions)


def attention(
    g: GraphWriter,
    a: AttentionInputs,
    shape: Shape,
    layer: int,
    h: str,
    qkv: np.ndarray,
    bias: np.ndarray | None = None,
) -> tuple[str, AttentionInputs]:
    """One layer's attention on the normalized input `h`, from the q/k/v weight rows [q; k; v] (and
    their biases: PhiMoE; packed flavour only). Returns its output (before o_proj) and the inputs
    (DirectML fills in the lazily written caches)."""
    base, i = f"/model/layers.{layer}/attn", layer
    past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    outputs = [f"{base}/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"]
    common = dict(
        num_heads=shape.heads,
        kv_num_heads=shape.kv_heads,
        scale=float(1 / np.sqrt(shape.head)),
        local_window_size=-1,
        softcap=0.0,
        rotary_interleaved=0,
    )
    if a.positions is None:
        packed = g.matmul(f"{base}/qkv_proj", h, qkv)
        if bias is not None:
            packed = g.node(
                "Add", f"{base}/qkv_proj/Add", [packed, g.weight(f"model.layers.{i}.attn.qkv_proj.bias", bias)]
            )
        g.node(
            "GroupQueryAttention",
            f"{base}/GroupQueryAttention",
            [packed, "", "", *past, a.seqlens, a.total_len, a.cos, a.sin, "", "", ""],
            outputs,
            MS,
            do_rotary=1,
            **common,
        )
        return outputs[0], a
    q_rows, kv_rows = shape.heads * shape.head, shape.kv_heads * shape.head
    parts = {"q": qkv[:q_rows], "k": qkv[q_rows : q_rows + kv_rows], "v": qkv[q_rows + kv_rows :]}
    q, k, v = (g.matmul(f"{base}/{p}_proj", h, w) for p, w in parts.items())
    partial = shape.rotary != shape.head
    if a.pending is not None:
        cos, sin = a.pending
        a = AttentionInputs(a.seqlens, a.total_len, g.weight("cos_cache", cos), g.weight("sin_cache", sin), a.positions)
    q, k = (
        g.node(
            "RotaryEmbedding",
            f"{base}/{p}_rotary/RotaryEmbedding",
            [x, a.positions, a.cos, a.sin],
            None,
            MS,
            interleaved=0,
            # the builder's: 0 and 0 when the whole head turns; else the heads and the rotated dims
            num_heads=heads if partial else 0,
            rotary_embedding_dim=shape.rotary if partial else 0,
        )
        for p, x, heads in (("q", q, shape.heads), ("k", k, shape.kv_heads))
    )
    g.node(
        "GroupQueryAttention",
        f"{base}/GroupQueryAttention",
        [q, k, v, *past, a.seqlens, a.total_len, "", "", "", "", ""],
        outputs,
        MS,
        do_rotary=0,
        **common,
    )
    return outputs[0], a
