"""The source checkpoint: find it (local folder or Hub id), refuse what cannot be read safely
(no config, absurd sizes, pickles, truncated weights, no tokenizer) and describe it (architecture,
rope scaling, parameter count, file hashes). Which architectures are built is the families' word:
toolkit/families/__init__.py opens a checkpoint with these functions and recognises it first."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputModelError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Bounds far beyond any small model, checked before anything is allocated.
LIMITS = {
    "hidden_size": 32768,
    "intermediate_size": 262144,
    "num_hidden_layers": 512,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 1_048_576,
    "max_position_embeddings": 10_485_760,
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class SourceModel:
    path: Path
    origin: str  # what the user passed: a folder or a Hub id
    revision: str | None  # the resolved Hub commit, None for a local folder
    architecture: str
    rope_scaling: str  # "longrope", "none", or the checkpoint's own type name
    config: dict[str, Any]
    num_params: int
    weight_files: tuple[str, ...]
    # The checkpoint's Linear modules (names without .weight) that runtime LoRA adapters target:
    # the ONNX graph takes an A and a B input for each MatMul made of them.
    lora_modules: frozenset[str] = frozenset()

    @property
    def partial_rotary_factor(self) -> float:
        return partial_rotary_factor(self.config)

    def file_hashes(self) -> dict[str, dict[str, Any]]:
        """sha256 and size of every file the build reads from the source folder."""
        from ..progress import bar

        files = [p for p in sorted(self.path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        total = sum(p.stat().st_size for p in files)
        with bar("hashing", total, "bytes hashed") as progress:
            return {
                p.name: {"sha256": sha256_file(p, on_read=progress.advance), "size": p.stat().st_size} for p in files
            }

    def summary(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "path": str(self.path),
            "revision": self.revision,
            "architecture": self.architecture,
            "rope_scaling": self.rope_scaling,
            "partial_rotary_factor": self.partial_rotary_factor,
            "num_params": self.num_params,
        }


def sha256_file(path: Path, chunk: int = 1 << 24, on_read: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if on_read:
                on_read(len(block))
    return h.hexdigest()


def locate(model: str, cache_dir: Path | None = None) -> tuple[Path, str | None]:
    """A local folder as is; a Hub id (org/name, not an existing path) is downloaded:
    config, safetensors and tokenizer files only. Returns (folder, resolved revision)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputModelError(
                f"'{model}' is a file, not a model folder. Pass the folder that holds config.json, "
                "the *.safetensors weights and the tokenizer files."
            )
        return path.resolve(), None
    if not HUB_ID.match(model):
        raise InputModelError(
            f"Model folder '{model}' does not exist. Pass a local Hugging Face folder "
            "(config.json, *.safetensors, tokenizer files) or a Hub id such as "
            "microsoft/Phi-3.5-mini-instruct."
        )
    from .hub import download

    return download(model, cache_dir)


