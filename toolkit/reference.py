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
from .graphs.moe import expert_sources, router_key
from .tensors import CheckpointTensors


class _Reader:
    """Reads checkpoint tensors into float32 parameters, widening on the way (torch converts
    bf16/fp16 in one multithreaded copy); the raw buffers are reused from layer to layer."""

    def __init__(self, weights: CheckpointTensors):
        self.weights = weights
        self.buffers: dict[tuple[str, tuple[int, ...]], Any] = {}

    def into(self, param: Any, key: str) -> None:
        stem, _, name = key.rpartition(".mlp.")
        self._read(param, router_key(self.weights, stem) if name == "router.weight" else key)

    def _read(self, param: Any, key: str, index: int | None = None) -> None:
        """Read tensor `key` (or its [index] sub-tensor: one expert of a stacked tensor) into param."""
        import torch

        e = self.weights.entry(key, "the reference model", index)
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

    def expert(self, hf: str, e: int, gate_up: Any, down: Any) -> None:
        """Expert e of layer `hf` into gate_up [2I, H] (gate rows, then up) and down [H, I]."""
        parts, (down_key, down_index) = expert_sources(self.weights, hf, e)
        row = 0
        for key, index in parts:
            rows = self.weights.entry(key, "the reference model", index).shape[0]
            self._read(gate_up[row:row + rows], key, index)
            row += rows
        self._read(down, down_key, down_index)

    def load(self, module: Any, prefix: str) -> None:
        for name, param in module.named_parameters():
            if not name.startswith("mlp.experts."):  # a mixture's experts are read one by one when hit
                self.into(param, f"{prefix}{name}")


def _lazy_experts_class():
    """LazyExperts: a mixture's experts computed as transformers' eager loop computes them, each
    expert read into one float32 buffer when a token is routed to it (a layer's experts never all
    in memory: 5 GB in float32 for Phi-3.5-MoE)."""
    import torch

    class LazyExperts(torch.nn.Module):
        def __init__(self, experts: Any, reader: _Reader):
            super().__init__()
            self.count, self.act_fn, self.reader = experts.num_experts, experts.act_fn, reader
            self.hf = ""  # the checkpoint's name of the layer running: set by LazyLayer
            self.gate_up = torch.empty(experts.gate_up_proj.shape[1:])
            self.down = torch.empty(experts.down_proj.shape[1:])

        def forward(self, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
            final = torch.zeros_like(hidden_states)
            with torch.no_grad():
                mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.count + 1).permute(2, 1, 0)
                hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
            for e in (int(x[0]) for x in hit):
                if e == self.count:
                    continue
                top_k_pos, token_idx = torch.where(mask[e])
                self.reader.expert(self.hf, e, self.gate_up, self.down)
                gate, up = torch.nn.functional.linear(hidden_states[token_idx], self.gate_up).chunk(2, dim=-1)
                out = torch.nn.functional.linear(self.act_fn(gate) * up, self.down)
                final.index_add_(0, token_idx, out * top_k_weights[token_idx, top_k_pos, None])
            return final

    return LazyExperts


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
            experts = getattr(getattr(layer, "mlp", None), "experts", None)
            if hasattr(experts, "hf"):
                experts.hf = f"model.layers.{self.index}"
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
    from transformers import AutoModelForCausalLM

    from .hf import load_config, load_tokenizer, quiet

    quiet()
    tokenizer = load_tokenizer(source)
    config = load_config(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    weights = CheckpointTensors(source, weight_files)
    if getattr(config, "model_type", "") == "phi3" and "model.embed_tokens.weight" not in weights:
        from .phi3v import share_embedding

        share_embedding(weights)  # a Phi-3-vision checkpoint may keep the table as vision_embed_tokens.wte
    reader = _Reader(weights)
    inner = model.model
    first = inner.layers[0]
    if hasattr(getattr(first, "mlp", None), "experts"):
        first.mlp.experts = _lazy_experts_class()(first.mlp.experts, reader)
    for module, prefix in ((inner.embed_tokens, "model.embed_tokens."), (inner.norm, "model.norm."),
                           (first, "model.layers.0.")):
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

