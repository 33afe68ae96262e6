"""w4a16 weights for the Hexagon NPU, calibrated in the same layer-by-layer pass as the ONNX
targets' int4 (sequential.py): GPTQ codes in the HTP's symmetric int4, one scale per output channel
or in LPBQ blocks (each block's 4-bit integer scale times its channel's float scale), and int8 per
channel for the lm_head. Each layer is calibrated on the hidden states that the quantized graphs of
the layers before it give (16-bit activations included): the engine runs the layer's QDQ graph on
the calibration states and hands the result back (NpuCalibration.advance_to)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graphs.static import QuantWeight
from .blocks import Packed
from .gptq import gptq
from .sequential import Calibration

LPBQ_LEVELS = 15  # the block scales' 4-bit integers run 1..15


def lpbq_snap(scales: Any, zeros: Any) -> tuple[Any, Any]:
    """Block scales [groups, n] (torch) on the LPBQ grid: each column's largest / 15 is its channel
    scale, and every block's scale is an integer 1..15 times it (zero points stay: symmetric)."""
    import torch

    channel = torch.clamp(scales.amax(0, keepdim=True), min=1e-12) / LPBQ_LEVELS
    return torch.clamp(torch.round(scales / channel), 1, LPBQ_LEVELS) * channel, zeros


def quant_weight(packed: Packed, lpbq: bool) -> QuantWeight:
    """GPTQ's symmetric blocks (codes 0..15 around 8) as the HTP's signed int4 W[K, N]."""
    q, _ = packed.nibbles()
    n, nb, block = q.shape
    codes = (q.astype(np.int8) - 8).reshape(n, nb * block)[:, : packed.k].T
    if not lpbq:
        return QuantWeight(np.ascontiguousarray(codes), packed.scales[:, 0].astype(np.float32))
    channel = np.maximum(packed.scales.max(1), 1e-12) / LPBQ_LEVELS
    integers = np.clip(np.round(packed.scales / channel[:, None]), 1, LPBQ_LEVELS).astype(np.uint8)
    return QuantWeight(np.ascontiguousarray(codes), channel.astype(np.float32), 4, integers.T.copy(), block)


def int8_channel(w_out_in: np.ndarray, rows: int = 8192) -> QuantWeight:
    """Round-to-nearest int8 per output channel (symmetric), a few thousand rows at a time."""
    n, k = w_out_in.shape
    codes = np.empty((k, n), dtype=np.int8)
    scale = np.empty(n, dtype=np.float32)
    for r0 in range(0, n, rows):
        part = w_out_in[r0 : r0 + rows].astype(np.float32)
        s = np.maximum(np.abs(part).max(1), 1e-12) / 127.0
        codes[:, r0 : r0 + rows] = np.clip(np.round(part / s[:, None]), -127, 127).astype(np.int8).T
        scale[r0 : r0 + rows] = s
    return QuantWeight(codes, scale, bits=8)


def stack(weights: list[QuantWeight]) -> QuantWeight:
    """Weights of one input side by side (q, k, v; gate, up): their output channels concatenated."""
    if len(weights) == 1:
        return weights[0]
    first = weights[0]
    blocks = None if first.block_scales is None else np.concatenate([w.block_scales for w in weights], axis=1)
    return QuantWeight(
        np.concatenate([w.codes for w in weights], axis=1),
        np.concatenate([w.scale for w in weights]),
        first.bits,
        blocks,
        first.block,
    )


class NpuCalibration(Calibration):
    """The layer-by-layer pass of sequential.py with the HTP's weights: GPTQ per output channel
    (one group of K inputs) or in LPBQ blocks; the next layer's input is what the engine's QDQ
    graph of this one gives (advance_to), not a float run with dequantized weights."""

    def __init__(self, *args: Any, lpbq: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lpbq = lpbq
        self.next_hidden: Any = None

    def weight(self, names: list[str]) -> QuantWeight:
        """The calibrated weight of the pending layer's Linears `names`, stacked."""
        return stack([quant_weight(self.packs[n], self.lpbq) for n in names])

    def advance_to(self, hidden: Any) -> None:
        """The pending layer's output on the calibration states, from its quantized graph."""
        self.next_hidden = hidden

    def finish_layers(self) -> None:
        """The last layer's quantized output becomes the calibration states (the head's input)."""
        self._advance()

    def _quantize(self, name: str, weight: Any, gram: Any) -> None:
        w = weight.detach().float()
        block = self.q.block_size if self.lpbq else w.shape[1]
        self.packs[name] = gptq(w, gram, block, True, snap=lpbq_snap if self.lpbq else None)

    def _advance(self) -> None:
        if self.pending is None:
            return
        import torch

        if self.next_hidden is None:
            raise AssertionError(f"layer {self.pending}'s quantized output was not handed back (advance_to)")
        self.hidden = torch.as_tensor(self.next_hidden, device=self.device)
        prefix = f"model.layers.{self.pending}."
        for name in [n for n in self.packs if n.startswith(prefix)]:
            del self.packs[name]
        self.weights.overlay = {}
        self.next_hidden = self.pending = None
