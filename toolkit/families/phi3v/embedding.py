"""The embedding graph of a `phi3v` bundle: input_ids [batch, sequence] (negative where the
runtime's processor put an image's tokens) and image_features [rows, hidden] in, inputs_embeds
[batch, sequence, hidden] (the decoder's float type) out.

The runtime runs it at every step; after the prompt (and for prompts without images) it passes
image_features with zero rows, so the rows are gathered from the features with one zero row
appended. The i-th negative id of a sequence takes row i: the vision graph gives the images' rows
in the order of their tags (as onnxruntime/mobius's phi3_v embedding graph and transformers'
index_put do).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...graphs.ops import FLOAT, INT64, GraphWriter, gather_blocks
from ...source.tensors import CheckpointTensors


def _token_rows(g: GraphWriter, weights: CheckpointTensors, ids: str, hidden: int) -> str:
    """The token table's rows: Gather of a float table, or, when the writer quantizes (int4 or
    int8), GatherBlockQuantized of its blocks along the hidden axis (the builder's layout for a
    tied int4 embedding, symmetric or with zero points per the plan)."""
    table = weights.float32("model.embed_tokens.weight")
    if g.precision in ("fp32", "fp16"):
        return g.node("Gather", "/embedding/Gather", [g.weight("model.embed_tokens.weight", table), ids])
    names, attrs = g.linear("/embedding/embed_tokens", table)
    return gather_blocks(g, "/embedding", names, attrs, ids, table.shape[0], hidden)


def write_embedding(g: GraphWriter, weights: CheckpointTensors, hidden: int) -> None:
    base = "/embedding"
    image = g.node("Less", f"{base}/image", ["input_ids", g.constant(0)])
    ids = g.node("Where", f"{base}/text_ids", [image, g.constant(0), "input_ids"])
    text = _token_rows(g, weights, ids, hidden)
    count = g.node("CumSum", f"{base}/CumSum", [g.node("Cast", f"{base}/Cast", [image], to=INT64), g.constant(1)])
    row = g.node("Max", f"{base}/row", [g.node("Sub", f"{base}/Sub", [count, g.constant(1)]), g.constant(0)])
    features = "image_features"
    if g.elem != FLOAT:
        features = g.node("Cast", f"{base}/features/Cast", [features], to=g.elem)
    padded = g.node(
        "Concat", f"{base}/padded", [features, g.weight(f"{base}/zero_row", np.zeros((1, hidden), np.float32))], axis=0
    )
    picked = g.node("Gather", f"{base}/picked", [padded, row], axis=0)
    g.node(
        "Where",
        f"{base}/Where",
        [g.node("Unsqueeze", f"{base}/Unsqueeze", [image, g.constant([-1])]), picked, text],
        ["inputs_embeds"],
    )


def embedding_io(elem: int, hidden: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    inputs = [
        helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("image_features", FLOAT, ["num_image_tokens", hidden]),
    ]
    return inputs, [helper.make_tensor_value_info("inputs_embeds", elem, ["batch_size", "sequence_length", hidden])]
