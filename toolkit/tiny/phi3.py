"""Tiny Phi-3 / Phi-3.5-shaped checkpoints made locally in seconds, for `slmkit demo` and the tests,
a real-shaped random Phi-3.5-mini for the benchmarks, and a tiny SmolLM2-shaped Llama.

The layout mirrors the real Hugging Face folders (config.json with the old-style `rope_scaling`
block, generation_config.json with Phi-3.5's three EOS ids, a Llama-style byte-fallback BPE
tokenizer with Phi-3's special tokens, bf16 safetensors). The weights are trained for a few
seconds on a short embedded text, so greedy outputs are confident and readable, which makes
int4-vs-reference checks meaningful (a purely random model flips its argmax at any noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import PHI3_SPECIALS, fresh_folder, make_tokenizer, train, write_random_safetensors

VARIANTS = ("phi-3.5", "phi-3-4k", "phi-4-mini")


def _config(variant: str, n_tokens: int, layers: int) -> dict[str, Any]:
    hidden, heads = (128, 2) if variant == "phi-4-mini" else (64, 4)
    head_dim = hidden // heads
    base = n_tokens - len(PHI3_SPECIALS)
    cfg: dict[str, Any] = {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": base,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 4096,
        "model_type": "phi3",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "original_max_position_embeddings": 4096,
        "pad_token_id": base,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.3",
        "use_cache": True,
        "vocab_size": 640,
    }
    rotary = head_dim
    if variant == "phi-4-mini":
        # Phi-4-mini-instruct's layout at a tiny size: heads of 64 (its are 128) of which 0.75 turn,
        # grouped key/values, tied embeddings, <|end|> as config.json's EOS.
        rotary = 48
        cfg |= {
            "partial_rotary_factor": 0.75,
            "num_key_value_heads": 1,
            "tie_word_embeddings": True,
            "eos_token_id": base + 7,
        }
    if variant in ("phi-3.5", "phi-4-mini"):
        # Same shape of factors as the real config.json (rotated dims / 2 numbers each).
        cfg["max_position_embeddings"] = 131072
        cfg["sliding_window"] = 262144
        cfg["rope_scaling"] = {
            "type": "longrope",
            "short_factor": [round(1.0 + 0.02 * i, 4) for i in range(rotary // 2)],
            "long_factor": [round(1.0 + 1.5 * i, 4) for i in range(rotary // 2)],
        }
    return cfg


def make_tiny_model(out: Path, variant: str = "phi-3.5", layers: int = 2, steps: int = 600, seed: int = 0) -> Path:
    """Write a tiny trained checkpoint folder at `out` (replaced if present) and return it."""
    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n_tokens = make_tokenizer(fresh_folder(out))
    cfg = _config(variant, n_tokens, layers)
    base = cfg["pad_token_id"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    # Phi-3.5 stops on <|end|>, <|assistant|> and <|endoftext|>; Phi-4-mini on <|end|> and <|endoftext|>.
    stops = [base + 7, base] if variant == "phi-4-mini" else [base + 7, base + 1, base]
    generation = {"bos_token_id": 1, "eos_token_id": stops, "pad_token_id": base}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))

    torch.manual_seed(seed)
    model = train(Phi3ForCausalLM(Phi3Config.from_pretrained(out)), AutoTokenizer.from_pretrained(out), steps)
    model.to(torch.bfloat16).save_pretrained(out)
    # save_pretrained rewrites config.json in transformers' newest layout; keep the real one.
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def make_random_phi3(
    out: Path,
    layers: int,
    hidden: int = 3072,
    heads: int = 32,
    intermediate: int = 8192,
    vocab: int = 32064,
    seed: int = 0,
    kv_heads: int | None = None,
    partial_rotary: float = 1.0,
    tied: bool = False,
) -> int:
    """A Phi-3.5-shaped folder (longrope, 131072 context) with random bf16 weights, written one
    tensor at a time so that even the 3.8 B size never sits in memory. The defaults are
    Phi-3.5-mini's dimensions (make_random_phi4: Phi-4-mini's). Returns the parameter count."""
    out.mkdir(parents=True)
    n_tokens = make_tokenizer(out)
    cfg = _config("phi-3.5", n_tokens, layers)
    head = hidden // heads
    kv_heads = kv_heads or heads
    half = int(head * partial_rotary) // 2
    cfg.update(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )
    if partial_rotary != 1.0:
        cfg["partial_rotary_factor"] = partial_rotary
    cfg["rope_scaling"].update(
        short_factor=[round(1.0 + 0.01 * i, 4) for i in range(half)],
        long_factor=[round(1.0 + 1.25 * i, 4) for i in range(half)],
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (hidden,),
                f"{p}.post_attention_layernorm.weight": (hidden,),
                f"{p}.self_attn.qkv_proj.weight": ((heads + 2 * kv_heads) * head, hidden),
                f"{p}.self_attn.o_proj.weight": (hidden, hidden),
                f"{p}.mlp.gate_up_proj.weight": (2 * intermediate, hidden),
                f"{p}.mlp.down_proj.weight": (hidden, intermediate),
            }
        )
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return write_random_safetensors(out / "model.safetensors", shapes, seed)


def make_random_phi4(out: Path, layers: int, seed: int = 0) -> int:
    """Phi-4-mini-instruct's published shape with random bf16 weights: hidden 3072, 24 query and 8
    key/value heads of 128 (96 dims turn: partial rotary 0.75), MLP 8192, a tied 200064-token
    table; 32 layers is the real 3.84 B."""
    return make_random_phi3(out, layers, heads=24, vocab=200064, seed=seed, kv_heads=8, partial_rotary=0.75, tied=True)


def make_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama checkpoint shaped like SmolLM2 (grouped-query attention, tied embeddings,
    separate q/k/v and gate/up weights, rope_parameters without scaling), random fp32 weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..source.hf import quiet

    out.mkdir(parents=True)
    quiet()
    n_tokens = make_tokenizer(out)
    config = LlamaConfig(
        vocab_size=n_tokens,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=n_tokens - len(PHI3_SPECIALS),
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
