"""Phi-3.5-MoE (PhiMoE): LayerNorms and biases, longrope attention, a float router and the experts
in onnxruntime's QMoE (graph.py), from either checkpoint layout; genai_config type "phimoe"
written by slmkit (the builder cannot read transformers 5's PhiMoE); the reference reads each
expert when a token reaches it (reference.py). Built for the cpu and cuda providers only."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ...graphs.ops import Shape
from ...plan.config import OWN_METHODS, ExportConfig, QuantizeConfig
from ...plan.doctor import estimate_bundle_bytes
from ...source.tensors import CheckpointTensors
from ..decoder.graph import graph_io, hf_rows
from ..family import Family
from ..genai_config import write_genai_config
from .graph import expected_tensors, published, write_moe_decoder
from .reference import lazy_experts, reference_key

# Targets a mixture of experts is not built for, and why (the bundle size is added to the message).
EVERY_EXPERT = "every expert stays loaded: top-2 routing picks other experts at every token"
REFUSED = {
    "android": f"more than a phone's memory ({EVERY_EXPERT})",
    "ios": f"more than an iPhone's or iPad's memory ({EVERY_EXPERT})",
    "windows-dml": "and onnxruntime has no DirectML kernel for QMoE, the mixture-of-experts operator",
    "web": f"more than a browser tab holds (4 GB of WASM memory; {EVERY_EXPERT})",
    "snapdragon": "more than a phone's or laptop's NPU maps, and which experts a token takes is decided at run "
    "time, where the HTP runs static graphs",
}


def refuse_target(src: Any, target: str | None) -> None:
    if target not in REFUSED:
        return
    size = estimate_bundle_bytes(src.num_params, "int4", src.config["vocab_size"], src.config["hidden_size"])
    raise ConfigError(
        f"{src.architecture} ({src.num_params / 1e9:.3g} B parameters, a mixture of "
        f"{src.config.get('num_local_experts')} experts) is not built for {target}: its int4 bundle would be about "
        f"{size / 1e9:.3g} GB, {REFUSED[target]}. Build it with --target cpu or --target linux-cuda."
    )


def _tensors(weights: CheckpointTensors, shape: Shape, config: dict[str, Any]) -> tuple[set[str], set[str]]:
    return expected_tensors(shape, config["num_local_experts"], published(weights)), set()


def _stream_problems(_config: dict[str, Any], precision: str, export: ExportConfig, q: QuantizeConfig) -> list[str]:
    ep = export.execution_provider
    if ep not in ("cpu", "cuda") or precision not in ("int4", "int8"):
        return [
            f"{precision} {ep} graphs of a mixture of experts (its experts are written int4 or int8, "
            "as onnxruntime's QMoE, for the cpu and cuda providers)"
        ]
    if q.method in OWN_METHODS and (q.method not in ("gptq", "mse") or not q.symmetric):
        return [
            f"quantize.method '{q.method}'{'' if q.symmetric else ' with asymmetric blocks'} for a mixture of "
            "experts (QMoE takes symmetric int4 experts: gptq or mse with quantize.symmetric = true)"
        ]
    return []


def _write_configs(source: Any, config: dict[str, Any], export: ExportConfig, out: Any) -> None:
    write_genai_config(source, config, export, out, "phimoe")


FAMILY = Family(
    name="phimoe",
    architectures={
        "PhiMoEForCausalLM": ("phimoe", "Phi-3.5-MoE"),  # the published config's name
        "PhimoeForCausalLM": ("phimoe", "Phi-3.5-MoE re-saved by transformers 5"),
    },
    tensors=_tensors,
    write_decoder=lambda g, weights, shape, config, _provider: write_moe_decoder(g, weights, shape, config),
    decoder_io=graph_io,
    write_configs=_write_configs,
    stream_problems=_stream_problems,
    float_matmuls=("/moe/router/",),  # the router stays float: it is small and picks the experts
    refuse_target=refuse_target,
    reference_key=reference_key,
    lazy_experts=lazy_experts,
    hf_rows=hf_rows,  # attention's q, k, v and o; the experts: sequential.py, by expert
    float_linears=("mlp.router",),
)
