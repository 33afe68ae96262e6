"""Texts shipped with slmkit: the calibration text (tiny_corpus.txt, tiny_chat.json), the
evaluation text (eval_text.txt, the GNU GPL v3) and the selection text of --quality-budget
(select_text.txt, the MPL 2.0). Nothing else in slmkit imports from here but these readers."""

from __future__ import annotations

import json
from importlib import resources


def text(name: str) -> str:
    return resources.files("toolkit.data").joinpath(name).read_text(encoding="utf-8")


def corpus() -> str:
    """English prose written for slmkit: the tiny models' training text and the calibration text."""
    return text("tiny_corpus.txt")


def chat_pairs() -> list[tuple[str, str]]:
    """Question and answer pairs written for slmkit (tiny models' chat turns, calibration)."""
    return [tuple(p) for p in json.loads(text("tiny_chat.json"))]
