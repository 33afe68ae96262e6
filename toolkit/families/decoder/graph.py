"""The decoder graph that onnxruntime-genai's builder writes (Phi-3, Phi-3.5, Llama), for the CPU
provider in float32 and for CUDA and DirectML in float16 (DirectML with its own attention:
toolkit/graphs/attention.py). Names, attributes and initializers follow the builder's, so that the
result equals its export byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ...graphs import hadamard
from ...graphs.attention import attention, attention_inputs
from ...graphs.ops import DYNAMIC_INT8, ELEM, INT64, MS, GraphWriter, Shape, gather_blocks, gather_int8_rows
from ...source.tensors import CheckpointTensors

# A rotated checkpoint's tied table: Q^T diag(final norm) Q, a MatMul after the final norm
# (toolkit/quantize/rotation.py).
TIED_ROTATION = "model.norm.rotation"
TIED_ROTATION_NODE = "/model/norm/rotation"  # its MatMul in the graph
# quantize.rotation "hadamard+down": the orders of the Kronecker factors of the online Hadamard on
# every down_proj input (toolkit/graphs/hadamard.py), stored in the rotated checkpoint.
DOWN_HADAMARD = "model.down_proj_online_hadamard"
TIED_EMBEDDING = "/model/embed_tokens/output_0"  # the calibrated tied table's rows (written last)


def down_hadamard_orders(weights: CheckpointTensors) -> list[int] | None:
    """The online Hadamard's factor orders that a rotated checkpoint stores, or None without one."""
    return [int(o) for o in weights.float32(DOWN_HADAMARD)] if DOWN_HADAMARD in weights else None


def _tied_embedding(g: GraphWriter, shape: Shape, weight: np.ndarray) -> tuple[str, tuple[list[str], dict[str, Any]]]:
    """Tied embeddings, as the builder shares them: the lm_head's initializers are written first and
    the embedding reads them (float32: Transpose + Gather; int4: GatherBlockQuantized on the
    lm_head's codes, sliced back to the hidden size when the blocks pad it)."""
    base = "/model/embed_tokens"
    if g.precision == DYNAMIC_INT8:  # one uint8 table: gathered, and read transposed by the lm_head
        (codes, *rest), attrs = g.int8_table("/lm_head", weight)
        transposed = g.node("Transpose", "/lm_head/Transpose", [codes], perm=[1, 0])
        return gather_int8_rows(g, base, [codes, *rest], "input_ids"), ([transposed, *rest], attrs)
    names, attrs = written = g.linear("/lm_head", weight, lm_head=True)
    if not attrs:
        table = g.node("Transpose", f"{base}/Transpose", names, perm=[1, 0])
        return g.node("Gather", f"{base}/Gather", [table, "input_ids"]), written
    return gather_blocks(g, base, names, attrs, "input_ids", shape.vocab, shape.hidden), written


def _calibrated_tied_embedding(g: GraphWriter, shape: Shape, weight: np.ndarray, at: int) -> tuple[list[str], dict]:
    """The tied table's GatherBlockQuantized once the lm_head is calibrated (its input, the last
    layer's output, is known only at the end): the lm_head's initializers are written now and the
    embedding's nodes go back to position `at`, before the first layer that reads TIED_EMBEDDING."""
    written = g.linear("/lm_head", weight, lm_head=True)
    first = len(g.nodes)
    gather_blocks(
        g,
        "/model/embed_tokens",
        *written,
        "input_ids",
        shape.vocab,
        shape.hidden,
        output=TIED_EMBEDDING,
        const=lambda values: _own_constant(g, "/model/embed_tokens", values),
    )
    nodes = g.nodes[first:]
    del g.nodes[first:]
    g.nodes[at:at] = nodes
    return written


def _own_constant(g: GraphWriter, base: str, values: list[int]) -> str:
    """An int64 Constant node of its own (not GraphWriter.constant's shared one, which a layer may
    have made after the place these nodes go to)."""
    from onnx import numpy_helper

    name = f"{base}/Constant_{'_'.join(map(str, values))}"
    return g.node("Constant", name, [], value=numpy_helper.from_array(np.array(values, dtype=np.int64), ""))


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
    return names | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", TIED_ROTATION, DOWN_HADAMARD}


