"""The Phi-3.5-MoE (PhiMoE) decoder: LayerNorms with bias, Phi-3.5 attention (longrope, q/k/v and o
biases), a float router, PhiMoE's sparse-mixer routing weights computed in the graph, and the
experts in one QMoE node per layer (int4 or int8, gate and up rows interleaved, SwiGLU).

onnxruntime's QMoE ignores use_sparse_mixer (it would softmax over the top two: 0.38 relative
error against PhiMoE), so the graph computes the mixer's weights itself and passes them as
`router_weights`; the router logits only pick the two experts. transformers 5, eval mode, with
eps = router_jitter_noise and s the router logits of a token:
  expert 1 = argmax s; weight 1 = softmax(s masked where (max s - s) / max(|s|, max s) > 2 eps) at it;
  expert 2 = the same with expert 1 removed (the threshold is then the second largest logit).
Experts are read, quantized and written one at a time: memory stays flat in experts and layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ...graphs.attention import attention, attention_inputs
from ...graphs.ops import FLOAT, MS, GraphWriter, Shape, biased, blockwise, layer_norm
from ...source.tensors import CheckpointTensors


def published(weights: CheckpointTensors) -> bool:
    """microsoft/Phi-3.5-MoE-instruct's names, or transformers 5's fused expert tensors."""
    return "model.layers.0.block_sparse_moe.gate.weight" in weights


def expected_tensors(shape: Shape, experts: int, is_published: bool) -> set[str]:
    per_layer = [f"{n}.{p}" for n in ("input_layernorm", "post_attention_layernorm") for p in ("weight", "bias")]
    per_layer += [f"self_attn.{p}_proj.{k}" for p in "qkvo" for k in ("weight", "bias")]
    if is_published:
        per_layer += ["block_sparse_moe.gate.weight"]
        per_layer += [f"block_sparse_moe.experts.{e}.w{j}.weight" for e in range(experts) for j in (1, 2, 3)]
    else:
        per_layer += ["mlp.router.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    names = {f"model.layers.{i}.{p}" for i in range(shape.layers) for p in per_layer}
    return names | {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.norm.bias",
        "lm_head.weight",
        "lm_head.bias",
    }


def router_key(weights: CheckpointTensors, hf: str) -> str:
    """The router of layer `hf`: block_sparse_moe.gate (published) or mlp.router (transformers 5)."""
    key = f"{hf}.block_sparse_moe.gate.weight"
    return key if key in weights else f"{hf}.mlp.router.weight"


Source = tuple[str, "int | None"]  # a checkpoint tensor, or [index] of a stacked one


def expert_sources(weights: CheckpointTensors, hf: str, e: int) -> tuple[list[Source], Source]:
    """Where expert e of layer `hf` lies: the tensors whose rows, one after the other, are its
    gate_up [2I, H] (gate rows, then up), and its down [H, I]; from the published layout (w1, w3,
    w2) or transformers 5's stacked tensors (read one expert at a time)."""
    published = f"{hf}.block_sparse_moe.experts.{e}"
    if f"{published}.w1.weight" in weights:
        return [(f"{published}.w1.weight", None), (f"{published}.w3.weight", None)], (f"{published}.w2.weight", None)
    return [(f"{hf}.mlp.experts.gate_up_proj", e)], (f"{hf}.mlp.experts.down_proj", e)


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """fc1 rows as QMoE's swiglu_fusion=1 reads them: gate 0, up 0, gate 1, up 1, ..."""
    return np.stack([gate, up], axis=1).reshape(2 * gate.shape[0], gate.shape[1])


def _interleaved(intermediate: int) -> np.ndarray:
    """The order of gate_up's rows (gate, then up) in fc1: gate 0, up 0, gate 1, up 1, ..."""
    return np.stack([np.arange(intermediate), intermediate + np.arange(intermediate)], axis=1).reshape(-1)


