"""Phi-3-vision / Phi-3.5-vision (`phi3_v`, Phi3VForCausalLM) bundles: the three graphs the
onnxruntime-genai `phi3v` model runs, written from the checkpoint's weights (its own Python, which
transformers does not ship, is never imported):

  vision.onnx     pixel_values + image_sizes -> image_features   (vision.py)
  embedding.onnx  input_ids + image_features -> inputs_embeds    (embedding.py)
  model.onnx      the Phi-3 decoder from inputs_embeds            (../decoder/graph.py)

with genai_config.json (type "phi3v") and processor_config.json (the runtime's Phi3ImageTransform:
up to 16 crops of 336 pixels and the global image, CLIP mean and std). Its reference is
transformers' CLIPVisionModel with the HD layout (reference.py) before the Phi-3 text model, and
its bundles carry a golden image case (cases.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, InputModelError
from ...graphs.external import ExternalData
from ...graphs.ops import FLOAT, GraphWriter, Shape, save_graph
from ...plan.config import BuildPlan, ExportConfig, QuantizeConfig
from ...source.checkpoint import read_config
from ...source.tensors import CheckpointTensors
from ..decoder.graph import expected_tensors as decoder_tensors
from ..decoder.graph import graph_io, hf_rows, write_decoder
from ..family import Family
from ..genai_config import write_genai_config
from .cases import image_cases
from .embedding import embedding_io, write_embedding
from .vision import CROP, Tower, expected_tensors, image_tokens, vision_io, write_vision

ARCHITECTURE = "Phi3VForCausalLM"
MAX_IMAGE_TOKENS = image_tokens(4 * CROP, 4 * CROP)  # 16 crops: 2509
MIN_CONTEXT = MAX_IMAGE_TOKENS + 512  # one image at most crops, and a conversation about it
PROCESSOR = {
    "processor": {
        "name": "image_processing",
        "transforms": [
            {
                "operation": {
                    "name": "decode_image",
                    "domain": "com.microsoft.extensions",
                    "type": "DecodeImage",
                    "attrs": {"color_space": "BGR"},
                }
            },
            {"operation": {"name": "convert_to_rgb", "domain": "com.microsoft.extensions", "type": "ConvertRGB"}},
            # onnxruntime-extensions' Phi3ImageTransform always cuts up to 16 crops (its attributes are not
            # read): the value written says what it does.
            {
                "operation": {
                    "name": "phi3_image_transform",
                    "domain": "com.microsoft.extensions",
                    "type": "Phi3ImageTransform",
                    "attrs": {"num_crops": 16, "num_img_tokens": 144},
                }
            },
        ],
    }
}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Phi-3 text model's config.json inside a phi3_v one (what transformers' Phi3 classes read)."""
    # Also without private keys: Phi-3.5-vision's names "_attn_implementation": "flash_attention_2".
    text = {
        k: v
        for k, v in config.items()
        if k not in ("img_processor", "embd_layer", "auto_map") and not k.startswith("_")
    }
    text.update(architectures=["Phi3ForCausalLM"], model_type="phi3")
    return text


def share_embedding(weights: CheckpointTensors) -> None:
    """The token table is one module in Phi-3-vision (`model.embed_tokens` is also
    `model.vision_embed_tokens.wte`): checkpoints keep it under either name, or both."""
    weights.alias("model.embed_tokens.weight", "model.vision_embed_tokens.wte.weight")


def vision_tensors(weights: CheckpointTensors) -> tuple[set[str], set[str]]:
    """(tensors the vision graph reads, tensors it leaves out on purpose), refusing a tower the
    runtime's image processor cannot feed."""
    tower = Tower.of(weights)
    if tower.side != 24 or tower.patch * tower.side != 336:
        raise InputModelError(
            f"The vision tower takes {tower.side}x{tower.side} patches of {tower.patch} pixels; onnxruntime-genai's "
            "phi3v image processor cuts 336-pixel crops for a patch-14 CLIP (24x24 patches, 144 tokens a crop)."
        )
    return expected_tensors(tower)


