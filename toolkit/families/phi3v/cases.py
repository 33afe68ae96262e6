"""Golden image cases of a phi3v bundle: the bundle's test picture (tests/image.png) asked about
through the chat template, the PyTorch reference's greedy continuation as the expected tokens.

The pixels come from the runtime's own image processor (onnxruntime-genai's MultiModalProcessor,
run on the bundle in a child process: the HD resize, padding and crops are its own), so the
reference and the bundle see the same pixel_values and the same prompt ids (an image's tokens are
negative ids); the reference then runs transformers' CLIP + the HD layout (reference.py) and the
text model on the embeddings, one decoder layer in memory at a time.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StageError
from ...plan.config import VerifyConfig
from ...progress import bar, waiting

IMAGE = "image.png"
TAG = "<|image_1|>\n"

_PROCESS = """
import sys, numpy as np, onnxruntime_genai as og
model_dir, image, out, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
config = og.Config(model_dir)
config.clear_providers()  # the CPU: a GPU bundle's processor is the same
processor = og.Model(config).create_multimodal_processor()
arrays = {}
for i, prompt in enumerate(prompts):
    inputs = processor(prompt, images=og.Images.open(image))
    for key in ("input_ids", "pixel_values", "image_sizes"):
        arrays[f"{key}_{i}"] = inputs[key].as_numpy()
np.savez(out, **arrays)
"""


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB PNG of an [height, width, 3] uint8 array (zlib and struct only: no imaging library)."""
    import struct
    import zlib

    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb[y].astype(np.uint8).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    )
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


def processor_inputs(model_dir: Path, image: Path, prompts: list[str]) -> list[dict[str, np.ndarray]]:
    """The runtime processor's input_ids, pixel_values and image_sizes for each prompt with the image."""
    with tempfile.TemporaryDirectory() as tmp, waiting("the runtime's image processor (child process)"):
        out = Path(tmp) / "inputs.npz"
        proc = subprocess.run(
            [sys.executable, "-c", _PROCESS, str(model_dir), str(image), str(out), *prompts],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise StageError(
                "verify",
                f"the bundle's image processor failed:\n{(proc.stdout + proc.stderr).strip()}",
                model_dir.parent,
            )
        data = np.load(out)
        return [
            {k: data[f"{k}_{i}"] for k in ("input_ids", "pixel_values", "image_sizes")} for i in range(len(prompts))
        ]


def image_cases(
    bundle: Path,
    source: Path,
    weight_files: tuple[str, ...],
    model: Any,
    passes: Any,
    cfg: VerifyConfig,
    eos: list[int],
    wrap: Callable[[str], str] | None,
) -> list[dict[str, Any]]:
    """Write tests/image.png into the bundle and return its golden cases: each image prompt, through
    `wrap` (the chat template's single turn; None without one), answered by the layer-by-layer
    reference `model` fed the reference's image features (`passes` counts its layer passes)."""
    import torch

    from .reference import VisionReference, embed

    if not cfg.image_prompts:
        return []
    image = golden_image(bundle / "tests" / IMAGE)
    prompts = [wrap(TAG + p) if wrap else TAG + p for p in cfg.image_prompts]
    inputs = processor_inputs(bundle / "model", image, prompts)
    vision = VisionReference(source, weight_files)
    cases = []
    total = model.config.num_hidden_layers * cfg.new_tokens * len(prompts)
    with torch.no_grad(), bar(f"reference ({len(prompts)} image prompts)", total, "layer passes") as passes.bar:
        for prompt, given in zip(prompts, inputs, strict=True):
            ids = [int(t) for t in given["input_ids"][0]]
            embeds = embed(model, ids, vision.features(given["pixel_values"], given["image_sizes"]))
            out = model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=cfg.new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0] if eos else 0,
            )
            cont = [int(t) for t in out[0]]
            stop = next((i for i, t in enumerate(cont) if t in eos), len(cont) - 1)
            cases.append(
                {
                    "prompt": prompt,
                    "chat": wrap is not None,
                    "image": IMAGE,
                    "prompt_ids": ids,
                    "image_tokens": int(sum(t < 0 for t in ids)),
                    "expected_ids": cont[: stop + 1],
                }
            )
    return cases
