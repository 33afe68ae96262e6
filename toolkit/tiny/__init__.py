"""Tiny checkpoints made here in seconds (trained on slmkit's own text, so greedy outputs are
confident), one module per family, and real-shaped random ones for the benchmarks: for `slmkit demo`
and the tests only, never imported by a build. May import families, source and below.

MAKERS names the tiny maker of every family (the tests build each family for every target)."""

from __future__ import annotations

from collections.abc import Callable

from .phi3 import make_tiny_model
from .phi3v import make_tiny_phi3v
from .phimoe import make_tiny_phimoe

MAKERS: dict[str, Callable[..., object]] = {
    "decoder": make_tiny_model,
    "phimoe": make_tiny_phimoe,
    "phi3v": make_tiny_phi3v,
}
