"""The streamed export engine (`export.engine = "stream"`): the decoder graph that the
onnxruntime-genai builder writes for the CPU, CUDA and DirectML providers (Phi-3, Phi-3.5, Llama such
as SmolLM2; same ops, names and settings; toolkit/graphs/), but made one checkpoint tensor at a time: read,
quantized with the onnxruntime kernel the builder's default quantizer calls, appended to
model.onnx.data. Peak memory is set by the largest tensor, not by the number of layers.
genai_config.json and the tokenizer files come from the builder's own `config_only` mode, so they
match a builder export exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import phi3v
from .config import OWN_METHODS, ExportConfig, QuantizeConfig
from .errors import ConfigError, InputModelError
from .export import builder_call, create_model
from .graphs import moe as moe_graph
from .graphs.decoder import expected_tensors, graph_io, write_decoder
from .graphs.ops import MS, GraphWriter, Shape
from .progress import bar
from .quantize import builder_precision
from .source import SourceModel
from .tensors import CheckpointTensors, ExternalData

# Phi-3 checkpoints store q/k/v and gate/up fused; Llama ones separate. The builder packs Llama's
# q, k, v into one qkv_proj MatMul and splits Phi-3's gate_up, so both give the same graph.
ARCHITECTURES = ("Phi3ForCausalLM", "LlamaForCausalLM", "PhiMoEForCausalLM", "PhimoeForCausalLM", phi3v.ARCHITECTURE)
MOE = ("PhiMoEForCausalLM", "PhimoeForCausalLM")  # experts in QMoE: int4 or int8 only, CPU or CUDA
ROPE_KINDS = ("longrope", "none")
# The builder's CUDA graph at fp32 is another graph (Attention with RotaryEmbedding nodes).
PRECISIONS = {"cpu": ("int4", "int8", "fp32"), "cuda": ("int4", "int8", "fp16"), "dml": ("int4", "fp16")}
METHODS = ("default",)


def problems(src: SourceModel, export: ExportConfig, q: QuantizeConfig) -> list[str]:
    """What in a plan the streamed engine does not write for this checkpoint (empty when it can
    build it). slmkit's own int4 method quantizes a float32 export, which this engine writes."""
    precision = builder_precision(q, export.precision)
    tied = bool(src.config.get("tie_word_embeddings"))
    found = []
    if src.architecture not in ARCHITECTURES:
        found.append(f"architecture {src.architecture} (it writes {', '.join(ARCHITECTURES)})")
    if src.rope_scaling not in ROPE_KINDS:
        found.append(f"rope scaling '{src.rope_scaling}' (it writes {' or '.join(ROPE_KINDS)})")
    ep = export.execution_provider
    if ep not in PRECISIONS:
        found.append(f"execution provider '{ep}' (it writes {' and '.join(PRECISIONS)} graphs)")
    elif precision not in PRECISIONS[ep]:
        found.append(f"precision '{precision}' for {ep} (it writes {', '.join(PRECISIONS[ep])})")
    elif precision not in ("fp32", "fp16") and q.method not in METHODS:
        found.append(f"quantize.method '{q.method}' (it quantizes with {', '.join(METHODS)}, or "
                     f"writes the float32 export that slmkit's own {', '.join(OWN_METHODS)} methods quantize)")
    elif src.architecture == phi3v.ARCHITECTURE and q.method not in METHODS and export.precision not in ("fp32", "fp16"):
        found.append(f"quantize.method '{q.method}' for a vision model (its int4 decoder is quantized with "
                     f"{', '.join(METHODS)})")
    elif src.architecture in MOE and (ep not in ("cpu", "cuda") or precision not in ("int4", "int8")):
        found.append(f"{precision} {ep} graphs of a mixture of experts (its experts are written int4 or int8, "
                     "as onnxruntime's QMoE, for the cpu and cuda providers)")
    elif tied and precision not in ("fp32", "fp16") and (precision != "int4" or not q.symmetric or q.lm_head != "int4"):
        found.append("tied embeddings with int8 or asymmetric weights (it shares float32 or symmetric "
                     "int4 lm_head weights with the embedding)")
    return found


def check_supported(src: SourceModel, export: ExportConfig, q: QuantizeConfig) -> None:
    """Refuse, before anything is written, what the streamed engine does not write."""
    found = problems(src, export, q)
    if found:
        raise ConfigError("export.engine 'stream' cannot build " + "; ".join(found)
                          + ". Add --set export.engine=ort-genai to use the onnxruntime-genai builder.")


