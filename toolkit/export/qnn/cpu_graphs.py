"""The two small graphs of an NPU bundle that run on the CPU, before the HTP's parts at every step:

- embeddings.onnx: input_ids -> hidden_0 [1, S, hidden]. A gather reads one row per token: there is
  nothing to offload, and the table (int4 blocks here, 32064 x 3072 = 55 MB for Phi-3.5-mini) stays
  out of the HTP's memory.
- positions.onnx: the step's positions from onnxruntime-genai's past_sequence_length (the position
  of the step's last token) -> the rotary tables cos/sin [1, 1, S, rotary/2], the cache slots the
  step's keys and values go to (kv_index [1, Hkv, S, 3]), and the causal mask over the cache as a
  0/1 keep [1, 1, group*S, context] and an additive bias (0 or -mask_value).

S comes from input_ids (the prompt processor's N or the token generator's 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...graphs.ops import Shape
from ...graphs.static import MS
from ...quantize.blocks import quantize

TABLE_BLOCK = 32


def _model(nodes, name, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)], producer_name="slmkit"
    )
    model.ir_version = 10
    return model


def write_embeddings(table: np.ndarray, path: Path) -> int:
    """embeddings.onnx: the token table [vocab, hidden] in int4 blocks of 32 with zero points
    (GatherBlockQuantized); returns the table's bytes."""
    vocab, hidden = table.shape
    p = quantize(table.T.astype(np.float32, copy=False), TABLE_BLOCK, None, symmetric=False)
    codes = p.codes.reshape(vocab, -1)
    inits = [
        numpy_helper.from_array(codes, "embed/codes"),
        numpy_helper.from_array(p.scales.astype(np.float32), "embed/scales"),
        numpy_helper.from_array(p.zero_points, "embed/zero_points"),
    ]
    gather = helper.make_node(
        "GatherBlockQuantized",
        ["embed/codes", "input_ids", "embed/scales", "embed/zero_points"],
        ["hidden_0"],
        name="embed",
        domain=MS,
        bits=4,
        block_size=TABLE_BLOCK,
        gather_axis=0,
        quantize_axis=1,
    )
    model = _model(
        [gather],
        "embeddings",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, "sequence_length"])],
        [helper.make_tensor_value_info("hidden_0", TensorProto.FLOAT, [1, "sequence_length", hidden])],
        inits,
    )
    onnx.save_model(model, str(path))
    return p.nbytes


