"""Model families, each in one place: how it is recognised, what it refuses and why, its graph
writers and genai_config, its reference hooks and extra verification cases (family.py says what a
family record holds). May import graphs, source, plan and below; the stages above ask `family_of`.

  decoder/ Phi-3, Phi-3.5-mini and Llama-architecture decoders (SmolLM2)
  phimoe/  Phi-3.5-MoE: a mixture of experts in QMoE
  phi3v/   Phi-3.5-vision: vision and embedding graphs around the Phi-3 decoder
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputModelError
from ..source.checkpoint import SourceModel, inspect_folder, locate, read_config
from . import decoder, phi3v, phimoe
from .family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (decoder.FAMILY, phimoe.FAMILY, phi3v.FAMILY)}
_BY_ARCHITECTURE = {arch: f for f in FAMILIES.values() for arch in f.architectures}


def _supported() -> str:
    return "; ".join(f"{arch} ({what})" for f in FAMILIES.values() for arch, (_, what) in f.architectures.items())


def recognise(config: dict[str, Any], cfg_path: Path) -> Family:
    """The family of a checkpoint's config.json, or InputModelError naming the supported ones; a
    model_type that transformers does not implement (remote code) is refused too."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise InputModelError(
            f"{cfg_path} has no 'architectures' list, so the model class is unknown. Supported: {_supported()}."
        )
    family = _BY_ARCHITECTURE.get(archs[0])
    if family is None:
        raise InputModelError(f"Unsupported architecture '{archs[0]}' in {cfg_path}. Supported: {_supported()}.")
    model_type = family.architectures[archs[0]][0]
    if config.get("model_type") != model_type:
        raise InputModelError(
            f"{cfg_path} declares model_type {config.get('model_type')!r}, which transformers does not "
            f"implement (expected {model_type!r} for {archs[0]}): loading it would need "
            "trust_remote_code, and slmkit never runs code shipped inside a model repository."
        )
    return family


def family_of(config: dict[str, Any]) -> Family:
    """The family of a config that was recognised when its checkpoint was opened."""
    return family_for(config["architectures"][0])


def family_for(architecture: str) -> Family:
    """The family of an architecture name (KeyError for one no family has)."""
    return _BY_ARCHITECTURE[architecture]


def open_checkpoint(model: str, allow_pickle: bool = False, cache_dir: Path | None = None) -> SourceModel:
    """A local folder or a Hub id (downloaded: toolkit/source/hub.py), recognised as one of the
    families before anything else is read, then checked as toolkit/source/checkpoint.py checks it."""
    path, revision = locate(model, cache_dir)
    recognise(read_config(path), path / "config.json")
    return inspect_folder(path, model, revision, allow_pickle)
