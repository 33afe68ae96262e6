"""The streamed export engine (`export.engine = "stream"`): the graphs that the onnxruntime-genai
builder writes for the CPU, CUDA and DirectML providers (same ops, names and settings), made one
checkpoint tensor at a time by the family's graph writers (toolkit/families/): read, quantized
with the onnxruntime kernel the builder's default quantizer calls, appended to model.onnx.data.
Peak memory is set by the largest tensor, not by the number of layers. genai_config.json and the
tokenizer files come from the builder's own `config_only` mode where it can read the checkpoint's
config (they then match a builder export exactly), else from the family.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputModelError
from ..families import family_of
from ..graphs.external import ExternalData, compact
from ..graphs.ops import DYNAMIC_INT8, WASM_GRAPH, GraphWriter, Shape, save_graph
from ..plan.config import OWN_METHODS, ExportConfig, QuantizeConfig
from ..progress import bar
from ..source.checkpoint import SourceModel
from ..source.tensors import CheckpointTensors
from . import lora
from .builder import builder_call, create_model

ROPE_KINDS = ("longrope", "none")
# The builder's CUDA graph at fp32 is another graph (Attention with RotaryEmbedding nodes).
PRECISIONS = {
    "cpu": ("int4", "int8", "fp32"),
    "cuda": ("int4", "int8", "fp16"),
    "dml": ("int4", "fp16"),
    "webgpu": ("int4",),
}
# The builder's WebGPU graph with float32 I/O (use_webgpu_fp32) is its CPU graph node for node
# (only genai_config.json's provider options differ), so it is written as that one.
GRAPH_OF = {"webgpu": "cpu"}
# Builder options that choose the graph of a provider.
PROVIDER_OPTIONS = {"webgpu": {"use_webgpu_fp32": "true"}}


def graph_provider(execution_provider: str) -> str:
    """The provider whose graph the streamed engine writes for `execution_provider`."""
    return GRAPH_OF.get(execution_provider, execution_provider)


def attention_layout(execution_provider: str, shape: Shape) -> str:
    """The provider whose attention layout the graph takes: its own, except a partial rotary on
    the web. onnxruntime-web 1.30's WebGPU GroupQueryAttention runs its rotary (do_rotary) as a
    RotaryEmbedding with rotary_embedding_dim 0, which takes each head's width from the cos cache
    (2 x 48 = 96 for Phi-4-mini, whose heads are 128 wide): every head after the first is cut at the
    wrong place, and the tokens are wrong. The DirectML layout (q, k and v apart, RotaryEmbedding
    nodes with num_heads and rotary_embedding_dim, GroupQueryAttention without rotary, a
    position_ids input) gives that kernel the heads' width; its float32 graph is the same model."""
    if execution_provider == "webgpu" and shape.rotary != shape.head:
        return "dml"
    return graph_provider(execution_provider)


METHODS = ("default", *OWN_METHODS)  # the builder's round-to-nearest, and slmkit's calibrated int4


def problems(src: SourceModel, export: ExportConfig, q: QuantizeConfig) -> list[str]:
    """What in a plan the streamed engine does not write for this checkpoint (empty when it can
    build it)."""
    precision = export.precision
    family = family_of(src.config)
    found = []
    if src.rope_scaling not in ROPE_KINDS:
        found.append(f"rope scaling '{src.rope_scaling}' (it writes {' or '.join(ROPE_KINDS)})")
    ep = export.execution_provider
    if ep not in PRECISIONS:
        found.append(f"execution provider '{ep}' (it writes {' and '.join(PRECISIONS)} graphs)")
    elif precision not in PRECISIONS[ep]:
        found.append(f"precision '{precision}' for {ep} (it writes {', '.join(PRECISIONS[ep])})")
    elif precision not in ("fp32", "fp16") and q.method not in METHODS:
        found.append(f"quantize.method '{q.method}' (it quantizes with {', '.join(METHODS)})")
    elif q.method in OWN_METHODS and family.hf_rows is None:
        found.append(
            f"quantize.method '{q.method}' for {src.architecture} (its family does not map its graph's "
            "matrices to the checkpoint's rows, which slmkit's calibrated int4 needs)"
        )
    else:
        found += family.stream_problems(src.config, precision, export, q)
    if export.wasm_graph != "none" and (ep != "webgpu" or family.name != "decoder"):
        found.append(
            f"export.wasm_graph '{export.wasm_graph}' for {src.architecture} on {ep} (a second graph for the "
            "browser's WASM backend is written for the web target's Phi-3/Phi-4-mini and Llama decoders)"
        )
    return found


def check_supported(src: SourceModel, export: ExportConfig, q: QuantizeConfig) -> None:
    """Refuse, before anything is written, what the streamed engine does not write."""
    found = problems(src, export, q)
    if found:
        raise ConfigError(
            "export.engine 'stream' cannot build "
            + "; ".join(found)
            + ". Add --set export.engine=ort-genai to use the onnxruntime-genai builder."
        )


def write_config_files(source: Path, export: ExportConfig, out: Path, work: Path) -> None:
    """genai_config.json, tokenizer and chat template from the builder's config_only mode (it
    reads config.json and the tokenizer, no weights). That mode leaves past_present_share_buffer
    false; a full builder export sets it true (GroupQueryAttention shares the KV buffers), and so
    does this graph."""
    with builder_call(work / "export.log", work):
        create_model(
            source,
            out,
            export.precision,
            export.execution_provider,
            ["config_only=true", "hf_remote=false", "hf_token=false"]
            + [f"{k}={v}" for k, v in PROVIDER_OPTIONS.get(export.execution_provider, {}).items()],
        )
    path = out / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["search"]["past_present_share_buffer"] = True
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")  # as the builder writes it


