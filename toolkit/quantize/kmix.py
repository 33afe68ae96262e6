"""GGUF with measured types (the gguf target's quantize.method = "mixed"): every matrix calibrated
on the grid of each candidate type in the same layer-by-layer pass as the other targets' int4
(GPTQ with the groups' scales and mins snapped to the type's grid before any code is chosen:
kquants.kgrid), each candidate's cost at the model's output measured as mixed.py measures int4's
(its rows' output error on the calibration states, e H e^T, times the loss's sensitivity to those
outputs), then the types chosen by cost per byte within the bytes of llama.cpp's own Q4_K_M for the
same model (llama_q4_k_m: its rules, llama-quant.cpp). Rows that are not whole 256-weight
super-blocks (SmolLM2's 576) take the 32-weight types, as llama.cpp's quantizer falls back.
The next layer is calibrated on the states the cheapest candidate gives (the choice comes last)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .gptq import gptq_codes
from .kquants import KTYPES, SUPER, kgrid
from .sequential import Calibration

K_CANDIDATES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0")
LEGACY_CANDIDATES = ("Q4_0", "Q5_0", "Q8_0")
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama.cpp's, for rows not of whole super-blocks


def candidates(k: int) -> tuple[str, ...]:
    """The types a matrix whose rows hold k weights can take, cheapest first."""
    return K_CANDIDATES if k % SUPER == 0 else LEGACY_CANDIDATES


def row_bytes(k: int, kind: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    return k // block * size


@dataclass
class Grid:
    """A weight's codes on one type's grid: codes [out, in], scales and zero points [out, groups]."""

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    errors: np.ndarray  # each row's output error e H e^T on the calibration states

    def rows(self, order: np.ndarray | slice) -> Grid:
        return Grid(self.codes[order], self.scales[order], self.zeros[order], self.errors[order])

    def dequantize(self) -> np.ndarray:
        """W [in, out], as the pass advances on it."""
        n, k = self.codes.shape
        group = k // self.scales.shape[1]
        q = self.codes.reshape(n, -1, group).astype(np.float32)
        return ((q - self.zeros[..., None]) * self.scales[..., None]).reshape(n, k).T


ROWS = 16384  # GPTQ's rows are independent: a 200064-row lm_head goes this many at a time


def quantize_on(kind: str, w: Any, gram: Any) -> Grid:
    """GPTQ of w [out, in] on `kind`'s grid, and each row's output error, ROWS rows at a time."""
    import torch

    t = KTYPES[kind]
    w = torch.as_tensor(w).float()
    h = torch.as_tensor(gram, device=w.device).float()
    parts = []
    for r0 in range(0, w.shape[0], ROWS):
        rows = w[r0 : r0 + ROWS]
        codes, s, z = gptq_codes(rows, h, t.group, t.symmetric, snap=kgrid(kind), bits=t.bits)
        grid = Grid(codes, np.ascontiguousarray(s.T), np.ascontiguousarray(z.T), np.empty(0))
        error = rows - torch.from_numpy(np.ascontiguousarray(grid.dequantize().T)).to(w.device)
        grid.errors = ((error @ h) * error).sum(1).double().cpu().numpy()
        parts.append(grid)
    if len(parts) == 1:
        return parts[0]
    return Grid(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("codes", "scales", "zeros", "errors")))


class KQuantCalibration(Calibration):
    """sequential.Calibration whose Linears get a Grid per candidate type (grids()); the pass
    advances on the cheapest one. Needs quantize.method = "mixed" (the loss's sensitivities)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grids: dict[str, dict[str, Grid]] = {}  # HF Linear -> type -> its grid (one layer)
        self.in_sum2: dict[str, np.ndarray] = {}  # HF Linear -> the sum of its input's squares (imatrix)

    def _quantize(self, name: str, weight: Any, gram: Any) -> None:
        import torch

        self.in_sum2[name] = (torch.diagonal(gram).double() * self.tokens).cpu().numpy()
        w = weight.detach().float()
        self.grids[name] = {kind: quantize_on(kind, w, gram) for kind in candidates(w.shape[1])}
        self.packs[name] = next(iter(self.grids[name].values()))  # the cheapest: the next layer's input

    def linear_of(self, base: str) -> str:
        """The Hugging Face Linear (or lm_head) whose input the graph's MatMul `base` reads."""
        return self.family.hf_rows(base, self.shape, lambda name: name in self.in_sum2)[0][0]

    def grids_of(self, base: str, order: np.ndarray | None) -> dict[str, tuple[Grid, float]]:
        """The candidates of the graph's MatMul `base` (its Linears' rows stacked, in `order`), each
        with its cost at the model's output."""
        rows = self.family.hf_rows(base, self.shape, lambda name: name in self.grids)
        out = {}
        for kind in self.grids[rows[0][0]]:
            parts = [self.grids[n][kind].rows(slice(a, b)) for n, a, b in rows]
            grid = Grid(
                *(np.concatenate([getattr(p, f) for p in parts]) for f in ("codes", "scales", "zeros", "errors"))
            )
            sens = np.concatenate([self.sensitivity[n][slice(a, b)] for n, a, b in rows])
            cost = float((grid.errors * sens).sum())
            out[kind] = (grid.rows(order) if order is not None else grid, cost)
        return out

    def _advance(self) -> None:
        prefix = f"model.layers.{self.pending}." if self.pending is not None else None
        super()._advance()
        if prefix is not None:
            for name in [n for n in self.grids if n.startswith(prefix)]:
                del self.grids[name]

    def _choose(self, head_shape: tuple[int, int]) -> None:
        """Nothing to promote here: the GGUF writer chooses every tensor's type (choose())."""


def choose(options: dict[str, list[tuple[str, int, float]]], budget: int) -> tuple[dict[str, str], int]:
    """Each tensor's type: options[tensor] = [(type, bytes, cost), ...] cheapest first. Start from
    the cheapest of each, then take the upgrade of largest cost saved per byte that fits the budget,
    until none does. Returns (types, bytes)."""
    chosen = dict.fromkeys(options, 0)
    used = sum(opts[0][1] for opts in options.values())
    while True:
        best, best_gain = None, 0.0
        for name, opts in options.items():
            _, nbytes, cost = opts[chosen[name]]
            for j in range(chosen[name] + 1, len(opts)):
                extra, saved = opts[j][1] - nbytes, cost - opts[j][2]
                if saved > 0 and used + extra <= budget and (extra <= 0 or saved / extra > best_gain):
                    best, best_gain = (name, j, extra), saved / max(extra, 1)
        if best is None:
            break
        name, j, extra = best
        chosen[name], used = j, used + extra
    return {name: options[name][j][0] for name, j in chosen.items()}, used


def llama_q4_k_m(tensors: list[Any], layers: int, tied: bool) -> dict[str, str]:
    """The types llama.cpp's quantizer gives each matrix for Q4_K_M (llama_tensor_get_type for the
    phi3 and llama architectures): Q4_K; attn_v and ffn_down Q6_K in the first and last eighth of the
    layers and every third between; a fused attn_qkv Q5_K; the output (or a tied token table) Q6_K;
    and rows that are not whole super-blocks falling back (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0;
    the output to Q8_0)."""

    def more_bits(i: int, n: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    out = {}
    for t in tensors:
        if not t.k:
            continue
        name, layer = t.name, t.stage
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            out[name] = "Q6_K" if t.k % SUPER == 0 else "Q8_0"
            continue
        kind = "Q4_K"
        if name.endswith("attn_qkv.weight"):
            kind = "Q5_K"
        elif name.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(layer, layers):
            kind = "Q6_K"
        out[name] = kind if t.k % SUPER == 0 else FALLBACK[kind]
    return out
