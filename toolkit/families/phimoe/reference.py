"""PhiMoE in the layer-by-layer reference (toolkit/reference/): the checkpoint's router under
transformers 5's name, and the experts read one at a time when a token is routed to them."""

from __future__ import annotations

from typing import Any

from ...source.tensors import CheckpointTensors
from .graph import expert_sources, router_key


def reference_key(weights: CheckpointTensors, key: str) -> str | None:
    """The checkpoint tensor of a reference parameter: transformers 5's `mlp.router.weight` is the
    published `block_sparse_moe.gate.weight`; the experts are read lazily (None)."""
    stem, _, name = key.rpartition(".mlp.")
    if name.startswith("experts."):
        return None
    return router_key(weights, stem) if name == "router.weight" else key


def read_expert(reader: Any, hf: str, e: int, gate_up: Any, down: Any) -> None:
    """Expert e of layer `hf` into gate_up [2I, H] (gate rows, then up) and down [H, I]."""
    parts, (down_key, down_index) = expert_sources(reader.weights, hf, e)
    row = 0
    for key, index in parts:
        rows = reader.weights.entry(key, "the reference model", index).shape[0]
        reader.read(gate_up[row : row + rows], key, index)
        row += rows
    reader.read(down, down_key, down_index)


def lazy_experts(experts: Any, reader: Any) -> Any:
    """LazyExperts: a mixture's experts computed as transformers' eager loop computes them, each
    expert read into one float32 buffer when a token is routed to it (a layer's experts never all
    in memory: 5 GB in float32 for Phi-3.5-MoE). `reader` is the reference's tensor reader."""
    import torch

    class LazyExperts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.count, self.act_fn, self.reader = experts.num_experts, experts.act_fn, reader
            self.hf = ""  # the checkpoint's name of the layer running: set by the reference's LazyLayer
            # buffers, so that moving the layer to a device moves them (not parameters: never loaded as such)
            self.register_buffer("gate_up", torch.empty(experts.gate_up_proj.shape[1:]), persistent=False)
            self.register_buffer("down", torch.empty(experts.down_proj.shape[1:]), persistent=False)
            # Calibration (toolkit/quantize/sequential.py): `observe(inputs, top_k_index)` sees each
            # forward's routing; `override(e, gate_up, down)` fills expert e instead of the checkpoint.
            self.observe: Any = None
            self.override: Any = None

        def load(self, e: int) -> tuple[Any, Any]:
            """Expert e's float32 weights (gate_up [2I, H]: gate rows, then up; down [H, I]), in the
            shared buffers."""
            read_expert(self.reader, self.hf, e, self.gate_up, self.down)
            return self.gate_up, self.down

        def forward(self, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
            final = torch.zeros_like(hidden_states)
            if self.observe is not None:
                self.observe(hidden_states, top_k_index)
            with torch.no_grad():
                mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.count + 1).permute(2, 1, 0)
                hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
            for e in (int(x[0]) for x in hit):
                if e == self.count:
                    continue
                top_k_pos, token_idx = torch.where(mask[e])
                if self.override is not None:
                    self.override(e, self.gate_up, self.down)
                else:
                    read_expert(self.reader, self.hf, e, self.gate_up, self.down)
                gate, up = torch.nn.functional.linear(hidden_states[token_idx], self.gate_up).chunk(2, dim=-1)
                out = torch.nn.functional.linear(self.act_fn(gate) * up, self.down)
                final.index_add_(0, token_idx, out * top_k_weights[token_idx, top_k_pos, None])
            return final

    return LazyExperts()
