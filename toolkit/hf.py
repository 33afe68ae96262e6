"""Quiet transformers and huggingface_hub (the reference model itself: toolkit/reference.py)."""

from __future__ import annotations


def quiet() -> None:
    """No progress bars or advisory warnings from transformers/huggingface_hub in our output."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()
