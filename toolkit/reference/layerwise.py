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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputModelError
from ..families import family_of
from ..families.decoder.graph import TIED_ROTATION, down_hadamard_orders
from ..graphs import hadamard
from ..source.checkpoint import read_config
from ..source.tensors import WIDEN, CheckpointTensors


class Reader:
    """Reads checkpoint tensors into parameters: in place when the parameter has the stored dtype,
    else a piece at a time through one reused buffer per dtype, widened by torch's multithreaded
    copy (a tensor's only full copy is the parameter). `key_of(weights, parameter name)` is the
    family's: the checkpoint tensor a parameter reads, or None for one its lazy modules read
    themselves."""

    def __init__(self, weights: CheckpointTensors, key_of: Callable[[CheckpointTensors, str], str | None]):
        self.weights, self.key_of = weights, key_of
        self.buffers: dict[str, Any] = {}

    def read(self, param: Any, key: str, index: int | None = None) -> None:
        """Read tensor `key` (or its [index] sub-tensor: one expert of a stacked tensor) into param."""
        import torch

        e = self.weights.entry(key, "the reference model", index)
        if tuple(e.shape) != tuple(param.shape):
            raise InputModelError(
                f"{e.file}: tensor '{key}' has shape {list(e.shape)} ({e.dtype}, "
                f"{e.end - e.start} bytes); the model's config.json asks for {list(param.shape)}."
            )
        if not param.is_contiguous():
            raise AssertionError(f"{key}: the parameter it is read into is not contiguous")
        flat, dtype = param.data.view(-1), _torch_dtype(e.dtype)
        if param.dtype == dtype:
            self.weights.read_into(e, memoryview(flat.view(torch.uint8).numpy()))
            return
        raw = self.buffers.get(e.dtype)
        if raw is None:
            raw = self.buffers[e.dtype] = torch.empty(WIDEN, dtype=dtype)
        for a, piece in self.weights.pieces(e):
            n = piece.shape[0]
            self.weights.read_into(piece, memoryview(raw[:n].view(torch.uint8).numpy()))
            with torch.no_grad():
                flat[a : a + n].copy_(raw[:n])

    def load(self, module: Any, prefix: str) -> None:
        for name, param in module.named_parameters():
            key = self.key_of(self.weights, f"{prefix}{name}")
            if key is not None:
                self.read(param, key)


def _lazy_layer_class():
    """LazyLayer, a torch Module (made here: torch is imported only when a reference runs)."""
    import torch

    class LazyLayer(torch.nn.Module):
        def __init__(self, index: int, shared: Any, reader: Reader, on_layer: Callable[[], None]):
            super().__init__()
            self.shared = [shared]  # a list: not registered, so .to() and .parameters() never touch it
            self.index, self.reader, self.on_layer = index, reader, on_layer

        def load(self) -> Any:
            """This layer's float32 weights into the shared layer, which then runs as this layer
            (its KV cache index, a lazy module's tensor names); returns the shared layer."""
            layer = self.shared[0]
            self.reader.load(layer, f"model.layers.{self.index}.")
            experts = getattr(getattr(layer, "mlp", None), "experts", None)
            if hasattr(experts, "hf"):
                experts.hf = f"model.layers.{self.index}"
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = self.index
            return layer

        def run(self, *args: Any, **kwargs: Any) -> Any:
            """The shared layer with the weights it holds (no read: calibration changes them)."""
            try:
                return self.shared[0](*args, **kwargs)
            finally:
                self.on_layer()

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            self.load()
            return self.run(*args, **kwargs)

    return LazyLayer


def layerwise_model(
    source: Path,
    weight_files: tuple[str, ...],
    on_layer: Callable[[], None] = lambda: None,
    stored_tables: bool = False,
) -> tuple[Any, Any]:
    """(tokenizer, causal LM in eval mode) that reads each decoder layer when the forward pass
    reaches it; `on_layer` is called after each layer ran (progress). With `stored_tables` the token
    embedding and lm_head keep the checkpoint's dtype (bf16: half of Phi-4-mini's 2.5 GB float32
    table); their user widens what it reads (the calibration, toolkit/quantize/)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..source.hf import load_tokenizer, quiet

    quiet()
    family = family_of(read_config(source))
    config = family.hf_config(source)
    tokenizer = load_tokenizer(source, config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    weights = CheckpointTensors(source, weight_files)
    family.prepare_weights(weights)
    reader = Reader(weights, family.reference_key)
    inner = model.model
    first = inner.layers[0]
    if family.lazy_experts is not None:
        first.mlp.experts = family.lazy_experts(first.mlp.experts, reader)
    if stored_tables:
        for module, name in ((inner.embed_tokens, "model.embed_tokens.weight"), (model.lm_head, "lm_head.weight")):
            key = reader.key_of(weights, name)
            if key is not None and key in weights:
                module.to(_torch_dtype(weights.entry(key, "the reference model").dtype))
    for module, prefix in (
        (inner.embed_tokens, "model.embed_tokens."),
        (inner.norm, "model.norm."),
        (first, "model.layers.0."),
    ):
        module.to_empty(device="cpu")
        reader.load(module, prefix)
    if TIED_ROTATION in weights:  # a rotated checkpoint's tied table: its MatMul after the final norm
        rotation = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        rotation.weight.data = torch.from_numpy(weights.float32(TIED_ROTATION))
        inner.norm = torch.nn.Sequential(inner.norm, rotation)
    orders = down_hadamard_orders(weights)
    if orders is not None:  # the online Hadamard on every down_proj input, as the graph has it
        mats = [torch.from_numpy(m) for m in hadamard.factors(orders)]
        first.mlp.down_proj.register_forward_pre_hook(
            lambda _module, args: (hadamard.apply(args[0], [m.to(args[0]) for m in mats], torch),)
        )
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


def _torch_dtype(stored: str) -> Any:
    """The torch dtype of a safetensors dtype name."""
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[stored]


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
    handles += [
        m.register_forward_hook(watch(n, True))
        for n, m in layers[0].shared[0].named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    handles += [
        m.register_forward_hook(watch(n, False)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    ]  # the lm_head: the layers' Linears are not registered
    return handles


class LayerPasses:
    """Progress of a layer-by-layer run: pass it as `on_layer`; each decoder layer that ran
    advances `bar` (set it to a progress bar around the run)."""

    bar = None

    def __call__(self) -> None:
        if self.bar is not None:
            self.bar.advance()


class _Captured(Exception):
    """Stops a forward pass once the first decoder layer's arguments are captured."""


def layer_arguments(model: Any, inputs_embeds: Any) -> dict[str, Any]:
    """The keyword arguments the model's own forward passes each decoder layer for a batch shaped
    like `inputs_embeds` [batch, sequence, hidden] with no padding and no cache: the causal mask
    and the position ids and embeddings, as transformers makes them (the calibration then calls
    the layers itself, one at a time over all its sequences)."""
    import torch

    captured: dict[str, Any] = {}

    def grab(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        captured.update(kwargs)
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(inputs_embeds=inputs_embeds, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured
