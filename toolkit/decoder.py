"""The decoder graph that onnxruntime-genai's builder writes for the CPU provider (Phi-3, Phi-3.5,
Llama), written node by node: each weight is read, quantized and appended to the external data
file when its node is made, so nothing of the model stays in memory. Names, attributes and
initializers follow the builder's, so that the result equals its export byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import QuantizeConfig
from .tensors import CheckpointTensors, ExternalData

MS = "com.microsoft"
FLOAT, INT64 = 1, 7


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    head: int
    intermediate: int
    vocab: int
    layers: int
    eps: float
    context: int
    original_context: int

    @staticmethod
    def of(config: dict[str, Any]) -> "Shape":
        heads = config["num_attention_heads"]
        return Shape(
            hidden=config["hidden_size"], heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
            head=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"], vocab=config["vocab_size"],
            layers=config["num_hidden_layers"], eps=config.get("rms_norm_eps", 1e-5),
            context=config["max_position_embeddings"],
            original_context=config.get("original_max_position_embeddings") or config["max_position_embeddings"],
        )


def rope_caches(config: dict[str, Any], shape: Shape) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cos/sin caches [positions, head/2], computed as the builder computes them (torch, float32):
    one pair, or for longrope a short pair (up to the original context) and a long pair, each
    scaled by sqrt(1 + ln(context / original) / ln(original))."""
    import torch

    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or scaling.get("rope_theta") or 10000.0

    def caches(factors: Any, length: int, mscale: Any) -> tuple[np.ndarray, np.ndarray]:
        dim = shape.head
        inv_freq = 1.0 / (factors * (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)))
        t = torch.arange(length, dtype=torch.int64).type_as(inv_freq)
        emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)
        cos, sin = emb.cos() * mscale, emb.sin() * mscale
        return cos[:, : dim // 2].to(torch.float32).numpy(), sin[:, : dim // 2].to(torch.float32).numpy()

    if (scaling.get("type") or scaling.get("rope_type")) not in ("longrope", "su"):
        return {"": caches(1, shape.context, 1)}
    ratio = shape.context / shape.original_context
    default = np.sqrt(1 + np.log(ratio) / np.log(shape.original_context)) if ratio > 1.0 else 1.0
    mscale = {k: scaling.get(f"{k}_mscale") or default for k in ("short", "long")}
    return {
        "large": caches(torch.tensor(scaling["long_factor"], dtype=torch.float32), shape.context, mscale["long"]),
        "small": caches(torch.tensor(scaling["short_factor"], dtype=torch.float32), shape.original_context, mscale["short"]),
    }


def blockwise(w_kn: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits blobs of a [K, N] float32 weight, from onnxruntime's own kernel (the one its
    default MatMulNBits quantizer calls, so the codes equal the builder's bit for bit)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, cols = w_kn.shape
    k_blocks = -(-rows // block)
    per_byte = 8 // bits
    if k_blocks * block != rows:
        w_kn = np.pad(w_kn, ((0, k_blocks * block - rows), (0, 0)))
    packed = np.zeros((cols, k_blocks, block // per_byte), dtype=np.uint8)
    zero_points = np.zeros((cols, -(-k_blocks // per_byte)), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=np.float32)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, w_kn, scales, zero_points, block, cols, rows, symmetric)
    return packed, scales, zero_points


class GraphWriter:
    """Nodes in order, with initializers appended to the external data file as they are made."""

    def __init__(self, data: ExternalData, precision: str, q: QuantizeConfig):
        self.data, self.precision, self.q = data, precision, q
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def node(self, op: str, name: str, inputs: list[str], outputs: list[str] | None = None,
             domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        outputs = outputs or [f"{name}/output_0"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs[0]

    def constant(self, value: int | list[int]) -> str:
        """An INT64 Constant named as the builder names it: "1" for a scalar, "[1]" for a list."""
        from onnx import numpy_helper

        label = str(value)
        tensor = numpy_helper.from_array(np.array(value, dtype=np.int64), "")
        return self.node("Constant", f"/model/constant_nodes/INT64/{label}", [],
                         [f"/model/constants/INT64/{label}"], value=tensor)

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.data.tensor(name, array))
        return name

    def linear(self, base: str, w_out_in: np.ndarray, lm_head: bool = False) -> tuple[list[str], dict[str, Any]]:
        """Write the initializers of an HF Linear weight [out, in]: (their names, MatMulNBits
        attributes; empty for a float32 MatMul)."""
        import torch

        stem = base.lstrip("/").replace("/", ".") + ".MatMul.weight"
        w_kn = torch.from_numpy(w_out_in).T.contiguous().numpy()  # 3x numpy's transpose copy, 2 cores
        if self.precision == "fp32":
            return [self.weight(stem, w_kn)], {}
        bits = 8 if self.precision == "int8" or (lm_head and self.q.lm_head == "int8") else 4
        packed, scales, zero_points = blockwise(w_kn, bits, self.q.block_size, self.q.symmetric)
        names = [self.weight(f"{stem}_Q{bits}", packed), self.weight(f"{stem}_scales", scales)]
        if not self.q.symmetric:
            names.append(self.weight(f"{stem}_zero_points", zero_points))
        attrs = {"K": w_out_in.shape[1], "N": w_out_in.shape[0], "bits": bits, "block_size": self.q.block_size}
        if self.q.accuracy_level:
            attrs["accuracy_level"] = self.q.accuracy_level
        return names, attrs

    def matmul(self, base: str, x: str, w_out_in: np.ndarray | None = None, lm_head: bool = False,
               output: str = "", written: tuple[list[str], dict[str, Any]] | None = None) -> str:
        """x @ W.T as MatMul (fp32) or MatMulNBits, from a weight or from initializers `written`."""
        names, attrs = written or self.linear(base, w_out_in, lm_head)
        output = output or f"{base}/MatMul/output_0"
        if not attrs:
            return self.node("MatMul", f"{base}/MatMul", [x, *names], [output])
        return self.node("MatMulNBits", f"{base}/MatMul_Q{attrs['bits']}", [x, *names], [output], MS, **attrs)


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
    out = g.node("GatherBlockQuantized", f"{base}/GatherBlockQuantized", [codes, "input_ids", *names[1:]], None, MS,
                 bits=attrs["bits"], block_size=block, gather_axis=0, quantize_axis=1)
    if padded != shape.hidden:
        out = g.node("Slice", f"{base}/Slice", [out, g.constant([0]), g.constant([shape.hidden]), g.constant([-1])])
    return out, written


def _attention_inputs(g: GraphWriter, shape: Shape, config: dict[str, Any]) -> tuple[str, str, str, str]:
    """seqlens_k and total_sequence_length from the attention mask, and the cos/sin caches (for
    longrope an If node picks the long pair once the sequence passes the original context)."""
    sub = "/model/attn_mask_reformat/attn_mask_subgraph"
    one = g.constant([1])
    total = g.node("Gather", f"{sub}/Gather", [g.node("Shape", f"{sub}/Shape", ["attention_mask"]), g.constant(1)], axis=0)
    reduced = g.node("ReduceSum", f"{sub}/ReduceSum", ["attention_mask", one], keepdims=0)
    seqlens = g.node("Cast", f"{sub}/Sub/Cast", [g.node("Sub", f"{sub}/Sub", [reduced, one])], to=6)
    total_len = g.node("Cast", f"{sub}/Gather/Cast", [total], to=6)
    caches = rope_caches(config, shape)
    if "" in caches:
        cos, sin = caches[""]
        return seqlens, total_len, g.weight("cos_cache", cos), g.weight("sin_cache", sin)
    from onnx import helper, numpy_helper

    def branch(kind: str) -> Any:
        nodes, outputs = [], []
        for part, array in zip(("cos", "sin"), caches[kind]):
            name = f"{part}_cache_{kind}"
            nodes.append(helper.make_node("Constant", [], [name], name=f"/{kind}/{part}_cache/Constant",
                                          value=numpy_helper.from_array(array, "")))
            outputs.append(helper.make_tensor_value_info(name, FLOAT, list(array.shape)))
        return helper.make_graph(nodes, f"{kind}_rope_caches_graph", [], outputs)

    longer = g.node("Greater", "/model/rope_caches_subgraph/Greater", [total, g.constant(shape.original_context)])
    g.node("If", "/model/rope_caches_subgraph/If", [longer], ["cos_cache", "sin_cache"],
           then_branch=branch("large"), else_branch=branch("small"))
    return seqlens, total_len, "cos_cache", "sin_cache"


def _skip_norm(g: GraphWriter, layer: str, stem: str, skip: str, x: str, weight: np.ndarray, eps: float,
               last: bool = False) -> tuple[str, str]:
    """SkipSimplifiedLayerNormalization(skip + x): (normalized, residual sum)."""
    w = g.weight(f"model.{layer}.{stem}.weight", weight)
    outputs = [f"/model/{layer}/{stem}/output_0"] + ([] if last else ["", "", f"/model/{layer}/{stem}/output_3"])
    g.node("SkipSimplifiedLayerNormalization", f"/model/{layer}/{stem}/SkipLayerNorm", [skip, x, w], outputs, MS,
           epsilon=eps)
    return outputs[0], outputs[-1]


def expected_tensors(shape: Shape, fused: bool) -> set[str]:
    per_layer = ["input_layernorm", "post_attention_layernorm", "self_attn.o_proj", "mlp.down_proj"]
    per_layer += (["self_attn.qkv_proj", "mlp.gate_up_proj"] if fused else
                  ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"])
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


def write_decoder(g: GraphWriter, weights: CheckpointTensors, shape: Shape, config: dict[str, Any]) -> None:
    """The decoder, layer by layer: each weight is read, converted and written, then freed."""
    seqlens, total_len, cos, sin = _attention_inputs(g, shape, config)
    head = None
    if config.get("tie_word_embeddings"):
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
            h = g.node("SimplifiedLayerNormalization", f"{onnx_layer}/input_layernorm/LayerNorm", [hidden, w],
                       [f"{onnx_layer}/input_layernorm/output_0"], epsilon=shape.eps, axis=-1, stash_type=1)
        else:
            h, skip = _skip_norm(g, f"layers.{i}", "input_layernorm", skip, x, norm, shape.eps)
        qkv = g.matmul(f"{onnx_layer}/attn/qkv_proj", h, _qkv(weights, hf))
        attn = g.node("GroupQueryAttention", f"{onnx_layer}/attn/GroupQueryAttention",
                      [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total_len,
                       cos, sin, "", "", ""],
                      [f"{onnx_layer}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
                      MS, num_heads=shape.heads, kv_num_heads=shape.kv_heads, scale=float(1 / np.sqrt(shape.head)),
                      local_window_size=-1, softcap=0.0, do_rotary=1, rotary_interleaved=0)
        o = g.matmul(f"{onnx_layer}/attn/o_proj", attn, weights.float32(f"{hf}.self_attn.o_proj.weight"))
        h, skip = _skip_norm(g, f"layers.{i}", "post_attention_layernorm", skip, o,
                             weights.float32(f"{hf}.post_attention_layernorm.weight"), shape.eps)
        gate_w, up_w = _gate_up(weights, hf, shape.intermediate)
        gate = g.matmul(f"{onnx_layer}/mlp/gate_proj", h, gate_w)
        up = g.matmul(f"{onnx_layer}/mlp/up_proj", h, up_w)
        del gate_w, up_w
        act = g.node("Mul", f"{onnx_layer}/mlp/act_fn/Mul", [gate, g.node("Sigmoid", f"{onnx_layer}/mlp/act_fn/Sigmoid", [gate])])
        x = g.matmul(f"{onnx_layer}/mlp/down_proj", g.node("Mul", f"{onnx_layer}/mlp/Mul", [act, up]),
                     weights.float32(f"{hf}.mlp.down_proj.weight"))
    h, _ = _skip_norm(g, f"layers.{shape.layers}", "final_norm_layernorm", skip, x,
                      weights.float32("model.norm.weight"), shape.eps, last=True)
    if head is None:
        g.matmul("/lm_head", h, weights.float32("lm_head.weight"), lm_head=True, output="logits")
    else:
        g.matmul("/lm_head", h, output="logits", written=head)


def graph_io(shape: Shape) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    kv = ["batch_size", shape.kv_heads]
    inputs = [helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", FLOAT, ["batch_size", "sequence_length", shape.vocab])]
    for i in range(shape.layers):
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{part}", FLOAT, [*kv, "past_sequence_length", "kv_cache_dim"]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{part}", FLOAT, [*kv, "total_sequence_length", "kv_cache_dim"]))
    return inputs, outputs