def read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputModelError(
            f"No config.json in '{path}'. Pass the folder of a Hugging Face checkpoint "
            "(the one that holds config.json and the *.safetensors weights)."
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputModelError(f"{cfg_path} is not valid JSON ({e}). Re-download the checkpoint.") from None
    if not isinstance(config, dict):
        raise InputModelError(f"{cfg_path} must hold a JSON object, got {type(config).__name__}.")
    return config


def _check_sizes(config: dict[str, Any], cfg_path: Path) -> None:
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        if key not in config:
            raise InputModelError(f"{cfg_path} is missing '{key}'. Re-download the checkpoint.")
    for key, limit in LIMITS.items():
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise InputModelError(
                f"{cfg_path}: '{key}' = {value!r} is not a plausible size (expected an integer in "
                f"1..{limit}). The config is corrupt or not a small language model."
            )
    if config["hidden_size"] % config["num_attention_heads"]:
        raise InputModelError(
            f"{cfg_path}: hidden_size {config['hidden_size']} is not divisible by "
            f"num_attention_heads {config['num_attention_heads']}."
        )


def partial_rotary_factor(config: dict[str, Any], cfg_path: Path | str = "config.json") -> float:
    """The fraction of each head's dimensions that rotary embeddings turn (Phi-4-mini: 0.75; 1.0
    when the config does not say)."""
    value = config.get("partial_rotary_factor")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InputModelError(f"{cfg_path}: 'partial_rotary_factor' = {value!r} must be a number in (0, 1].")
    return float(value)


def rope_kind(config: dict[str, Any], cfg_path: Path) -> str:
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("type") or scaling.get("rope_type") or "none"
    kind = {"su": "longrope", "default": "none"}.get(kind, kind)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    fraction = partial_rotary_factor(config, cfg_path)
    rotary = int(head_dim * fraction)
    if rotary % 2:
        raise InputModelError(
            f"{cfg_path}: partial_rotary_factor {fraction} of head_dim {head_dim} rotates {rotary} dimensions, "
            "an odd number: rotary embeddings turn pairs of dimensions."
        )
    if kind == "longrope":
        width = f"head_dim/2 = {head_dim // 2}" if fraction == 1.0 else f"{rotary}/2 = {rotary // 2} (the rotated dims)"
        for key in ("short_factor", "long_factor"):
            factors = scaling.get(key)
            if not isinstance(factors, list) or len(factors) != rotary // 2:
                raise InputModelError(
                    f"{cfg_path}: longrope '{key}' must list {width} numbers, "
                    f"got {factors if not isinstance(factors, list) else f'{len(factors)} numbers'}."
                )
        if "original_max_position_embeddings" not in config:
            raise InputModelError(
                f"{cfg_path}: longrope needs 'original_max_position_embeddings' (4096 for Phi-3.5-mini)."
            )
    return kind


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensor table of a safetensors file and the byte offset where its data starts; refuses a
    truncated or foreign file without reading any tensor."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size, 100 << 20):
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise InputModelError(f"{path} is not a valid safetensors file ({e}). Re-download it.") from None
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if size < 8 + n + end:
        raise InputModelError(
            f"{path} is truncated: {size} bytes on disk, its header needs {8 + n + end}. "
            "Re-download it (an interrupted download leaves such files)."
        )
    return header, 8 + n


def _safetensors_params(path: Path) -> int:
    header, _ = safetensors_header(path)
    return sum(math.prod(info["shape"]) for info in header.values())


def _weight_files(path: Path, allow_pickle: bool) -> tuple[str, ...]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise InputModelError(f"{index} is not a valid safetensors index ({e}).") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise InputModelError(
                f"{index} lists shards that are not in the folder: {', '.join(missing)}. "
                "The download is incomplete; download the missing files."
            )
        return tuple(shards)
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if found:
        return tuple(found)
    pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    if pickles and not allow_pickle:
        raise InputModelError(
            f"'{path}' has only pickle weights ({', '.join(pickles)}). Unpickling can run arbitrary "
            "code, so slmkit refuses it. Download the *.safetensors files of this model, or, if you "
            "trust the file, pass --allow-pickle (slmkit then converts it to safetensors with "
            "torch.load(weights_only=True))."
        )
    if pickles:
        return tuple(pickles)
    raise InputModelError(f"No weights in '{path}': expected *.safetensors files next to config.json.")


def inspect_folder(path: Path, origin: str, revision: str | None, allow_pickle: bool = False) -> SourceModel:
    """Check and describe a folder whose config.json's architecture was recognised
    (toolkit/families/__init__.py: open_checkpoint)."""
    config = read_config(path)
    cfg_path = path / "config.json"
    _check_sizes(config, cfg_path)
    rope = rope_kind(config, cfg_path)
    weights = _weight_files(path, allow_pickle)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputModelError(
            f"No tokenizer in '{path}': expected tokenizer.json (or tokenizer.model) with "
            "tokenizer_config.json. Copy the tokenizer files of the model into the folder."
        )
    if weights[0].endswith(".safetensors"):
        params = sum(_safetensors_params(path / w) for w in weights)
    else:  # pickles are not opened before the conversion; assume 2-byte (bf16/fp16) weights
        params = sum((path / w).stat().st_size for w in weights) // 2
    return SourceModel(
        path=path,
        origin=origin,
        revision=revision,
        architecture=config["architectures"][0],
        rope_scaling=rope,
        config=config,
        num_params=params,
        weight_files=weights,
    )


def eos_sources(path: Path) -> dict[str, list[int]]:
    """The stop ids each file names: generation_config.json's list (Phi-3.5 has three) and
    config.json's id. A fine-tune may have re-saved one of them only, so they can disagree."""
    out: dict[str, list[int]] = {}
    for name in ("generation_config.json", "config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputModelError(f"{file} is not valid JSON. Re-download the checkpoint.") from None
        out[name] = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]
    return out


def eos_ids(path: Path) -> list[int]:
    """Every id the checkpoint stops on: the union of what its files name."""
    return list(dict.fromkeys(v for ids in eos_sources(path).values() for v in ids))


def convert_pickle_weights(source: SourceModel, dest: Path) -> Path:
    """Only with --allow-pickle: load pytorch_model*.bin with torch's restricted unpickler
    (weights_only=True: tensors and plain containers, no code) and write model.safetensors into
    `dest`, next to links to the other source files. Returns `dest`."""
    import torch
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    state: dict[str, Any] = {}
    for name in source.weight_files:
        try:
            state.update(torch.load(source.path / name, map_location="cpu", weights_only=True))
        except Exception as e:
            raise InputModelError(f"Cannot read {source.path / name} as plain tensors ({e}).") from None
    # Tied weights share storage; safetensors stores each tensor once, so give each its own copy.
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(dest / "model.safetensors"))
    for p in source.path.iterdir():
        if p.is_file() and not p.name.startswith("pytorch_model") and p.name != "model.safetensors":
            (dest / p.name).symlink_to(p)
    return dest
