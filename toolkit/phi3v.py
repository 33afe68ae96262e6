"""Phi-3-vision / Phi-3.5-vision (`phi3_v`, Phi3VForCausalLM) bundles: the three graphs the
onnxruntime-genai `phi3v` model runs, written from the checkpoint's weights (its own Python, which
transformers does not ship, is never imported):

  vision.onnx     pixel_values + image_sizes -> image_features   (toolkit/graphs/vision.py)
  embedding.onnx  input_ids + image_features -> inputs_embeds    (toolkit/graphs/embedding.py)
  model.onnx      the Phi-3 decoder from inputs_embeds            (toolkit/graphs/decoder.py)

with genai_config.json (type "phi3v") and processor_config.json (the runtime's Phi3ImageTransform:
up to 16 crops of 336 pixels and the global image, CLIP mean and std).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExportConfig, QuantizeConfig
from .errors import InputModelError
from .graphs.embedding import embedding_io, write_embedding
from .graphs.ops import FLOAT, GraphWriter, Shape
from .graphs.vision import CROP, Tower, expected_tensors, image_tokens, vision_io, write_vision
from .tensors import CheckpointTensors, ExternalData

ARCHITECTURE = "Phi3VForCausalLM"
MAX_IMAGE_TOKENS = image_tokens(4 * CROP, 4 * CROP)  # 16 crops: 2509
MIN_CONTEXT = MAX_IMAGE_TOKENS + 512  # one image at most crops, and a conversation about it
PROCESSOR = {"processor": {"name": "image_processing", "transforms": [
    {"operation": {"name": "decode_image", "domain": "com.microsoft.extensions", "type": "DecodeImage",
                   "attrs": {"color_space": "BGR"}}},
    {"operation": {"name": "convert_to_rgb", "domain": "com.microsoft.extensions", "type": "ConvertRGB"}},
    # onnxruntime-extensions' Phi3ImageTransform always cuts up to 16 crops (its attributes are not
    # read): the value written says what it does.
    {"operation": {"name": "phi3_image_transform", "domain": "com.microsoft.extensions", "type": "Phi3ImageTransform",
                   "attrs": {"num_crops": 16, "num_img_tokens": 144}}},
]}}


def is_phi3v(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "phi3_v"


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Phi-3 text model's config.json inside a phi3_v one (what transformers' Phi3 classes read)."""
    # Also without private keys: Phi-3.5-vision's names "_attn_implementation": "flash_attention_2".
    text = {k: v for k, v in config.items() if k not in ("img_processor", "embd_layer", "auto_map")
            and not k.startswith("_")}
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
            "phi3v image processor cuts 336-pixel crops for a patch-14 CLIP (24x24 patches, 144 tokens a crop).")
    return expected_tensors(tower)


def write_configs(source: Path, config: dict[str, Any], export: ExportConfig, out: Path) -> None:
    from .stream import write_own_config

    sections = {
        "embedding": {"filename": "embedding.onnx", "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                      "outputs": {"inputs_embeds": "inputs_embeds"}},
        "vision": {"filename": "vision.onnx", "inputs": {"pixel_values": "pixel_values", "image_sizes": "image_sizes"},
                   "outputs": {"image_features": "image_features"}},
    }
    write_own_config(source, config, export, out, "phi3v", sections)
    (out / "processor_config.json").write_text(json.dumps(PROCESSOR, indent=2) + "\n", encoding="utf-8")


def write_graphs(weights: CheckpointTensors, shape: Shape, export: ExportConfig, q: QuantizeConfig, dtype: type,
                 out: Path) -> None:
    """vision.onnx and embedding.onnx (each with its .data). The vision graph computes in float32 on
    every target (the CPU provider has no float16 Conv and MultiHeadAttention kernels, and a GPU
    bundle is also checked there), its linear weights in export.vision_precision (MatMulNBits with
    the plan's block size and accuracy level when int8 or int4); the embedding table is in the
    decoder's float type."""
    from .stream import save_graph

    tower = Tower.of(weights)
    with ExternalData(out / "vision.onnx.data") as data:
        g = GraphWriter(data, export.vision_precision, q, np.float32)
        write_vision(g, weights, tower)
    save_graph(g, *vision_io(FLOAT, shape.hidden), out / "vision.onnx", "vision")
    with ExternalData(out / "embedding.onnx.data") as data:
        g = GraphWriter(data, "int4" if export.embedding_precision == "int4" else "fp32", q, dtype)
        write_embedding(g, weights, shape.hidden)
    save_graph(g, *embedding_io(g.elem, shape.hidden), out / "embedding.onnx", "embedding")


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB PNG of an [height, width, 3] uint8 array (zlib and struct only: no imaging library)."""
    import struct
    import zlib

    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                     + chunk(b"IEND", b""))
    return path


def golden_image(path: Path, width: int = 200, height: int = 120) -> Path:
    """The deterministic picture a phi3v bundle's golden cases ask about: a sky-to-grass gradient,
    a red sun and a blue house (landscape: 3 x 5 crops of 336 pixels after the HD resize, 2353 tokens)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    sky = y < height * 0.6
    rgb[sky] = np.stack([120 + 0 * y, 170 + 60 * y / height, 255 + 0 * y], -1)[sky]
    rgb[~sky] = np.stack([40 + 0 * y, 150 - 40 * y / height, 50 + 0 * y], -1)[~sky]
    sun = (x - width * 0.8) ** 2 + (y - height * 0.2) ** 2 < (height * 0.12) ** 2
    rgb[sun] = (230, 40, 30)
    house = (abs(x - width * 0.3) < width * 0.12) & (abs(y - height * 0.6) < height * 0.15)
    rgb[house] = (30, 60, 200)
    return write_png(path, np.clip(rgb, 0, 255).astype(np.uint8))