def export_stream(
    source: Path,
    weight_files: tuple[str, ...],
    config: dict[str, Any],
    export: ExportConfig,
    q: QuantizeConfig,
    work: Path,
    log: Callable[[str], None] = lambda _: None,
    lora_modules: frozenset[str] = frozenset(),
) -> Path:
    """Write model.onnx, model.onnx.data, genai_config.json and the tokenizer into work/export, and
    the family's other graphs (Phi-3-vision: vision.onnx, embedding.onnx, processor_config.json).
    With `lora_modules`, the MatMuls made of them take runtime LoRA inputs (their layout goes to
    work/lora_slots.json for the adapter files)."""
    family = family_of(config)
    shape = Shape.of(config)
    # The builder's GPU graphs compute in float16 (float32 only when that precision is asked for).
    ep = graph_provider(export.execution_provider)
    layout = attention_layout(export.execution_provider, shape)
    dtype = np.float16 if ep != "cpu" and export.precision != "fp32" else np.float32
    weights = CheckpointTensors(source, weight_files)
    family.prepare_weights(weights)
    expected, skipped = family.tensors(weights, shape, config)
    unused = sorted(n for n in set(weights.entries) - expected - skipped if not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise InputModelError(
            f"The checkpoint has tensors the graphs do not use ({', '.join(unused[:4])}"
            f"{', ...' if len(unused) > 4 else ''}): the streamed engine would drop them. "
            "Use --set export.engine=ort-genai."
        )
    out = work / "export"
    out.mkdir(parents=True)
    if family.write_configs is None:
        write_config_files(source, export, out, work)
    else:
        family.write_configs(source, config, export, out)
    calibration = None
    if q.method in OWN_METHODS and export.precision == "int4":  # float exports have nothing to calibrate
        from ..quantize.sequential import Calibration

        calibration = Calibration(source, weight_files, config, q, weights, work / "calibration", log)
    with bar("export", weights.nbytes(expected), "bytes of weights") as progress:
        weights.on_read = progress.advance
        try:
            with ExternalData(out / "model.onnx.data") as data:
                g = GraphWriter(data, export.precision, q, dtype, calibration)
                # onnxruntime-web's WebGPU MatMulNBits: 4 bits only, zero points in the 1-D form
                g.int8_blocks = export.execution_provider != "webgpu"
                g.flat_zero_points = export.execution_provider == "webgpu"
                if lora_modules:
                    g.lora = lora.pieces_of(family, shape, weights, lora_modules)
                family.write_decoder(g, weights, shape, config, layout)
        finally:
            if calibration is not None:
                calibration.close()
        if g.alternatives:
            g.use_alternatives()
            compact(out / "model.onnx.data", g.initializers)
        inputs, outputs = family.decoder_io(shape, dtype, layout)
        save_graph(g, inputs + g.lora_inputs, outputs, out / "model.onnx")
        if layout != ep:  # onnxruntime-genai feeds the position ids that the graph asks for
            path = out / "genai_config.json"
            genai = json.loads(path.read_text(encoding="utf-8"))
            genai["model"]["decoder"]["inputs"]["position_ids"] = "position_ids"
            path.write_text(json.dumps(genai, indent=4), encoding="utf-8")
        if lora_modules:
            lora.write_slots(g.lora_slots, lora_modules, work / "lora_slots.json")
        if family.write_more_graphs is not None:
            family.write_more_graphs(weights, shape, export, q, dtype, out)
    if export.wasm_graph == "int8":
        write_wasm_graph(weights, family, shape, config, q, out, log, layout)
    if calibration is not None:
        del g, calibration
        _give_back_memory()
    return out


def write_wasm_graph(
    weights: CheckpointTensors,
    family: Any,
    shape: Shape,
    config: dict[str, Any],
    q: QuantizeConfig,
    out: Path,
    log: Callable[[str], None],
    layout: str,
) -> None:
    """out/model-wasm.onnx (+ .data): the CPU graph (in the attention `layout` of model.onnx) with
    every MatMul as DynamicQuantizeMatMul on per-channel uint8 weights from the checkpoint's float
    weights (graphs/ops.py DYNAMIC_INT8), for onnxruntime-web's WASM backend. The checkpoint is read
    again, one tensor at a time."""
    with bar("wasm graph", weights.nbytes(family.tensors(weights, shape, config)[0]), "bytes of weights") as progress:
        weights.on_read = progress.advance
        with ExternalData(out / f"{WASM_GRAPH}.data") as data:
            g = GraphWriter(data, DYNAMIC_INT8, q)
            family.write_decoder(g, weights, shape, config, layout)
        inputs, outputs = family.decoder_io(shape, np.float32, layout)
        save_graph(g, inputs, outputs, out / WASM_GRAPH)
    mb = (out / f"{WASM_GRAPH}.data").stat().st_size / 1e6
    log(f"wasm graph: {WASM_GRAPH}, {mb:.1f} MB of per-channel int8 weights")


def _give_back_memory() -> None:
    """Return the calibration's freed memory to the system: its layers, X^T X and states are
    garbage now, but the C heap keeps freed blocks, and the build's later stages (the reference,
    the smoke test's child process) would stack on top of them. Measured with it: 1.15 GB resident
    after a 2-layer Phi-3.5-mini-width calibrated export whose peak was 4.40 GB."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
