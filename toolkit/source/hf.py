"""transformers and huggingface_hub helpers: quiet them, and read a checkpoint's config and
tokenizer with transformers' own classes (never the checkpoint's code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quiet() -> None:
    """No progress bars or advisory warnings from transformers/huggingface_hub in our output."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()


def auto_config(source: Path) -> Any:
    """transformers' config of a checkpoint folder whose model_type it implements."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, trust_remote_code=False)


def load_tokenizer(source: Path, config: Any) -> Any:
    """The checkpoint's tokenizer; `config` is transformers' config of the model (a family's
    hf_config: Phi-3-vision's is its text model's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, config=config, trust_remote_code=False)
