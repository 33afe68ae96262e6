"""What a model family tells the generic stages about itself: one frozen record of data and
functions per family, registered in toolkit/families/__init__.py. The stages ask the record;
none of them tests for a family by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..graphs.ops import GraphWriter, Shape
from ..plan.config import BuildPlan, ExportConfig, QuantizeConfig
from ..source.hf import auto_config
from ..source.tensors import CheckpointTensors


def _nothing(*_: Any) -> None:
    return None


def _no_problems(*_: Any) -> list[str]:
    return []


def _same_key(_weights: CheckpointTensors, key: str) -> str | None:
    return key


@dataclass(frozen=True)
class GgufHooks:
    """How llama.cpp reads a family (the GGUF target, toolkit/export/gguf.py)."""

    architectures: dict[str, str]  # config.json's architectures[0] -> llama.cpp's general.architecture
    # metadata(gguf writer, config, shape, arch): its keys; returns extra F32 tensors by name
    metadata: Callable[..., dict[str, Any]]
    # tensors(weights, shape, arch, extra): every tensor, in the order they are written
    tensors: Callable[..., list[Any]]


@dataclass(frozen=True)
class NpuHooks:
    """How slmkit writes a family's static graphs for the Hexagon NPU (toolkit/export/qnn/)."""

    # write_layer(graph, weights, weight(hf names) -> QuantWeight, index, shape, step, x): the layer's output
    write_layer: Callable[..., str]
    # write_head(graph, weights, weight, shape, x, output): the final norm and lm_head's logits
    write_head: Callable[..., str]


@dataclass(frozen=True)
class Family:
    name: str
    # -- how it is recognised: config.json's architectures[0] -> (its model_type, the checkpoints it
    # covers); the model_type is transformers' own class (phi3_v has none: slmkit writes its graphs)
    architectures: dict[str, tuple[str, str]]
    # -- the streamed export (toolkit/export/stream.py) ------------------------------------------
    # (the checkpoint tensors the graphs read, the ones left out on purpose)
    tensors: Callable[[CheckpointTensors, Shape, dict[str, Any]], tuple[set[str], set[str]]]
    # write_decoder(g, weights, shape, config, provider): model.onnx's nodes and initializers
    write_decoder: Callable[[GraphWriter, CheckpointTensors, Shape, dict[str, Any], str], None]
    # decoder_io(shape, dtype, provider): model.onnx's inputs and outputs
    decoder_io: Callable[[Shape, Any, str], tuple[list[Any], list[Any]]]
    # write_configs(source, config, export, out): genai_config.json and the tokenizer files; None:
    # the onnxruntime-genai builder's config_only mode writes them
    write_configs: Callable[[Path, dict[str, Any], ExportConfig, Path], None] | None = None
    # write_more_graphs(weights, shape, export, quantize, dtype, out): graphs besides model.onnx
    write_more_graphs: Callable[..., None] | None = None
    # stream_problems(config, precision, export, quantize): what the streamed engine does not write
    # for this family (the generic provider and precision checks come first)
    stream_problems: Callable[[dict[str, Any], str, ExportConfig, QuantizeConfig], list[str]] = _no_problems
    # names of MatMul nodes that stay float in a quantized graph on purpose (the read-back allows them)
    float_matmuls: tuple[str, ...] = ()
    # hf_rows(MatMul name, shape, has(module)): the Hugging Face Linear rows a MatMul of the graph is
    # made of, for slmkit's calibrated int4 (toolkit/quantize/sequential.py); None: not calibrated
    hf_rows: Callable[[str, Shape, Callable[[str], bool]], list[tuple[str, Any, Any]]] | None = None
    # Hugging Face Linear modules of a decoder layer that stay float (a router)
    float_linears: tuple[str, ...] = ()
    # -- what it refuses, and why (ConfigError with the reason) --------------------------------
    refuse_target: Callable[[Any, str | None], None] = _nothing  # (source model, target name)
    check_plan: Callable[[Any, BuildPlan], None] = _nothing  # (source model, resolved plan)
    # -- the layer-by-layer reference (toolkit/reference/) ---------------------------------------
    hf_config: Callable[[Path], Any] = auto_config  # transformers' config of the checkpoint folder
    prepare_weights: Callable[[CheckpointTensors], None] = _nothing  # e.g. a table kept under two names
    # the checkpoint tensor a parameter of the reference reads (None: read lazily, by lazy_experts)
    reference_key: Callable[[CheckpointTensors, str], str | None] = _same_key
    # lazy_experts(experts module, reader): a module that reads each expert when a token reaches it
    lazy_experts: Callable[[Any, Any], Any] | None = None
    # extra_cases(bundle, source, weight_files, model, passes, verify, eos, wrap): golden cases
    # beyond the text prompts (an image), appended to tests/golden.json
    extra_cases: Callable[..., list[dict[str, Any]]] | None = None
    # -- the GGUF target: None when slmkit writes no llama.cpp file for the family ------------------
    gguf: GgufHooks | None = None
    # -- the Hexagon NPU target: None when slmkit writes no static graphs for the family ----------
    npu: NpuHooks | None = None