def _codes(w_nk: np.ndarray, bits: int, block: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes [N, K*bits/8] (zero point 2^(bits-1), QMoE's default) and scales [N, K/block],
    from onnxruntime's own MatMulNBits quantizer."""
    packed, scales, _ = blockwise(np.ascontiguousarray(w_nk.T, dtype=dtype), bits, block, True)
    return packed.reshape(w_nk.shape[0], -1), scales


def _experts(
    g: GraphWriter, weights: CheckpointTensors, hf: str, base: str, n: int, shape: Shape, bits: int
) -> list[str]:
    """fc1 (codes, scales) and fc2 (codes, scales): codes streamed expert by expert, scales kept."""
    block = g.q.block_size
    stem = f"{base}.moe"
    fc_scales: dict[str, list[np.ndarray]] = {"fc1": [], "fc2": []}

    def parts(which: str) -> Iterator[np.ndarray]:
        """Each expert's fc1 (its gate and up rows, interleaved) or fc2 (its down): each pass reads
        only the tensors it writes; calibrated experts come from the quantizer (symmetric blocks)."""
        for e in range(n):
            if g.quantizer is not None:
                fc1, fc2 = g.quantizer.expert(hf, e)
                p = fc1.take(_interleaved(shape.intermediate)) if which == "fc1" else fc2
                fc_scales[which].append(p.scales.astype(g.dtype))
                yield p.codes.reshape(p.codes.shape[0], -1)
                continue
            gate_up, down = expert_sources(weights, hf, e)
            if which == "fc1":
                rows = np.concatenate([weights.float32(key, index) for key, index in gate_up])
                w = _interleave(rows[: shape.intermediate], rows[shape.intermediate :])
                del rows
            else:
                w = weights.float32(*down)
            codes, scales = _codes(w, bits, block, g.dtype)
            fc_scales[which].append(scales)
            yield codes

    names = []
    for which in ("fc1", "fc2"):
        names.append(g.stacked(f"{stem}.{which}.weight_Q{bits}", parts(which)))
        names.append(g.stacked(f"{stem}.{which}.scales", iter(fc_scales.pop(which))))
    return names


def _mixer(g: GraphWriter, base: str, logits: str, n: int, eps: float) -> str:
    """PhiMoE's top-2 sparse-mixer weights [tokens, experts] (zero off the two chosen), in float32."""
    axis = g.constant([-1])
    ninf, zero, thresh = (
        g.weight(f"{base}/{name}", np.array(v, dtype=np.float32), keep=True)
        for name, v in (("ninf", -np.inf), ("zero", 0.0), ("two_eps", 2 * eps))
    )
    experts = g.weight(f"{base}/experts", np.arange(n, dtype=np.int64))
    magnitude = g.node("Abs", f"{base}/Abs", [logits])
    total, scores = "", logits
    for step in (1, 2):
        top = g.node("ReduceMax", f"{base}/ReduceMax_{step}", [scores, axis], keepdims=1)
        pick = g.node("ArgMax", f"{base}/ArgMax_{step}", [scores], axis=-1, keepdims=1)
        factor = g.node("Max", f"{base}/Max_{step}", [magnitude, top])
        gap = g.node("Div", f"{base}/Div_{step}", [g.node("Sub", f"{base}/Sub_{step}", [top, logits]), factor])
        masked = g.node(
            "Where", f"{base}/Mask_{step}", [g.node("Greater", f"{base}/Greater_{step}", [gap, thresh]), ninf, scores]
        )
        soft = g.node("Softmax", f"{base}/Softmax_{step}", [masked], axis=-1)
        chosen = g.node("Equal", f"{base}/Equal_{step}", [experts, pick])
        weight = g.node("Where", f"{base}/Weight_{step}", [chosen, soft, zero])
        total = weight if step == 1 else g.node("Add", f"{base}/Add", [total, weight])
        scores = g.node("Where", f"{base}/Drop_{step}", [chosen, ninf, scores])
    return total


def moe_block(
    g: GraphWriter, weights: CheckpointTensors, hf: str, layer: int, h: str, shape: Shape, config: dict[str, Any]
) -> str:
    """The sparse MoE block on the normalized hidden state `h` [batch, sequence, hidden]."""
    base, n = f"/model/layers.{layer}/moe", config["num_local_experts"]
    flat = g.node("Reshape", f"{base}/Reshape", [h, g.constant([-1, shape.hidden])])
    logits = g.matmul(f"{base}/router", flat, weights.float32(router_key(weights, hf)), float_weight=True)
    logits32 = logits if g.dtype == np.float32 else g.node("Cast", f"{base}/router/Cast", [logits], to=FLOAT)
    mixed = _mixer(g, f"{base}/sparse_mixer", logits32, n, config.get("router_jitter_noise", 0.01))
    if g.dtype != np.float32:
        mixed = g.node("Cast", f"{base}/sparse_mixer/Cast", [mixed], to=g.elem)
    bits = 8 if g.precision == "int8" else 4
    fc1, fc1_scales, fc2, fc2_scales = _experts(g, weights, hf, f"model.layers.{layer}", n, shape, bits)
    attrs = dict(
        k=config.get("num_experts_per_tok", 2),
        activation_type="swiglu",
        swiglu_fusion=1,
        activation_alpha=1.0,
        activation_beta=0.0,
        expert_weight_bits=bits,
        block_size=g.q.block_size,
        normalize_routing_weights=0,
        use_sparse_mixer=0,
        weights_prepacked=0,
    )  # raw [E, N, K/pack] codes: each provider packs them its own way
    if g.q.accuracy_level:
        attrs["accuracy_level"] = g.q.accuracy_level
    out = g.node(
        "QMoE",
        f"{base}/QMoE",
        [flat, logits, fc1, fc1_scales, "", fc2, fc2_scales, "", "", "", "", "", "", "", mixed],
        None,
        MS,
        **attrs,
    )
    return g.node("Reshape", f"{base}/Reshape_out", [out, g.node("Shape", f"{base}/Shape", [h])])


def write_moe_decoder(g: GraphWriter, weights: CheckpointTensors, shape: Shape, config: dict[str, Any]) -> None:
    """The PhiMoE decoder, layer by layer and expert by expert."""
    a = attention_inputs(g, shape, config, split=False)
    embed = g.weight("model.embed_tokens.weight", weights.float32("model.embed_tokens.weight"))
    residual = g.node("Gather", "/model/embed_tokens/Gather", [embed, "input_ids"])
    for i in range(shape.layers):
        hf, base = f"model.layers.{i}", f"/model/layers.{i}"
        g.layer(i)
        h = layer_norm(g, f"{base}/input_layernorm", residual, weights, f"{hf}.input_layernorm", shape.eps)
        qkv = np.concatenate([weights.float32(f"{hf}.self_attn.{p}_proj.weight") for p in "qkv"])
        bias = np.concatenate([weights.float32(f"{hf}.self_attn.{p}_proj.bias") for p in "qkv"])
        attn, a = attention(g, a, shape, i, h, qkv, bias)
        del qkv
        o = g.matmul(f"{base}/attn/o_proj", attn, weights.float32(f"{hf}.self_attn.o_proj.weight"))
        o = biased(g, f"{base}/attn/o_proj", o, weights, f"{hf}.self_attn.o_proj")
        residual = g.node("Add", f"{base}/attn_residual/Add", [residual, o])
        h = layer_norm(
            g, f"{base}/post_attention_layernorm", residual, weights, f"{hf}.post_attention_layernorm", shape.eps
        )
        residual = g.node("Add", f"{base}/moe_residual/Add", [residual, moe_block(g, weights, hf, i, h, shape, config)])
    g.layer(None)
    h = layer_norm(g, "/model/norm", residual, weights, "model.norm", shape.eps)
    logits = g.matmul("/lm_head", h, weights.float32("lm_head.weight"), lm_head=True)
    biased(g, "/lm_head", logits, weights, "lm_head", output="logits")
