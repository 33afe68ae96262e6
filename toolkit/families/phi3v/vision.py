"""The Phi-3-vision image encoder as one graph, the shape onnxruntime-genai's `phi3v` model runs:
pixel_values [images, 17, 3, 336, 336] and image_sizes [images, 2] (the HD size in pixels) in,
image_features [sum of each image's tokens, hidden] out.

1. The crops each image uses (its global crop, then h x w sub-crops, h = height / 336; the
   processor zero-fills the other slots) are gathered into one batch and run through the CLIP
   ViT tower once: patch embedding, class token, positions, pre-LayerNorm and every encoder layer
   but the last (the features are the second-to-last layer's), the class token dropped.
2. A Loop over the images lays out each one's features, as the checkpoint's own "sub_glb" HD
   transform does: 2x2 patches merged into one 4C vector (24x24 -> 12x12), the sub-crops as a
   (12h) x (12w) grid with `sub_GN` after each row, then `glb_GN`, then the global crop's 12 rows
   of 12, each followed by `sub_GN`. That is (h*w + 1) * 144 + 1 + (h + 1) * 12 rows.
3. img_projection: Linear, GELU (erf), Linear.
Checked against vLLM's Phi3HDImageEmbedding (vllm/model_executor/models/phi3v.py) and, in the
tests, against reference.py (transformers' CLIPVisionModel + the same layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...graphs.ops import INT64, MS, GraphWriter, biased, layer_norm
from ...source.tensors import CheckpointTensors

PREFIX = "model.vision_embed_tokens."
TOWER = PREFIX + "img_processor.vision_model."
CROP = 336  # pixels per side of every crop the runtime's image processor cuts
HEAD = 64  # ViT-L/14's attention head size; a tower's heads = hidden / 64


@dataclass(frozen=True)
class Tower:
    hidden: int  # C
    layers: int  # encoder layers in the checkpoint (the graph runs layers - 1)
    patch: int
    side: int  # patches per side of a crop (24 for 336 / 14)
    eps: float = 1e-5

    @property
    def heads(self) -> int:
        return max(1, self.hidden // HEAD)

    @staticmethod
    def of(weights: CheckpointTensors) -> Tower:
        """The tower's sizes from its weight shapes (no config keys needed)."""
        hidden, _, patch, _ = weights.entry(TOWER + "embeddings.patch_embedding.weight", "the vision graph").shape
        layers = sum(
            1 for n in weights.entries if n.startswith(TOWER + "encoder.layers.") and n.endswith(".mlp.fc1.weight")
        )
        positions = weights.entry(TOWER + "embeddings.position_embedding.weight", "the vision graph").shape[0]
        return Tower(hidden, layers, patch, round((positions - 1) ** 0.5))


def expected_tensors(tower: Tower) -> tuple[set[str], set[str]]:
    """(tensors the vision graph reads, tensors of the checkpoint it leaves out: the last encoder
    layer and post_layernorm, which the features never pass through)."""
    layer = [
        "layer_norm1",
        "layer_norm2",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "mlp.fc1",
        "mlp.fc2",
    ]
    per = lambda i: {f"{TOWER}encoder.layers.{i}.{p}.{k}" for p in layer for k in ("weight", "bias")}  # noqa: E731
    used = {
        TOWER + n
        for n in (
            "embeddings.class_embedding",
            "embeddings.patch_embedding.weight",
            "embeddings.position_embedding.weight",
            "pre_layrnorm.weight",
            "pre_layrnorm.bias",
        )
    }
    used |= {
        PREFIX + n
        for n in (
            "glb_GN",
            "sub_GN",
            "img_projection.0.weight",
            "img_projection.0.bias",
            "img_projection.2.weight",
            "img_projection.2.bias",
        )
    }
    for i in range(tower.layers - 1):
        used |= per(i)
    return used, per(tower.layers - 1) | {TOWER + "post_layernorm.weight", TOWER + "post_layernorm.bias"}


def _linear(g: GraphWriter, base: str, x: str, weights: CheckpointTensors, key: str, output: str = "") -> str:
    return biased(g, base, g.matmul(base, x, weights.float32(f"{key}.weight")), weights, key, output)


