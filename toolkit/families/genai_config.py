"""genai_config.json and the tokenizer files, written by slmkit for the families whose config the
builder's config_only mode cannot read, in the layout that mode writes for Phi-3.5."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..graphs.ops import Shape
from ..plan.config import ExportConfig
from ..source.checkpoint import eos_ids
from ..source.hf import auto_config, load_tokenizer, quiet


def write_genai_config(
    source: Path,
    config: dict[str, Any],
    export: ExportConfig,
    out: Path,
    model_type: str,
    sections: dict[str, Any] | None = None,
    hf_config: Callable[[Path], Any] = auto_config,
) -> None:
    """genai_config.json and the tokenizer files where the builder cannot write them: PhiMoE
    ("phimoe": the builder cannot read transformers 5's PhiMoE) and Phi-3-vision ("phi3v": its
    config is remote code), as its config_only mode writes them for Phi-3.5. `sections` (vision,
    embedding) join the model section, and then the decoder reads `inputs_embeds`."""
    quiet()
    shape = Shape.of(config)
    provider = {
        "cuda": [{"cuda": {"enable_cuda_graph": "0"}}],  # as the builder writes them
        "dml": [{"dml": {"enable_graph_capture": "1"}}],
    }.get(export.execution_provider, [])
    eos = eos_ids(source)
    first = {"inputs_embeds": "inputs_embeds"} if sections else {"input_ids": "input_ids"}
    if export.execution_provider == "dml":
        first["position_ids"] = "position_ids"
    genai = {
        "model": {
            "bos_token_id": config.get("bos_token_id", 1),
            "context_length": shape.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider},
                "filename": "model.onnx",
                "head_size": shape.head,
                "hidden_size": shape.hidden,
                "inputs": {
                    **first,
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
            },
            **(sections or {}),
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id") or eos[0],
            "type": model_type,
            "vocab_size": shape.vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": shape.context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }
    (out / "genai_config.json").write_text(json.dumps(genai, indent=4), encoding="utf-8")
    load_tokenizer(source, hf_config(source)).save_pretrained(out)
