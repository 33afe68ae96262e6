"""The decoder graph that onnxruntime-genai's builder writes (Phi-3, Phi-3.5, Llama), for the CPU
provider in float32 and for CUDA and DirectML in float16 (DirectML with its own attention:
toolkit/graphs/attention.py). Names, attributes and initializers follow the builder's, so that the
result equals its export byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...graphs.attention import attention, attention_inputs
from ...graphs.ops import ELEM, INT64, MS, GraphWriter, Shape
from ...source.tensors import CheckpointTensors


def _tied_embedding(g: GraphWriter, shape: Shape, weight: np.ndarray) -> tuple[str, tuple[list[str], dict[str, Any]]]:
    """Tied embeddings, as the builder shares them: the lm_head's initializers are written first and
    the embedding reads them (float32: Transpose + Gather; int4: GatherBlockQuantized on the
    lm_head's codes, sliced back to the hidden size when the blocks pad it)."""
    base = "/model/embed_tokens"
    names, attrs = written = g.linear("/lm_head", weight, lm_head=True)
    if not attrs:
        table = g.node("Transpose", f"{base}/Transpose", names, perm=[1, 0])
        return g.node("Gather", f"{base}/Gather", [table, "input_ids"]), written
    block = attrs["block_size"]
    padded = -(-shape.hidden // block) * block
    codes = g.node("Reshape", f"{base}/Reshape", [names[0], g.constant([shape.vocab, padded * attrs["bits"] // 8])])
    out = g.node(
        "GatherBlockQuantized",
        f"{base}/GatherBlockQuantized",
        [codes, "input_ids", *names[1:]],
        None,
        MS,
        bits=attrs["bits"],
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )
    if padded != shape.hidden:
        out = g.node("Slice", f"{base}/Slice", [out, g.constant([0]), g.constant([shape.hidden]), g.constant([-1])])
    return out, written


def _skip_norm(
    g: GraphWriter, layer: str, stem: str, skip: str, x: str, weight: np.ndarray, eps: float, last: bool = False
) -> tuple[str, str]:
    """SkipSimplifiedLayerNormalization(skip + x): (normalized, residual sum)."""
    w = g.weight(f"model.{layer}.{stem}.weight", weight)
    outputs = [f"/model/{layer}/{stem}/output_0"] + ([] if last else ["", "", f"/model/{layer}/{stem}/output_3"])
    g.node(
        "SkipSimplifiedLayerNormalization",
        f"/model/{layer}/{stem}/SkipLayerNorm",
        [skip, x, w],
        outputs,
        MS,
        epsilon=eps,
    )
    return outputs[0], outputs[-1]


def expected_tensors(shape: Shape, fused: bool) -> set[str]:
    per_layer = ["input_layernorm", "post_attention_layernorm", "self_attn.o_proj", "mlp.down_proj"]
    per_layer += (
        ["self_attn.qkv_proj", "mlp.gate_up_proj"]
        if fused
        else ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"]
    )
    names = {f"model.layers.{i}.{p}.weight" for i in range(shape.layers) for p in per_layer}
    return names | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


def _qkv(weights: CheckpointTensors, hf: str) -> np.ndarray:
    if f"{hf}.self_attn.qkv_proj.weight" in weights:
        return weights.float32(f"{hf}.self_attn.qkv_proj.weight")
    return np.concatenate([weights.float32(f"{hf}.self_attn.{p}_proj.weight") for p in "qkv"])


def _gate_up(weights: CheckpointTensors, hf: str, intermediate: int) -> tuple[np.ndarray, np.ndarray]:
    if f"{hf}.mlp.gate_up_proj.weight" in weights:
        gate_up = weights.float32(f"{hf}.mlp.gate_up_proj.weight")
        return gate_up[:intermediate], gate_up[intermediate:]
    return weights.float32(f"{hf}.mlp.gate_proj.weight"), weights.float32(f"{hf}.mlp.up_proj.weight")


def write_decoder(
    g: GraphWriter,
    weights: CheckpointTensors,
    shape: Shape,
    config: dict[str, Any],
    provider: str = "cpu",
    embeds: bool = False,
) -> None:
    """The decoder, layer by layer: each weight is read, converted and written, then freed. With
    `embeds` it starts from an `inputs_embeds` input (a multimodal model's embedding graph makes it)."""
    a = attention_inputs(g, shape, config, split=provider == "dml")
    head = None
    if embeds:
        hidden = "inputs_embeds"
    elif config.get("tie_word_embeddings"):
        tied = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
        hidden, head = _tied_embedding(g, shape, weights.float32(tied))
    else:
        embed = g.weight("model.embed_tokens.weight", weights.float32("model.embed_tokens.weight"))
        hidden = g.node("Gather", "/model/embed_tokens/Gather", [embed, "input_ids"])
    skip, x = hidden, ""
    for i in range(shape.layers):
        hf, onnx_layer = f"model.layers.{i}", f"/model/layers.{i}"
        norm = weights.float32(f"{hf}.input_layernorm.weight")
        if i == 0:
            w = g.weight(f"{hf}.input_layernorm.weight", norm)
            h = g.node(
                "SimplifiedLayerNormalization",
                f"{onnx_layer}/input_layernorm/LayerNorm",
                [hidden, w],
                [f"{onnx_layer}/input_layernorm/output_0"],
                epsilon=shape.eps,
                axis=-1,
                stash_type=1,
            )
        else:
            h, skip = _skip_norm(g, f"layers.{i}", "input_layernorm", skip, x, norm, shape.eps)
        attn, a = attention(g, a, shape, i, h, _qkv(weights, hf))
        o = g.matmul(f"{onnx_layer}/attn/o_proj", attn, weights.float32(f"{hf}.self_attn.o_proj.weight"))
        h, skip = _skip_norm(
            g,
            f"layers.{i}",
            "post_attention_layernorm",
            skip,
            o,
            weights.float32(f"{hf}.post_attention_layernorm.weight"),
            shape.eps,
        )
        gate_w, up_w = _gate_up(weights, hf, shape.intermediate)
        gate = g.matmul(f"{onnx_layer}/mlp/gate_proj", h, gate_w)
        up = g.matmul(f"{onnx_layer}/mlp/up_proj", h, up_w)
        del gate_w, up_w
        act = g.node(
            "Mul", f"{onnx_layer}/mlp/act_fn/Mul", [gate, g.node("Sigmoid", f"{onnx_layer}/mlp/act_fn/Sigmoid", [gate])]
        )
        x = g.matmul(
            f"{onnx_layer}/mlp/down_proj",
            g.node("Mul", f"{onnx_layer}/mlp/Mul", [act, up]),
            weights.float32(f"{hf}.mlp.down_proj.weight"),
        )
    h, _ = _skip_norm(
        g,
        f"layers.{shape.layers}",
        "final_norm_layernorm",
        skip,
        x,
        weights.float32("model.norm.weight"),
        shape.eps,
        last=True,
    )
    if head is None:
        g.matmul("/lm_head", h, weights.float32("lm_head.weight"), lm_head=True, output="logits")
    else:
        g.matmul("/lm_head", h, output="logits", written=head)


def graph_io(
    shape: Shape, dtype: type = np.float32, provider: str = "cpu", embeds: bool = False
) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    elem = ELEM[np.dtype(dtype)]
    kv = ["batch_size", shape.kv_heads]
    first = (
        helper.make_tensor_value_info("inputs_embeds", elem, ["batch_size", "sequence_length", shape.hidden])
        if embeds
        else helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"])
    )
    inputs = [first, helper.make_tensor_value_info("attention_mask", INT64, ["batch_size", "total_sequence_length"])]
    if provider == "dml":
        inputs.append(helper.make_tensor_value_info("position_ids", INT64, ["batch_size", "sequence_length"]))
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch_size", "sequence_length", shape.vocab])]
    for i in range(shape.layers):
        for part in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{part}", elem, [*kv, "past_sequence_length", "kv_cache_dim"]
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{part}", elem, [*kv, "total_sequence_length", "kv_cache_dim"]
                )
            )
    return inputs, outputs