def write_config_files(source: Path, export: ExportConfig, out: Path, work: Path) -> None:
    """genai_config.json, tokenizer and chat template from the builder's config_only mode (it
    reads config.json and the tokenizer, no weights). That mode leaves past_present_share_buffer
    false; a full builder export sets it true (GroupQueryAttention shares the KV buffers), and so
    does this graph."""
    with builder_call(work / "export.log", work):
        create_model(source, out, export.precision, export.execution_provider,
                     ["config_only=true", "hf_remote=false", "hf_token=false"])
    path = out / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["search"]["past_present_share_buffer"] = True
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")  # as the builder writes it


def write_own_config(source: Path, config: dict[str, Any], export: ExportConfig, out: Path, model_type: str,
                     sections: dict[str, Any] | None = None) -> None:
    """genai_config.json and the tokenizer files where the builder cannot write them: PhiMoE
    ("phimoe": the builder cannot read transformers 5's PhiMoE) and Phi-3-vision ("phi3v": its
    config is remote code), as its config_only mode writes them for Phi-3.5. `sections` (vision,
    embedding) join the model section, and then the decoder reads `inputs_embeds`."""
    from .hf import load_tokenizer, quiet
    from .source import eos_ids

    quiet()
    shape = Shape.of(config)
    provider = {"cuda": [{"cuda": {"enable_cuda_graph": "0"}}],  # as the builder writes them
                "dml": [{"dml": {"enable_graph_capture": "1"}}]}.get(export.execution_provider, [])
    eos = eos_ids(source)
    first = {"inputs_embeds": "inputs_embeds"} if sections else {"input_ids": "input_ids"}
    if export.execution_provider == "dml":
        first["position_ids"] = "position_ids"
    genai = {
        "model": {
            "bos_token_id": config.get("bos_token_id", 1), "context_length": shape.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider},
                "filename": "model.onnx", "head_size": shape.head, "hidden_size": shape.hidden,
                "inputs": {**first, "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": shape.heads, "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
            },
            **(sections or {}),
            "eos_token_id": eos, "pad_token_id": config.get("pad_token_id") or eos[0],
            "type": model_type, "vocab_size": shape.vocab,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": shape.context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 50, "top_p": 1.0},
    }
    (out / "genai_config.json").write_text(json.dumps(genai, indent=4), encoding="utf-8")
    load_tokenizer(source).save_pretrained(out)


def save_graph(g: GraphWriter, inputs: list[Any], outputs: list[Any], path: Path, name: str = "main_graph") -> None:
    import onnx
    from onnx import helper

    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22), helper.make_opsetid(MS, 1)],
                              ir_version=10, producer_name="slmkit stream engine")
    onnx.save_model(model, str(path))


def export_stream(source: Path, weight_files: tuple[str, ...], config: dict[str, Any], export: ExportConfig,
                  q: QuantizeConfig, work: Path) -> Path:
    """Write model.onnx, model.onnx.data, genai_config.json and the tokenizer into work/export (and,
    for Phi-3-vision, vision.onnx and embedding.onnx with processor_config.json: toolkit/phi3v.py)."""
    shape = Shape.of(config)
    # The builder's GPU graphs compute in float16 (float32 only when that precision is asked for).
    dtype = np.float16 if export.execution_provider != "cpu" and export.precision != "fp32" else np.float32
    weights = CheckpointTensors(source, weight_files)
    moe, vision = "num_local_experts" in config, phi3v.is_phi3v(config)
    if vision:
        phi3v.share_embedding(weights)
    skipped: set[str] = set()
    if moe:
        expected = moe_graph.expected_tensors(shape, config["num_local_experts"], moe_graph.published(weights))
    else:
        expected = expected_tensors(shape, "model.layers.0.self_attn.qkv_proj.weight" in weights)
    if vision:
        used, skipped = phi3v.vision_tensors(weights)
        expected |= used
    unused = sorted(n for n in set(weights.entries) - expected - skipped
                    if not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise InputModelError(
            f"The checkpoint has tensors the graphs do not use ({', '.join(unused[:4])}"
            f"{', ...' if len(unused) > 4 else ''}): the streamed engine would drop them. "
            "Use --set export.engine=ort-genai.")
    out = work / "export"
    out.mkdir(parents=True)
    if moe:
        write_own_config(source, config, export, out, "phimoe")
    elif vision:
        phi3v.write_configs(source, config, export, out)
    else:
        write_config_files(source, export, out, work)
    with bar("export", weights.nbytes(expected), "bytes of weights") as progress:
        weights.on_read = progress.advance
        with ExternalData(out / "model.onnx.data") as data:
            g = GraphWriter(data, export.precision, q, dtype)
            if moe:
                moe_graph.write_moe_decoder(g, weights, shape, config)
            else:
                write_decoder(g, weights, shape, config, export.execution_provider, embeds=vision)
        save_graph(g, *graph_io(shape, dtype, export.execution_provider, embeds=vision), out / "model.onnx")
        if vision:
            phi3v.write_graphs(weights, shape, export, q, dtype, out)
    return out
