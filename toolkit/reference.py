"""The PyTorch reference, one decoder layer in memory at a time, always in float32.

transformers' own model class (never the checkpoint's code) is built on the meta device, so it
holds no weights. Its decoder layers are replaced by LazyLayers that share one real layer: when
the forward pass reaches layer i, layer i's tensors are read from the safetensors files (plain
reads, as the streamed export reads them) into that layer's float32 parameters, which then runs
as layer i (its layer_idx picks its KV cache). The embedding, final norm and lm_head stay loaded.
transformers' generate() and forward() run unchanged: the same code as the whole-model reference,
so the same tokens and logits, at the memory of one layer whatever the model's size. Every forward
pass reads every layer again: batch the prompts (generate() left-pads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import InputModelError
from .tensors import CheckpointTensors


class _Reader:
    """Reads checkpoint tensors into float32 parameters, widening on the way (torch converts
    bf16/fp16 in one multithreaded copy); the raw buffers are reused from layer to layer."""

    def __init__(self, weights: CheckpointTensors):
        self.weights = weights
        self.buffers: dict[tuple[str, tuple[int, ...]], Any] = {}

    def into(self, param: Any, key: str) -> None:
        if key not in self.weights and _published_moe(key):
            for index, source in _published_moe(key)(param.shape):
                self.into(param[index], source)
            return
        self._read(param, key)

    def _read(self, param: Any, key: str) -> None:
        import torch

        e = self.weights.entry(key, "the reference model")
        if tuple(e.shape) != tuple(param.shape):
            raise InputModelError(f"{e.file}: tensor '{key}' has shape {list(e.shape)} ({e.dtype}, "
                                  f"{e.end - e.start} bytes); the model's config.json asks for {list(param.shape)}.")
        raw = self.buffers.get((e.dtype, e.shape))
        if raw is None:
            dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[e.dtype]
            raw = self.buffers[(e.dtype, e.shape)] = torch.empty(e.shape, dtype=dtype)
        self.weights.read_into(e, memoryview(raw.view(torch.uint8).numpy().reshape(-1)))
        with torch.no_grad():
            param.copy_(raw)

    def load(self, module: Any, prefix: str) -> None:
        for name, param in module.named_parameters():
            self.into(param, f"{prefix}{name}")


def _published_moe(key: str) -> Callable[[tuple[int, ...]], list[tuple[Any, str]]] | None:
    """transformers 5 fuses PhiMoE's experts ([E, 2I, H] gate_up_proj, [E, H, I] down_proj) and
    renames its router; Phi-3.5-MoE-instruct's checkpoint keeps one w1/w3/w2 per expert. For a
    fused parameter name: the (slice of it, published tensor) pairs that fill it."""
    stem, _, name = key.rpartition(".mlp.")
    if not stem:
        return None
    moe = f"{stem}.block_sparse_moe"
    if name == "router.weight":
        return lambda shape: [(slice(None), f"{moe}.gate.weight")]
    if name == "experts.gate_up_proj":
        return lambda shape: [p for e in range(shape[0]) for p in (
            ((e, slice(0, shape[1] // 2)), f"{moe}.experts.{e}.w1.weight"),
            ((e, slice(shape[1] // 2, None)), f"{moe}.experts.{e}.w3.weight"))]
    if name == "experts.down_proj":
        return lambda shape: [(e, f"{moe}.experts.{e}.w2.weight") for e in range(shape[0])]
    return None


def _lazy_layer_class():
    """LazyLayer, a torch Module (made here: torch is imported only when a reference runs)."""
    import torch

    class LazyLayer(torch.nn.Module):
        def __init__(self, index: int, shared: Any, reader: _Reader, on_layer: Callable[[], None]):
            super().__init__()
            self.shared = [shared]  # a list: not registered, so .to() and .parameters() never touch it
            self.index, self.reader, self.on_layer = index, reader, on_layer

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            layer = self.shared[0]
            self.reader.load(layer, f"model.layers.{self.index}.")
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = self.index
            try:
                return layer(*args, **kwargs)
            finally:
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
    reader = _Reader(CheckpointTensors(source, weight_files))
    inner = model.model
    for module, prefix in ((inner.embed_tokens, "model.embed_tokens."), (inner.norm, "model.norm."),
                           (inner.layers[0], "model.layers.0.")):
        module.to_empty(device="cpu")
        reader.load(module, prefix)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in reader.weights:
        model.lm_head.weight = inner.embed_tokens.weight
    else:
        model.lm_head.to_empty(device="cpu")
        reader.load(model.lm_head, "lm_head.")
    inner.rotary_emb = type(inner.rotary_emb)(config=model.config)  # its buffers, computed on the CPU
    # The shared layer is not registered, so model.eval() does not reach it: set it here (PhiMoE's
    # router samples experts and jitters its input in training mode).
    shared, lazy = inner.layers[0].eval(), _lazy_layer_class()
    inner.layers = torch.nn.ModuleList(lazy(i, shared, reader, on_layer) for i in range(len(inner.layers)))
    return tokenizer, model.eval()


def watch_linears(model: Any, record: Callable[[str, Any], None]) -> list[Any]:
    """Forward hooks on every Linear of a layerwise model, each called with the name the
    checkpoint gives it (model.layers.N.self_attn.qkv_proj, lm_head) and its input. Returns the
    hook handles (call .remove() on each)."""
    import torch

    layers = list(model.model.layers)
    current = [""]

    def enter(layer: Any, _args: Any) -> None:
        current[0] = f"model.layers.{layer.index}."

    def watch(name: str, in_layer: bool) -> Callable[..., None]:
        return lambda _module, inputs, _output: record(current[0] + name if in_layer else name, inputs[0])

    handles = [layer.register_forward_pre_hook(enter) for layer in layers]
    handles += [m.register_forward_hook(watch(n, True)) for n, m in layers[0].shared[0].named_modules()
                if isinstance(m, torch.nn.Linear)]
    handles += [m.register_forward_hook(watch(n, False)) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)]  # the lm_head: the layers' Linears are not registered
    return handles