def _encoder_layer(g: GraphWriter, weights: CheckpointTensors, tower: Tower, i: int, x: str) -> str:
    key, base = f"{TOWER}encoder.layers.{i}", f"/vision/layers.{i}"
    h = layer_norm(g, f"{base}/layer_norm1", x, weights, f"{key}.layer_norm1", tower.eps)
    q, k, v = (_linear(g, f"{base}/attn/{p}_proj", h, weights, f"{key}.self_attn.{p}_proj") for p in "qkv")
    attn = g.node("MultiHeadAttention", f"{base}/attn/MultiHeadAttention", [q, k, v], None, MS, num_heads=tower.heads)
    x = g.node(
        "Add",
        f"{base}/attn_residual",
        [x, _linear(g, f"{base}/attn/out_proj", attn, weights, f"{key}.self_attn.out_proj")],
    )
    h = layer_norm(g, f"{base}/layer_norm2", x, weights, f"{key}.layer_norm2", tower.eps)
    h = _linear(g, f"{base}/mlp/fc1", h, weights, f"{key}.mlp.fc1")
    quick = g.node(
        "Mul", f"{base}/mlp/quick_gelu/Mul_1", [h, g.weight(f"{base}/quick_gelu_alpha", np.array(1.702, np.float32))]
    )
    h = g.node("Mul", f"{base}/mlp/quick_gelu/Mul", [h, g.node("Sigmoid", f"{base}/mlp/quick_gelu/Sigmoid", [quick])])
    return g.node("Add", f"{base}/mlp_residual", [x, _linear(g, f"{base}/mlp/fc2", h, weights, f"{key}.mlp.fc2")])


def _gather_crops(g: GraphWriter) -> tuple[str, str, str]:
    """The crops the images use as one batch [crops, 3, 336, 336]; each image's (h, w) crop grid
    [images, 2]; and where each image's crops start in the batch [images]."""
    base = "/vision/crops"
    grid = g.node("Div", f"{base}/grid", ["image_sizes", g.constant(CROP)])
    used = g.node(
        "Add",
        f"{base}/used",
        [g.node("ReduceProd", f"{base}/ReduceProd", [grid, g.constant([1])], keepdims=0), g.constant(1)],
    )
    slots = g.node(
        "Gather", f"{base}/slots", [g.node("Shape", f"{base}/Shape", ["pixel_values"]), g.constant(1)], axis=0
    )
    order = g.node("Range", f"{base}/Range", [g.constant(0), slots, g.constant(1)])
    keep = g.node(
        "Less",
        f"{base}/Less",
        [
            g.node("Unsqueeze", f"{base}/order", [order, g.constant([0])]),
            g.node("Unsqueeze", f"{base}/count", [used, g.constant([1])]),
        ],
    )
    picked = g.node("NonZero", f"{base}/NonZero", [g.node("Reshape", f"{base}/keep", [keep, g.constant([-1])])])
    flat = g.node("Reshape", f"{base}/flat", ["pixel_values", g.constant([-1, 3, CROP, CROP])])
    crops = g.node(
        "Gather", f"{base}/Gather", [flat, g.node("Reshape", f"{base}/index", [picked, g.constant([-1])])], axis=0
    )
    starts = g.node("CumSum", f"{base}/starts", [used, g.constant(0)], exclusive=1)
    return crops, grid, starts


def _tower(g: GraphWriter, weights: CheckpointTensors, tower: Tower, crops: str) -> str:
    """CLIP features of the second-to-last layer, class token dropped: [crops, side*side, C]."""
    base, c = "/vision/embeddings", tower.hidden
    conv = g.node(
        "Conv",
        f"{base}/patch_embedding/Conv",
        [
            crops,
            g.weight(
                TOWER + "embeddings.patch_embedding.weight",
                weights.float32(TOWER + "embeddings.patch_embedding.weight"),
            ),
        ],
        strides=[tower.patch, tower.patch],
        kernel_shape=[tower.patch, tower.patch],
    )
    patches = g.node(
        "Transpose",
        f"{base}/Transpose",
        [g.node("Reshape", f"{base}/Reshape", [conv, g.constant([0, c, -1])])],
        perm=[0, 2, 1],
    )
    cls = g.weight(
        TOWER + "embeddings.class_embedding", weights.float32(TOWER + "embeddings.class_embedding").reshape(1, 1, c)
    )
    batch = g.node(
        "Slice", f"{base}/batch", [g.node("Shape", f"{base}/Shape", [crops]), g.constant([0]), g.constant([1])]
    )
    cls = g.node(
        "Expand",
        f"{base}/class/Expand",
        [cls, g.node("Concat", f"{base}/class/shape", [batch, g.constant([1, c])], axis=0)],
    )
    x = g.node("Concat", f"{base}/Concat", [cls, patches], axis=1)
    x = g.node(
        "Add",
        f"{base}/position/Add",
        [
            x,
            g.weight(
                TOWER + "embeddings.position_embedding.weight",
                weights.float32(TOWER + "embeddings.position_embedding.weight"),
            ),
        ],
    )
    x = layer_norm(g, "/vision/pre_layrnorm", x, weights, TOWER + "pre_layrnorm", tower.eps)
    for i in range(tower.layers - 1):
        x = _encoder_layer(g, weights, tower, i, x)
    return g.node("Slice", "/vision/features", [x, g.constant([1]), g.constant([tower.side**2 + 1]), g.constant([1])])


