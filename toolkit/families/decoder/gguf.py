"""The decoder family as llama.cpp reads it (the GGUF target, toolkit/export/gguf.py): Phi-3,
Phi-3.5-mini and Phi-4-mini as architecture `phi3` (fused attn_qkv and ffn_up = gate then up rows,
rotate-half rotary, longrope factor tensors, partial rotary as rope.dimension_count), Llama /
SmolLM2 as `llama` (separate q, k, v, gate and up; q and k rows interleaved per head for llama.cpp's
pairwise rotary), tied tables as token_embd alone. Names and keys as llama.cpp's own converter
(convert_hf_to_gguf.py) writes them for these architectures."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...graphs.ops import Shape
from ...source.tensors import CheckpointTensors

ARCHITECTURES = {"Phi3ForCausalLM": "phi3", "LlamaForCausalLM": "llama"}


@dataclass(frozen=True)
class Part:
    """Rows of a checkpoint tensor (all of them: None) that a GGUF tensor stacks, and the graph's
    MatMul name the calibration knows them by ("" for a vector)."""

    base: str
    key: str
    rows: slice | None = None


@dataclass(frozen=True)
class Tensor:
    """One GGUF tensor: its name and shape [rows, k] (k = 0: a vector of `rows`), the parts whose
    rows it stacks (or its `value`: the longrope factors); `order` reorders the stacked rows."""

    name: str
    rows: int
    k: int
    parts: tuple[Part, ...] = ()
    order: np.ndarray | None = None
    value: np.ndarray | None = None
    stage: int = -1  # -1: before the layers; a layer's index; the layer count: after them


def permuted_rows(heads: int, head_dim: int) -> np.ndarray:
    """The row order of a q or k projection as llama.cpp's `llama` architecture rotates it: each
    head's two halves (rotate_half) interleaved into pairs, as llama.cpp's converter permutes them."""
    half = head_dim // 2
    inner = np.arange(head_dim).reshape(2, half).T.reshape(-1)  # 0, half, 1, half + 1, ...
    return (np.arange(heads)[:, None] * head_dim + inner[None, :]).reshape(-1)


def _vector(name: str, rows: int, key: str) -> Tensor:
    return Tensor(name, rows, 0, (Part("", key),))


def layer_tensors(weights: CheckpointTensors, shape: Shape, arch: str, i: int) -> list[Tensor]:
    """Layer i's GGUF tensors, in the order llama.cpp's converter writes them."""
    hf, onnx = f"model.layers.{i}", f"/model/layers.{i}"
    q, kv, inter = shape.heads * shape.head, shape.kv_heads * shape.head, shape.intermediate
    qkv, gate_up = f"{hf}.self_attn.qkv_proj.weight", f"{hf}.mlp.gate_up_proj.weight"
    spans = {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}

    def attn(p: str) -> Part:
        if qkv in weights:
            return Part(f"{onnx}/attn/{p}_proj", qkv, spans[p])
        return Part(f"{onnx}/attn/{p}_proj", f"{hf}.self_attn.{p}_proj.weight")

    def mlp(p: str, rows: slice) -> Part:
        if gate_up in weights:
            return Part(f"{onnx}/mlp/{p}_proj", gate_up, rows)
        return Part(f"{onnx}/mlp/{p}_proj", f"{hf}.mlp.{p}_proj.weight")

    h = shape.hidden
    out = [_vector(f"blk.{i}.attn_norm.weight", h, f"{hf}.input_layernorm.weight")]
    if arch == "phi3" and qkv in weights:  # the calibration knows the fused matrix by the graph's qkv_proj
        out.append(Tensor(f"blk.{i}.attn_qkv.weight", q + 2 * kv, h, (Part(f"{onnx}/attn/qkv_proj", qkv),)))
    elif arch == "phi3":
        out.append(Tensor(f"blk.{i}.attn_qkv.weight", q + 2 * kv, h, tuple(attn(p) for p in "qkv")))
    else:
        out.append(Tensor(f"blk.{i}.attn_q.weight", q, h, (attn("q"),), permuted_rows(shape.heads, shape.head)))
        out.append(Tensor(f"blk.{i}.attn_k.weight", kv, h, (attn("k"),), permuted_rows(shape.kv_heads, shape.head)))
        out.append(Tensor(f"blk.{i}.attn_v.weight", kv, h, (attn("v"),)))
    o_proj = Part(f"{onnx}/attn/o_proj", f"{hf}.self_attn.o_proj.weight")
    out.append(Tensor(f"blk.{i}.attn_output.weight", h, q, (o_proj,)))
    out.append(_vector(f"blk.{i}.ffn_norm.weight", h, f"{hf}.post_attention_layernorm.weight"))
    gate, up = mlp("gate", slice(0, inter)), mlp("up", slice(inter, 2 * inter))
    if arch == "phi3":
        out.append(Tensor(f"blk.{i}.ffn_up.weight", 2 * inter, h, (gate, up)))
    else:
        out += [
            Tensor(f"blk.{i}.ffn_gate.weight", inter, h, (gate,)),
            Tensor(f"blk.{i}.ffn_up.weight", inter, h, (up,)),
        ]
    down = Part(f"{onnx}/mlp/down_proj", f"{hf}.mlp.down_proj.weight")
    out.append(Tensor(f"blk.{i}.ffn_down.weight", h, inter, (down,)))
    return out


def tensors(weights: CheckpointTensors, shape: Shape, arch: str, extra: dict[str, np.ndarray]) -> list[Tensor]:
    """Every GGUF tensor, in the order they are written: the longrope factors and an untied token
    table, the layers, then the final norm and the lm_head (token_embd itself when tied: its
    calibration needs the last layer's output)."""
    h, vocab, last = shape.hidden, shape.vocab, shape.layers
    out = [Tensor(name, len(v), 0, value=v) for name, v in extra.items()]
    tied = "lm_head.weight" not in weights
    if not tied:
        out.append(Tensor("token_embd.weight", vocab, h, (Part("/model/embed_tokens", "model.embed_tokens.weight"),)))
    for i in range(shape.layers):
        out += [replace(t, stage=i) for t in layer_tensors(weights, shape, arch, i)]
    norm = _vector("output_norm.weight", h, "model.norm.weight")
    head_key = "model.embed_tokens.weight" if tied else "lm_head.weight"
    head = Tensor("token_embd.weight" if tied else "output.weight", vocab, h, (Part("/lm_head", head_key),))
    return out + [replace(norm, stage=last), replace(head, stage=last)]


def metadata(w: Any, config: dict[str, Any], shape: Shape, arch: str) -> dict[str, np.ndarray]:
    """The architecture's keys on gguf-py's writer `w`; returns the extra tensors (longrope
    factors) by name. context_length is the model's (llama.cpp picks the long factors for a
    context beyond the original one); the Modelfile's num_ctx caps what a user runs."""
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_feed_forward_length(shape.intermediate)
    w.add_block_count(shape.layers)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_layer_norm_rms_eps(shape.eps)
    w.add_rope_dimension_count(shape.rotary)
    w.add_rope_freq_base(_theta(config))
    if shape.head != shape.hidden // shape.heads:
        w.add_key_length(shape.head)
        w.add_value_length(shape.head)
    extra: dict[str, np.ndarray] = {}
    if arch != "phi3":
        return extra
    w.add_sliding_window(config.get("sliding_window") or 0)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("long_factor"):
        w.add_rope_scaling_orig_ctx_len(shape.original_context)
        scale = shape.context / shape.original_context
        w.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(shape.original_context)) if scale > 1.0 else 1.0
        )
        extra["rope_factors_long.weight"] = np.asarray(scaling["long_factor"], dtype=np.float32)
        extra["rope_factors_short.weight"] = np.asarray(scaling["short_factor"], dtype=np.float32)
    return extra


def _theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
