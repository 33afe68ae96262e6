"""The calibration tokens of slmkit's own int4 methods: the calibration text shipped with slmkit
(English prose written for it), its question and answer pairs through the checkpoint's chat
template, then Python's own documentation (pydoc_data, in every CPython). None of them is a text
slmkit evaluates or selects on."""

from __future__ import annotations

from typing import Any

# X^T X from the 764 tokens of the shipped text alone is rank-deficient for wide inputs (SmolLM2's
# down_proj reads 1536 features; Phi-3.5-mini's 8192): GPTQ fits it and loses. 8192 tokens with
# Python's documentation added made GPTQ the closest to float32 in KL and top-1 (the README).
CALIBRATION_TOKENS = 8192


def python_docs_text() -> str:
    """English prose and code from Python's own documentation (pydoc_data, in every CPython)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def calibration_texts(tokenizer: Any) -> list[str]:
    """The shipped text, each question and answer pair as a chat (the checkpoint's template; plain
    lines without one), then Python's documentation."""
    from ..data import chat_pairs, corpus

    chats = []
    for question, answer in chat_pairs():
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if getattr(tokenizer, "chat_template", None):
            chats.append(tokenizer.apply_chat_template(turns, tokenize=False))
        else:
            chats.append(f"{question}\n{answer}")
    return [corpus(), *chats, python_docs_text()]


def calibration_ids(tokenizer: Any, window: int, tokens: int = CALIBRATION_TOKENS) -> Any:
    """The first `tokens` calibration tokens as [tokens / window, window] ids (a torch tensor)."""
    import torch

    ids: list[int] = []
    for text in calibration_texts(tokenizer):
        ids += tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= tokens:
            break
    if len(ids) < tokens:
        raise ValueError(f"the calibration texts give {len(ids)} tokens, fewer than {tokens}")
    return torch.tensor(ids[:tokens]).reshape(-1, window)