def _hd_layout_body(g: GraphWriter, tower: Tower, features: str, grid: str, starts: str, sub: str, glb: str) -> Any:
    """The Loop body that appends one image's laid-out features [rows, 4C] to the running result."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    half, wide = tower.side // 2, 4 * tower.hidden

    def n(op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"/vision/hd/{op}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(values: list[int]) -> str:
        return n("Constant", [], value=numpy_helper.from_array(np.array(values, dtype=np.int64), ""))

    i = n("Unsqueeze", ["i", const([0])])
    hw = n("Gather", [grid, "i"], axis=0)  # [2]
    h, w = n("Slice", [hw, const([0]), const([1])]), n("Slice", [hw, const([1]), const([2])])
    start = n("Gather", [starts, i], axis=0)  # [1]
    first = n("Add", [start, const([1])])

    def merged(x: str) -> str:  # [n, side*side, C] -> [n, 12, 12, 2, 2, C]: 2x2 patches side by side
        x = n("Reshape", [x, const([-1, half, 2, half, 2, tower.hidden])])
        return n("Transpose", [x], perm=[0, 1, 3, 2, 4, 5])

    def rows_with_separator(x: str, rows: str, cols: str) -> str:  # [rows, cols, 4C] + sub_GN after each row
        shape = n("Concat", [rows, const([1, wide])], axis=0)
        x = n("Concat", [x, n("Expand", [sub, shape])], axis=1)
        return n("Reshape", [x, const([-1, wide])])

    twelve = const([half])
    g_feat = merged(n("Slice", [features, start, first, const([0])]))
    g_rows = rows_with_separator(n("Reshape", [g_feat, const([half, half, wide])]), twelve, twelve)
    s_feat = merged(n("Slice", [features, first, n("Add", [first, n("Mul", [h, w])]), const([0])]))
    s_feat = n("Reshape", [s_feat, n("Concat", [h, w, const([half, half, wide])], axis=0)])
    s_feat = n("Transpose", [s_feat], perm=[0, 2, 1, 3, 4])  # [h, 12, w, 12, 4C]
    h12, w12 = n("Mul", [h, twelve]), n("Mul", [w, twelve])
    s_rows = rows_with_separator(n("Reshape", [s_feat, n("Concat", [h12, w12, const([wide])], axis=0)]), h12, w12)
    nodes.append(
        helper.make_node("Concat", ["acc", s_rows, glb, g_rows], ["acc_out"], name="/vision/hd/append", axis=0)
    )
    nodes.append(helper.make_node("Identity", ["cond"], ["cond_out"], name="/vision/hd/cond"))
    elem = g.elem
    return helper.make_graph(
        nodes,
        "hd_layout",
        [
            helper.make_tensor_value_info("i", INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", elem, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", elem, None),
        ],
    )


def write_vision(g: GraphWriter, weights: CheckpointTensors, tower: Tower) -> None:
    """The vision graph, weight by weight (output `image_features`)."""
    from onnx import helper, numpy_helper

    crops, grid, starts = _gather_crops(g)
    features = _tower(g, weights, tower, crops)
    wide = 4 * tower.hidden
    sub = g.weight(PREFIX + "sub_GN", weights.float32(PREFIX + "sub_GN").reshape(1, 1, wide))
    glb = g.weight(PREFIX + "glb_GN", weights.float32(PREFIX + "glb_GN").reshape(1, wide))
    empty = g.node(
        "Constant", "/vision/hd/empty", [], value=numpy_helper.from_array(np.zeros((0, wide), dtype=g.dtype), "")
    )
    images = g.node(
        "Gather", "/vision/images", [g.node("Shape", "/vision/sizes_shape", ["image_sizes"]), g.constant(0)], axis=0
    )
    cond = g.node("Constant", "/vision/true", [], value=helper.make_tensor("", 9, [], [True]))
    laid = g.node(
        "Loop",
        "/vision/hd/Loop",
        [images, cond, empty],
        ["/vision/hd/Loop/output_0"],
        body=_hd_layout_body(g, tower, features, grid, starts, sub, glb),
    )
    x = _linear(g, "/vision/img_projection.0", laid, weights, PREFIX + "img_projection.0")
    x = g.node("Gelu", "/vision/img_projection.1/Gelu", [x])
    _linear(g, "/vision/img_projection.2", x, weights, PREFIX + "img_projection.2", output="image_features")


def vision_io(dtype_elem: int, hidden: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    inputs = [
        helper.make_tensor_value_info("pixel_values", dtype_elem, ["num_images", "max_num_crops", 3, CROP, CROP]),
        helper.make_tensor_value_info("image_sizes", INT64, ["num_images", 2]),
    ]
    return inputs, [helper.make_tensor_value_info("image_features", dtype_elem, ["num_image_tokens", hidden])]


def image_tokens(height: int, width: int) -> int:
    """The rows the vision graph gives (and the ids the runtime's processor puts in the prompt) for
    an image whose HD size is height x width pixels (multiples of 336)."""
    h, w = height // CROP, width // CROP
    return (h * w + 1) * 144 + 1 + (h + 1) * 12
