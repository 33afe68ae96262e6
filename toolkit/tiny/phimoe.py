"""Tiny Phi-3.5-MoE-shaped checkpoints (PhiMoE: LayerNorm, attention and lm_head biases, longrope,
sparse-mixer top-2 routing over a few experts), trained for a few seconds like toolkit/tiny/phi3.py's,
in either checkpoint layout:

- "published": microsoft/Phi-3.5-MoE-instruct's (`block_sparse_moe.gate`, `block_sparse_moe.experts.N.w1/w2/w3`),
  which transformers' save_pretrained also writes;
- "fused": the layout of transformers 5's modules (`mlp.router`, `mlp.experts.gate_up_proj` [E, 2I, H],
  `mlp.experts.down_proj` [E, H, I]), as a checkpoint re-saved from a state dict has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import PHI3_SPECIALS, fresh_folder, make_tokenizer, train

LAYOUTS = ("published", "fused")


def phimoe_config(
    n_tokens: int,
    layers: int = 2,
    experts: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
) -> dict[str, Any]:
    """config.json as Phi-3.5-MoE-instruct's, at a tiny size."""
    half = hidden // heads // 2
    base = n_tokens - len(PHI3_SPECIALS)
    return {
        "architectures": ["PhiMoEForCausalLM"],
        "model_type": "phimoe",
        "attention_bias": True,
        "lm_head_bias": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": base,
        "pad_token_id": base,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "initializer_range": 0.02,
        "input_jitter_noise": 0.01,
        "router_jitter_noise": 0.01,
        "router_aux_loss_coef": 0.0,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "num_local_experts": experts,
        "num_experts_per_tok": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 131072,
        "rope_scaling": {
            "type": "longrope",
            "original_max_position_embeddings": 4096,
            "short_factor": [round(1.0 + 0.02 * i, 4) for i in range(half)],
            "long_factor": [round(1.0 + 1.5 * i, 4) for i in range(half)],
            "short_mscale": 1.243163121016122,
            "long_mscale": 1.243163121016122,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.3",
        "use_cache": True,
        "vocab_size": 640,
    }


def make_tiny_phimoe(
    out: Path, layout: str = "published", layers: int = 2, experts: int = 4, steps: int = 300, seed: int = 0
) -> Path:
    """Write a tiny trained PhiMoE checkpoint folder at `out` (replaced if present) and return it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, PhimoeConfig, PhimoeForCausalLM

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    cfg = phimoe_config(make_tokenizer(fresh_folder(out)), layers, experts)
    base = cfg["eos_token_id"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    generation = {"bos_token_id": 1, "eos_token_id": [base + 7, base + 1, base], "pad_token_id": base}

    torch.manual_seed(seed)
    model = train(PhimoeForCausalLM(PhimoeConfig.from_pretrained(out)), AutoTokenizer.from_pretrained(out), steps)
    model = model.to(torch.bfloat16)
    if layout == "published":
        model.save_pretrained(out)  # transformers writes the published names back
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        cfg["architectures"] = ["PhimoeForCausalLM"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def make_random_phimoe(
    out: Path,
    layers: int,
    hidden: int = 4096,
    heads: int = 32,
    kv_heads: int = 8,
    intermediate: int = 6400,
    experts: int = 16,
    vocab: int = 32064,
    seed: int = 0,
) -> int:
    """A Phi-3.5-MoE-shaped folder (published layout, longrope, biases) with random bf16 weights,
    written one tensor at a time; the defaults are Phi-3.5-MoE-instruct's dimensions (about 1.3 B
    parameters a layer). Returns the parameter count."""
    from .common import write_random_safetensors

    out.mkdir(parents=True)
    cfg = phimoe_config(make_tokenizer(out), layers, experts, hidden, heads, kv_heads, intermediate)
    half = hidden // heads // 2
    cfg["vocab_size"] = vocab
    cfg["rope_scaling"].update(
        short_factor=[round(1.0 + 0.01 * i, 4) for i in range(half)],
        long_factor=[round(1.0 + 1.25 * i, 4) for i in range(half)],
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    head, shapes = hidden // heads, {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes.update({f"{p}.{norm}.weight": (hidden,), f"{p}.{norm}.bias": (hidden,)})
        for proj, rows in (("q", heads * head), ("k", kv_heads * head), ("v", kv_heads * head), ("o", hidden)):
            cols = heads * head if proj == "o" else hidden
            shapes.update(
                {f"{p}.self_attn.{proj}_proj.weight": (rows, cols), f"{p}.self_attn.{proj}_proj.bias": (rows,)}
            )
        shapes[f"{p}.block_sparse_moe.gate.weight"] = (experts, hidden)
        for e in range(experts):
            moe = f"{p}.block_sparse_moe.experts.{e}"
            shapes.update(
                {
                    f"{moe}.w1.weight": (intermediate, hidden),
                    f"{moe}.w3.weight": (intermediate, hidden),
                    f"{moe}.w2.weight": (hidden, intermediate),
                }
            )
    shapes.update(
        {
            "model.norm.weight": (hidden,),
            "model.norm.bias": (hidden,),
            "lm_head.weight": (vocab, hidden),
            "lm_head.bias": (vocab,),
        }
    )
    return write_random_safetensors(out / "model.safetensors", shapes, seed)