def write_configs(source: Path, config: dict[str, Any], export: ExportConfig, out: Path) -> None:
    sections = {
        "embedding": {
            "filename": "embedding.onnx",
            "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
            "outputs": {"inputs_embeds": "inputs_embeds"},
        },
        "vision": {
            "filename": "vision.onnx",
            "inputs": {"pixel_values": "pixel_values", "image_sizes": "image_sizes"},
            "outputs": {"image_features": "image_features"},
        },
    }
    write_genai_config(source, config, export, out, "phi3v", sections, hf_config)
    (out / "processor_config.json").write_text(json.dumps(PROCESSOR, indent=2) + "\n", encoding="utf-8")


def write_graphs(
    weights: CheckpointTensors, shape: Shape, export: ExportConfig, q: QuantizeConfig, dtype: type, out: Path
) -> None:
    """vision.onnx and embedding.onnx (each with its .data). The vision graph computes in float32 on
    every target (the CPU provider has no float16 Conv and MultiHeadAttention kernels, and a GPU
    bundle is also checked there), its linear weights in export.vision_precision (MatMulNBits with
    the plan's block size and accuracy level when int8 or int4); the embedding table is in the
    decoder's float type."""
    tower = Tower.of(weights)
    with ExternalData(out / "vision.onnx.data") as data:
        g = GraphWriter(data, export.vision_precision, q, np.float32)
        write_vision(g, weights, tower)
    save_graph(g, *vision_io(FLOAT, shape.hidden), out / "vision.onnx", "vision")
    with ExternalData(out / "embedding.onnx.data") as data:
        g = GraphWriter(data, "int4" if export.embedding_precision == "int4" else "fp32", q, dtype)
        write_embedding(g, weights, shape.hidden)
    save_graph(g, *embedding_io(g.elem, shape.hidden), out / "embedding.onnx", "embedding")


def hf_config(source: Path) -> Any:
    """transformers' Phi-3 config of the text model (phi3_v has no transformers class)."""
    from transformers import Phi3Config

    return Phi3Config.from_dict(text_config(read_config(source)))


def _tensors(weights: CheckpointTensors, shape: Shape, _config: dict[str, Any]) -> tuple[set[str], set[str]]:
    used, skipped = vision_tensors(weights)
    return decoder_tensors(shape, "model.layers.0.self_attn.qkv_proj.weight" in weights) | used, skipped


def check_plan(_src: Any, plan: BuildPlan) -> None:
    if plan.optimize.context_cap < MIN_CONTEXT:
        raise ConfigError(
            f"optimize.context_cap = {plan.optimize.context_cap} cannot hold one image: the runtime cuts a picture "
            f"into up to 16 crops, {MAX_IMAGE_TOKENS} tokens. Use --set optimize.context_cap={MIN_CONTEXT} "
            "or more (each further image takes up to as many again)."
        )
    if plan.export.engine != "stream":
        raise ConfigError(
            f"export.engine 'ort-genai' cannot build {ARCHITECTURE}: the builder writes its text "
            "decoder only and reads its config through the checkpoint's own code. Use "
            "--set export.engine=stream (the recipes' default), which writes all three graphs."
        )


def refuse_target(src: Any, target: str | None) -> None:
    if target == "snapdragon":
        raise ConfigError(
            f"{src.architecture} is not built for snapdragon: slmkit writes the Hexagon NPU's static graphs for text "
            "decoders, and its image encoder (a CLIP tower over up to 16 crops a picture, a data-dependent number of "
            "image tokens) has no static graph there yet. Build it with --target android (the phone's CPU)."
        )
    if target == "web":
        raise ConfigError(
            f"{src.architecture} is not built for web: its three graphs need the runtime's image processor "
            "(crops, resize, normalise, the image tokens), which onnxruntime-genai has and the web runner, "
            "a text generation loop in JS, does not. Build it with --target cpu, or the text-only model "
            "(Phi-3.5-mini) for web."
        )


FAMILY = Family(
    name="phi3v",
    architectures={ARCHITECTURE: ("phi3_v", "Phi-3.5-vision, Phi-3-vision-128k")},
    tensors=_tensors,
    write_decoder=lambda g, weights, shape, config, provider: write_decoder(
        g, weights, shape, config, provider, embeds=True
    ),
    decoder_io=lambda shape, dtype, provider: graph_io(shape, dtype, provider, embeds=True),
    write_configs=write_configs,
    write_more_graphs=write_graphs,
    check_plan=check_plan,
    refuse_target=refuse_target,
    hf_rows=hf_rows,
    hf_config=hf_config,
    prepare_weights=share_embedding,
    extra_cases=image_cases,
)
