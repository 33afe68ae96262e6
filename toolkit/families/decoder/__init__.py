"""Phi-3, Phi-3.5-mini and Llama-architecture decoders (SmolLM2): transformers' own classes, the
builder's decoder graph written by graph.py, genai_config.json from the builder's config_only mode.
Phi-3 checkpoints keep q/k/v and gate/up fused, Llama ones separate; both give the same graph."""

from __future__ import annotations

from typing import Any

from ...graphs.ops import Shape
from ...plan.config import OWN_METHODS, ExportConfig, QuantizeConfig
from ...source.tensors import CheckpointTensors
from ..family import Family, GgufHooks, NpuHooks
from . import gguf, npu
from .graph import expected_tensors, graph_io, hf_rows, write_decoder


def _tensors(weights: CheckpointTensors, shape: Shape, _config: dict[str, Any]) -> tuple[set[str], set[str]]:
    return expected_tensors(shape, "model.layers.0.self_attn.qkv_proj.weight" in weights), set()


def _stream_problems(config: dict[str, Any], precision: str, _export: ExportConfig, q: QuantizeConfig) -> list[str]:
    tied = bool(config.get("tie_word_embeddings"))
    rounded = precision != "int4" or not q.symmetric or q.lm_head != "int4"  # what the builder would share
    if tied and precision not in ("fp32", "fp16") and q.method not in OWN_METHODS and rounded:
        return [
            "tied embeddings with int8 or asymmetric weights (it shares float32 or symmetric "
            "int4 lm_head weights with the embedding)"
        ]
    return []


FAMILY = Family(
    name="decoder",
    architectures={
        "Phi3ForCausalLM": ("phi3", "Phi-3-mini-4k, Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini"),
        "LlamaForCausalLM": ("llama", "SmolLM2 and other Llama-architecture models"),
    },
    tensors=_tensors,
    write_decoder=write_decoder,
    decoder_io=graph_io,
    stream_problems=_stream_problems,
    hf_rows=hf_rows,
    gguf=GgufHooks(gguf.ARCHITECTURES, gguf.metadata, gguf.tensors),
    npu=NpuHooks(npu.write_layer, npu.write_head),
)