def write_positions(
    shape: Shape, context: int, cos: np.ndarray, sin: np.ndarray, mask_value: float, path: Path
) -> None:
    """positions.onnx (see the module docstring); cos/sin [>= context, rotary/2] from the rope caches."""
    group, half = shape.heads // shape.kv_heads, cos.shape[1]
    c = {}

    def const(name: str, value) -> str:
        c[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    nodes: list = []
    s = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("one_i", np.array(1, np.int64))], "steps")
    last = node(
        "Cast",
        [node("Reshape", ["past_sequence_length", const("scalar", np.array([], np.int64))], "last32")],
        "last",
        to=TensorProto.INT64,
    )
    end = node("Add", [last, const("one", np.array(1, np.int64))], "end")
    first = node("Sub", [end, s], "first")
    pos = node("Range", [first, end, const("step", np.array(1, np.int64))], "pos")  # [S]
    four = const("rope_shape", np.array([1, 1, -1, half], np.int64))
    node(
        "Reshape",
        [node("Gather", [const("cos_table", cos[:context].astype(np.float32)), pos], "cos_rows", axis=0), four],
        "cos",
    )
    node(
        "Reshape",
        [node("Gather", [const("sin_table", sin[:context].astype(np.float32)), pos], "sin_rows", axis=0), four],
        "sin",
    )
    # kv_index [1, Hkv, S, 3]: (0, head, position)
    heads = const("heads", np.arange(shape.kv_heads, dtype=np.int64).reshape(1, shape.kv_heads, 1, 1))
    size = node(
        "Concat",
        [
            const("dims_front", np.array([1, shape.kv_heads], np.int64)),
            node("Unsqueeze", [s, const("axis0", np.array([0], np.int64))], "s1"),
            const("dims_one", np.array([1], np.int64)),
        ],
        "index_dims",
        axis=0,
    )
    zeros = node("Expand", [const("zero", np.zeros((1, 1, 1, 1), np.int64)), size], "index_batch")
    head_col = node("Expand", [heads, size], "index_head")
    pos_col = node(
        "Expand",
        [node("Reshape", [pos, const("pos_shape", np.array([1, 1, -1, 1], np.int64))], "pos4"), size],
        "index_pos",
    )
    node("Concat", [zeros, head_col, pos_col], "kv_index", axis=-1)
    # keep [1, 1, group*S, context]: slot <= position, repeated for each query head of a group
    slots = const("slots", np.arange(context, dtype=np.int64).reshape(1, context))
    allowed = node(
        "LessOrEqual", [slots, node("Unsqueeze", [pos, const("axis1", np.array([1], np.int64))], "pos_col")], "allowed"
    )
    keep = node("Cast", [allowed], "keep2d", to=TensorProto.FLOAT)
    tiled = node("Tile", [keep, const("tile", np.array([group, 1], np.int64))], "keep_rows")
    node("Unsqueeze", [tiled, const("axes01", np.array([0, 1], np.int64))], "attention_keep")
    node(
        "Mul",
        [
            node("Sub", ["attention_keep", const("onef", np.float32(1.0))], "keep_minus_one"),
            const("mask_value", np.float32(mask_value)),
        ],
        "attention_bias",
    )
    f = TensorProto.FLOAT
    model = _model(
        nodes,
        "positions",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, "sequence_length"]),
            helper.make_tensor_value_info("past_sequence_length", TensorProto.INT32, [1, 1]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [1]),
        ],
        [
            helper.make_tensor_value_info("cos", f, [1, 1, "sequence_length", half]),
            helper.make_tensor_value_info("sin", f, [1, 1, "sequence_length", half]),
            helper.make_tensor_value_info("kv_index", TensorProto.INT64, [1, shape.kv_heads, "sequence_length", 3]),
            helper.make_tensor_value_info("attention_keep", f, [1, 1, "rows", context]),
            helper.make_tensor_value_info("attention_bias", f, [1, 1, "rows", context]),
        ],
        list(c.values()),
    )
    onnx.save_model(model, str(path))


def write_logits(names: list[str], vocab: int, path: Path) -> None:
    """logits.onnx: the lm_head parts' logits_j [1, S, rows_j] side by side, [1, S, vocab]."""
    f = TensorProto.FLOAT
    model = _model(
        [helper.make_node("Concat", names, ["logits"], name="logits", axis=-1)],
        "logits",
        [helper.make_tensor_value_info(n, f, [1, "sequence_length", None]) for n in names],
        [helper.make_tensor_value_info("logits", f, [1, "sequence_length", vocab])],
        [],
    )
    onnx.save_model(model, str(path))


def positions_feed(
    shape: Shape, context: int, cos: np.ndarray, sin: np.ndarray, first: int, tokens: int, mask_value: float
) -> dict[str, np.ndarray]:
    """What positions.onnx gives for `tokens` positions from `first`, computed here (the
    calibration runs the layers' graphs on these)."""
    group = shape.heads // shape.kv_heads
    pos = np.arange(first, first + tokens)
    keep = (np.arange(context)[None, :] <= pos[:, None]).astype(np.float32)
    keep = np.tile(keep, (group, 1))[None, None]
    index = np.zeros((1, shape.kv_heads, tokens, 3), np.int64)
    index[..., 1] = np.arange(shape.kv_heads)[None, :, None]
    index[..., 2] = pos[None, None, :]
    half = cos.shape[1]
    return {
        "cos": cos[pos].reshape(1, 1, tokens, half).astype(np.float32),
        "sin": sin[pos].reshape(1, 1, tokens, half).astype(np.float32),
        "kv_index": index,
        "attention_keep": keep,
        "attention_bias": ((keep - 1.0) * mask_value).astype(np.float32),
    }
