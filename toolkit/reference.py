"""The PyTorch reference, one decoder layer in memory at a time, always in float32.

transformers' own model class (never the checkpoint's code) is built on the meta device, so it
holds no weights. Each decoder layer is a LazyLayer: when the forward pass reaches it, its tensors
are read from the safetensors files (plain reads, as the streamed export reads them), widened to
float32, used, and dropped. The embedding, final norm and lm_head stay loaded. transformers'
generate() and forward() then run unchanged: the same code as the whole-model reference, so the
same tokens and logits (to float32 rounding), at the memory of one layer whatever the model's size.
Each forward pass reads every layer's weights again: batch the prompts (generate() left-pads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import InputModelError
from .tensors import CheckpointTensors


def _load(module: Any, prefix: str, weights: CheckpointTensors) -> None:
    """Give a meta-device module real float32 tensors from the checkpoint (names under `prefix`)."""
    import torch

    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in module.named_parameters(recurse=True):
            key = f"{prefix}{name}"
            if key not in weights:
                raise InputModelError(f"The checkpoint has no tensor '{key}', which the reference model needs. "
                                      "Re-download the checkpoint.")
            param.copy_(torch.from_numpy(weights.float32(key)))


def _lazy_layer_class():
    """LazyLayer, a torch Module (made here: torch is imported only when a reference runs)."""
    import torch

    class LazyLayer(torch.nn.Module):
        def __init__(self, layer: Any, prefix: str, weights: CheckpointTensors, on_layer: Callable[[], None]):
            super().__init__()
            self.inner = [layer]  # a list: not registered, so .to() and .parameters() never touch it
            self.prefix, self.weights, self.on_layer = prefix, weights, on_layer

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            layer = self.inner[0]
            _load(layer, self.prefix, self.weights)
            try:
                return layer(*args, **kwargs)
            finally:
                layer.to("meta")  # frees this layer's float32 tensors
                self.on_layer()

    return LazyLayer


def layerwise_model(source: Path, weight_files: tuple[str, ...],
                    on_layer: Callable[[], None] = lambda: None) -> tuple[Any, Any]:
    """(tokenizer, causal LM in eval mode) that reads each decoder layer when the forward pass
    reaches it; `on_layer` is called after each layer ran (progress)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet

    quiet()
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    weights = CheckpointTensors(source, weight_files)
    inner = model.model
    _load(inner.embed_tokens, "model.embed_tokens.", weights)
    _load(inner.norm, "model.norm.", weights)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in weights:
        model.lm_head.weight = inner.embed_tokens.weight
    else:
        _load(model.lm_head, "lm_head.", weights)
    inner.rotary_emb = type(inner.rotary_emb)(config=model.config)  # its buffers, computed on the CPU
    lazy = _lazy_layer_class()
    inner.layers = torch.nn.ModuleList(lazy(layer, f"model.layers.{i}.", weights, on_layer)
                                       for i, layer in enumerate(inner.layers))
    return tokenizer, model.eval()
