"""The PyTorch reference side: quiet transformers, load a checkpoint without remote code."""

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


def load_reference(source: Path) -> tuple[Any, Any]:
    """(tokenizer, the whole float32 model) of the checkpoint, in eval mode, for slmkit's `mse`
    calibration (verify and eval use toolkit/reference.py). Never runs repository code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet()
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
    return tokenizer, model.eval()
