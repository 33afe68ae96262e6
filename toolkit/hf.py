"""Quiet transformers and huggingface_hub (the reference model itself: toolkit/reference.py)."""

from __future__ import annotations


def quiet() -> None:
    """No progress bars or advisory warnings from transformers/huggingface_hub in our output."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()


def load_config(source) -> object:
    """transformers' config of a checkpoint folder; for Phi-3-vision (no transformers class), the
    Phi-3 config of its text model."""
    import json
    from pathlib import Path

    from transformers import AutoConfig, Phi3Config

    raw = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") == "phi3_v":
        from .phi3v import text_config

        return Phi3Config.from_dict(text_config(raw))
    return AutoConfig.from_pretrained(source, trust_remote_code=False)


def load_tokenizer(source) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, config=load_config(source), trust_remote_code=False)