def _qkv(weights: CheckpointTensors, hf: str) -> np.ndarray:
    if f"{hf}.self_attn.qkv_proj.weight" in weights:
        return weights.float32(f"{hf}.self_attn.qkv_proj.weight")
    return np.concatenate([weights.float32(f"{hf}.self_attn.{p}_proj.weight") for p in "qkv"])


LAYER_MATMUL = re.compile(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)$")
Rows = tuple[str, "int | None", "int | None"]  # a Hugging Face Linear (module name) and a span of its rows


def hf_rows(base: str, shape: Shape, has: Callable[[str], bool]) -> list[Rows]:
    """The rows of the Hugging Face Linear weights that the decoder's MatMul `base` is made of, in
    order, as _qkv and _gate_up lay them out (`has(module)`: whether the checkpoint has it)."""
    if base == "/lm_head":
        return [("lm_head", None, None)]
    layer, part, proj = LAYER_MATMUL.match(base).groups()
    hf = f"model.layers.{layer}."
    if proj in ("o_proj", "down_proj"):
        return [(f"{hf}{'self_attn' if part == 'attn' else 'mlp'}.{proj}", None, None)]
    if part == "attn":
        q, kv = shape.heads * shape.head, shape.kv_heads * shape.head
        spans = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv), "qkv_proj": (None, None)}
        if has(hf + "self_attn.qkv_proj"):
            return [(hf + "self_attn.qkv_proj", *spans[proj])]
        names = ("q_proj", "k_proj", "v_proj") if proj == "qkv_proj" else (proj,)
        return [(f"{hf}self_attn.{name}", None, None) for name in names]
    if has(hf + "mlp.gate_up_proj"):
        i = shape.intermediate
        return [(hf + "mlp.gate_up_proj", *((0, i) if proj == "gate_proj" else (i, 2 * i)))]
    return [(f"{hf}mlp.{proj}", None, None)]


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
    head, deferred = None, None
    tied = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    if embeds:
        hidden = "inputs_embeds"
    elif config.get("tie_word_embeddings") and g.quantizer is not None:
        hidden, deferred = TIED_EMBEDDING, len(g.nodes)
    elif config.get("tie_word_embeddings"):
        hidden, head = _tied_embedding(g, shape, weights.float32(tied))
    elif g.precision == DYNAMIC_INT8:
        written = g.int8_table("/model/embed_tokens", weights.float32("model.embed_tokens.weight"))
        hidden = gather_int8_rows(g, "/model/embed_tokens", written[0], "input_ids")
    elif g.quantizer is not None:  # calibrated int4: the table in int4 blocks too
        written = g.table("/model/embed_tokens", weights.float32("model.embed_tokens.weight"))
        hidden = gather_blocks(g, "/model/embed_tokens", *written, "input_ids", shape.vocab, shape.hidden)
    else:
        embed = g.weight("model.embed_tokens.weight", weights.float32("model.embed_tokens.weight"))
        hidden = g.node("Gather", "/model/embed_tokens/Gather", [embed, "input_ids"])
    skip, x = hidden, ""
    online = down_hadamard_orders(weights)
    for i in range(shape.layers):
        hf, onnx_layer = f"model.layers.{i}", f"/model/layers.{i}"
        g.layer(i)
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
        down_in = g.node("Mul", f"{onnx_layer}/mlp/Mul", [act, up])
        if online is not None:
            down_in = hadamard.online(g, f"{onnx_layer}/mlp{hadamard.ONLINE_HADAMARD}", down_in, online)
        x = g.matmul(f"{onnx_layer}/mlp/down_proj", down_in, weights.float32(f"{hf}.mlp.down_proj.weight"))
    g.layer(None)
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
    if TIED_ROTATION in weights:
        m, base = weights.float32(TIED_ROTATION), TIED_ROTATION_NODE
        if g.precision in ("fp32", "fp16") or not g.int8_blocks:
            h = g.matmul(base, h, m, float_weight=True)
        elif g.precision == DYNAMIC_INT8:
            h = g.matmul(base, h, m)
        else:
            h = g.matmul(base, h, written=g.int8_rows(base, m))
    if deferred is not None:
        head = _calibrated_tied_embedding(g, shape, weights.float32(tied), deferred)
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
