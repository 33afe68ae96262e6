"""Tiny Phi-3.5-vision-shaped checkpoints (`phi3_v`, Phi3VForCausalLM), made locally in seconds.

The layout is Phi-3.5-vision-instruct's: config.json with `img_processor` and `embd_layer`, a CLIP
vision tower under `model.vision_embed_tokens.img_processor.vision_model.*` (patch 14 on 336-pixel
crops, as the runtime's image processor cuts them; 24x24 patches), the separators `glb_GN` and
`sub_GN`, `img_projection.0` / `.2`, and the Phi-3.5 text decoder. The text decoder is trained for
a few seconds like toolkit/tiny/phi3.py's; the tower and projection stay random, scaled so that image
features are of the size of token embeddings (they then move the logits without drowning the text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..families.phi3v.vision import PREFIX, TOWER
from .phi3 import make_tiny_model


def vision_config(text: dict[str, Any], tower_hidden: int) -> dict[str, Any]:
    """A phi3_v config.json from a Phi-3 text config and the tower's width, with the keys and values
    of Phi-3.5-vision-instruct's, its flash-attention request included (no auto_map: slmkit never
    imports a checkpoint's code)."""
    cfg = dict(text)
    cfg.update(architectures=["Phi3VForCausalLM"], model_type="phi3_v", _attn_implementation="flash_attention_2")
    cfg["img_processor"] = {
        "image_dim_out": tower_hidden,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 144,
    }
    cfg["embd_layer"] = {
        "embedding_cls": "image",
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
        "use_hd_transform": True,
        "with_learnable_separator": True,
    }
    return cfg


def make_tiny_phi3v(
    out: Path,
    layers: int = 2,
    tower_layers: int = 3,
    tower_hidden: int = 64,
    steps: int = 600,
    seed: int = 0,
    table: str = "embed_tokens",
) -> Path:
    """Write a tiny phi3_v checkpoint folder at `out` (replaced if present) and return it. The
    token table is kept as `model.embed_tokens` ("embed_tokens"), as `model.vision_embed_tokens.wte`
    ("wte") or under both names ("both"): published checkpoints differ."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    make_tiny_model(out, "phi-3.5", layers, steps, seed)
    text = json.loads((out / "config.json").read_text())
    hidden = text["hidden_size"]
    state = load_file(str(out / "model.safetensors"))
    torch.manual_seed(seed + 1)
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=tower_hidden,
            intermediate_size=2 * tower_hidden,
            num_hidden_layers=tower_layers,
            num_attention_heads=max(1, tower_hidden // 64),
            image_size=336,
            patch_size=14,
        )
    )
    for name, value in tower.state_dict().items():  # transformers 5 names them without "vision_model."
        state[TOWER + name.removeprefix("vision_model.")] = value
    merged = 4 * tower_hidden  # 2x2 patches side by side
    embed_std = float(state["model.embed_tokens.weight"].float().std())
    g = torch.Generator().manual_seed(seed + 2)
    state[PREFIX + "glb_GN"] = embed_std * torch.randn(1, 1, merged, generator=g)
    state[PREFIX + "sub_GN"] = embed_std * torch.randn(1, 1, 1, merged, generator=g)
    state[PREFIX + "img_projection.0.weight"] = torch.randn(hidden, merged, generator=g) / merged**0.5
    state[PREFIX + "img_projection.0.bias"] = 0.02 * torch.randn(hidden, generator=g)
    state[PREFIX + "img_projection.2.weight"] = embed_std * torch.randn(hidden, hidden, generator=g) / 0.4
    state[PREFIX + "img_projection.2.bias"] = 0.02 * torch.randn(hidden, generator=g)
    if table != "embed_tokens":
        state[PREFIX + "wte.weight"] = state["model.embed_tokens.weight"].clone()
        if table == "wte":
            del state["model.embed_tokens.weight"]
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(vision_config(text, tower_hidden), indent=2))
    # Phi-3.5-vision-instruct's preprocessor_config.json (its own image processor class is remote code:
    # slmkit reads only num_crops from it).
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
                "do_convert_rgb": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "Phi3VImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "num_crops": 4,
                "num_img_tokens": 144,
                "processor_class": "Phi3VProcessor",
            },
            indent=2,
        )
    )
    return out


def make_random_phi3v(out: Path, layers: int, tower_layers: int = 24, seed: int = 0) -> int:
    """A Phi-3.5-vision-shaped folder with random bf16 weights, written one tensor at a time: the
    Phi-3.5-mini-shaped text part of toolkit/tiny/phi3.py's make_random_phi3 and a CLIP ViT-L/14-336 tower
    (hidden 1024, MLP 4096, 577 positions) with the HD separators and projection (4096 -> 3072 -> 3072).
    The defaults are Phi-3.5-vision-instruct's dimensions (4.15 B parameters). Returns the count."""
    from .common import write_random_safetensors
    from .phi3 import make_random_phi3

    text = make_random_phi3(out, layers, seed=seed)
    cfg = json.loads((out / "config.json").read_text())
    tower, hidden = 1024, cfg["hidden_size"]
    shapes: dict[str, tuple[int, ...]] = {
        TOWER + "embeddings.class_embedding": (tower,),
        TOWER + "embeddings.patch_embedding.weight": (tower, 3, 14, 14),
        TOWER + "embeddings.position_embedding.weight": (577, tower),
        TOWER + "pre_layrnorm.weight": (tower,),
        TOWER + "pre_layrnorm.bias": (tower,),
        TOWER + "post_layernorm.weight": (tower,),
        TOWER + "post_layernorm.bias": (tower,),
    }
    for i in range(tower_layers):
        p = f"{TOWER}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({p + norm + ".weight": (tower,), p + norm + ".bias": (tower,)})
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({p + f"self_attn.{proj}.weight": (tower, tower), p + f"self_attn.{proj}.bias": (tower,)})
        shapes.update(
            {
                p + "mlp.fc1.weight": (4 * tower, tower),
                p + "mlp.fc1.bias": (4 * tower,),
                p + "mlp.fc2.weight": (tower, 4 * tower),
                p + "mlp.fc2.bias": (tower,),
            }
        )
    shapes.update(
        {
            PREFIX + "glb_GN": (1, 1, 4 * tower),
            PREFIX + "sub_GN": (1, 1, 1, 4 * tower),
            PREFIX + "img_projection.0.weight": (hidden, 4 * tower),
            PREFIX + "img_projection.0.bias": (hidden,),
            PREFIX + "img_projection.2.weight": (hidden, hidden),
            PREFIX + "img_projection.2.bias": (hidden,),
        }
    )
    vision = write_random_safetensors(out / "model-vision.safetensors", shapes, seed + 1)
    (out / "config.json").write_text(json.dumps(vision_config(cfg, tower), indent=2))
    return text + vision
