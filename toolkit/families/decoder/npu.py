"""The decoder family as the Hexagon NPU runs it (toolkit/export/qnn/): one decoder layer of static
shape in plain ops (toolkit/graphs/static.py). Phi-3's fused qkv_proj and gate_up_proj, and Llama's
separate projections stacked into one MatMul each (their rows are independent, so the calibrated
codes of the stacked weight are the parts' codes); rotary on the first `rotary` dims of a head
(Phi-4-mini: 96 of 128), grouped key/value heads."""

from __future__ import annotations

from collections.abc import Callable

from ...graphs.ops import Shape
from ...graphs.static import QuantWeight, StaticGraph, Step, attention, heads, linear, rms_norm, rope
from ...source.tensors import CheckpointTensors

# weight(hf Linear names of one input, stacked in order) -> the calibrated weight [K, N]
Weights = Callable[[list[str]], QuantWeight]


def projections(weights: CheckpointTensors, index: int) -> dict[str, list[str]]:
    """The Hugging Face Linear modules of layer `index` that each of its four MatMuls stacks."""
    hf = f"model.layers.{index}."
    fused = f"{hf}self_attn.qkv_proj.weight" in weights
    attn = [f"{hf}self_attn.qkv_proj"] if fused else [f"{hf}self_attn.{p}_proj" for p in "qkv"]
    mlp = (
        [f"{hf}mlp.gate_up_proj"]
        if f"{hf}mlp.gate_up_proj.weight" in weights
        else [f"{hf}mlp.gate_proj", f"{hf}mlp.up_proj"]
    )
    return {"qkv": attn, "o": [f"{hf}self_attn.o_proj"], "gate_up": mlp, "down": [f"{hf}mlp.down_proj"]}


def write_layer(
    g: StaticGraph, weights: CheckpointTensors, weight: Weights, index: int, shape: Shape, step: Step, x: str
) -> str:
    """Layer `index` on hidden states x [1, S, hidden]; reads the graph inputs cos, sin, kv_index,
    attention_keep, attention_bias and the layer's past_key_values; writes its present key/values.
    Returns the layer's output [1, S, hidden]."""
    hf, name, s = f"model.layers.{index}.", f"/l{index}", step.tokens
    mats = projections(weights, index)
    h = rms_norm(g, f"{name}/input_norm", x, weights.float32(f"{hf}input_layernorm.weight"), shape.eps)
    qkv = linear(g, f"{name}/qkv", h, weight(mats["qkv"]))
    q_size, kv_size = shape.heads * shape.head, shape.kv_heads * shape.head
    parts = [f"{name}/q", f"{name}/k", f"{name}/v"]
    from onnx import helper

    g.nodes.append(
        helper.make_node(
            "Split",
            [qkv, g.const(f"split_{q_size}_{kv_size}", [q_size, kv_size, kv_size])],
            parts,
            name=f"{name}/qkv_split",
            axis=-1,
        )
    )
    q = rope(
        g,
        f"{name}/q_rope",
        heads(g, parts[0], parts[0], s, shape.heads, shape.head),
        "cos",
        "sin",
        shape.head,
        shape.rotary,
    )
    k = rope(
        g,
        f"{name}/k_rope",
        heads(g, parts[1], parts[1], s, shape.kv_heads, shape.head),
        "cos",
        "sin",
        shape.head,
        shape.rotary,
    )
    v = heads(g, parts[2], parts[2], s, shape.kv_heads, shape.head)
    past = (f"past_key_values.{index}.key", f"past_key_values.{index}.value")
    present = (f"present.{index}.key", f"present.{index}.value")
    attn = attention(g, f"{name}/attn", q, k, v, past, present, step, shape.heads, shape.kv_heads, shape.head)
    x = g.op("Add", [x, linear(g, f"{name}/o", attn, weight(mats["o"]))], f"{name}/attn_residual")
    h = rms_norm(g, f"{name}/post_norm", x, weights.float32(f"{hf}post_attention_layernorm.weight"), shape.eps)
    gate_up = linear(g, f"{name}/gate_up", h, weight(mats["gate_up"]))
    gate, up = f"{name}/gate", f"{name}/up"
    g.nodes.append(
        helper.make_node(
            "Split",
            [gate_up, g.const(f"split_{shape.intermediate}_{shape.intermediate}", [shape.intermediate] * 2)],
            [gate, up],
            name=f"{name}/gate_up_split",
            axis=-1,
        )
    )
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}/sigmoid")], f"{name}/silu")
    down = linear(g, f"{name}/down", g.op("Mul", [act, up], f"{name}/gated"), weight(mats["down"]))
    return g.op("Add", [x, down], f"{name}/out")


def write_head(
    g: StaticGraph, weights: CheckpointTensors, weight: Weights, shape: Shape, x: str, output: str = "logits"
) -> str:
    """The final norm and the lm_head (the embedding table when they are tied): `output` [1, S, rows
    of the lm_head that weight() gives]."""
    h = rms_norm(g, "/final_norm", x, weights.float32("model.norm.weight"), shape.eps)
    head = "lm_head" if "lm_head.weight" in weights else "model.embed_tokens"
    return linear(g, output, h, weight([head]))
