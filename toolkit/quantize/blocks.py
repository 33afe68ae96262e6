"""Blocks of quantized weights in the MatMulNBits / GatherBlockQuantized layout (Packed), and
slmkit's own choice of their values: 4-bit asymmetric blocks (a 4-bit code and zero point and a
float scale per block) whose scale and zero point minimise the (optionally activation-weighted)
squared error instead of min/max rounding (quantize); min-max 8-bit blocks (quantize8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Candidate shrinkage of the block range [min, max]; each candidate's scale is then refined by
# weighted least squares with its codes fixed.
SHRINK = np.linspace(0.7, 1.0, 13)


@dataclass
class Packed:
    """MatMulNBits layout of a weight W[K, N]: rows are the N output features."""

    codes: np.ndarray  # uint8 [N, n_blocks, block // 2], element 2i in the low nibble
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(n_blocks / 2)], block 2j in the low nibble
    k: int
    block: int
    bits: int = 4  # 8: one code and one zero point per byte

    def dequantize(self) -> np.ndarray:
        """W[K, N] as the runtime sees it."""
        n, nb, _ = self.codes.shape
        if self.bits == 8:
            q = self.codes.astype(np.float32)
            zp = self.zero_points.astype(np.float32) if self.zero_points is not None else np.full((n, nb), 128.0)
            w = (q - zp[..., None]) * self.scales[..., None]
            return w.reshape(n, nb * self.block)[:, : self.k].T
        q, zp = self.nibbles()
        w = (q.astype(np.float32) - zp.astype(np.float32)[..., None]) * self.scales[..., None]
        return w.reshape(n, nb * self.block)[:, : self.k].T

    def nibbles(self) -> tuple[np.ndarray, np.ndarray]:
        """4-bit blocks' codes [N, n_blocks, block] and zero points [N, n_blocks] (8 when
        symmetric), unpacked to one uint8 each."""
        n, nb, _ = self.codes.shape
        q = np.empty((n, nb, self.block), dtype=np.uint8)
        q[..., 0::2] = self.codes & 0x0F
        q[..., 1::2] = self.codes >> 4
        if self.zero_points is None:
            return q, np.full((n, nb), 8, dtype=np.uint8)
        zp = np.empty((n, self.zero_points.shape[1] * 2), dtype=np.uint8)
        zp[:, 0::2] = self.zero_points & 0x0F
        zp[:, 1::2] = self.zero_points >> 4
        return q, zp[:, :nb]

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes + (self.zero_points.nbytes if self.zero_points is not None else 0)

    def rows(self, start: int, stop: int) -> Packed:
        """Output features start..stop (a part of a fused weight: q of qkv, gate of gate_up)."""
        zp = self.zero_points[start:stop] if self.zero_points is not None else None
        return Packed(self.codes[start:stop], self.scales[start:stop], zp, self.k, self.block, self.bits)

    def take(self, order: np.ndarray) -> Packed:
        """The output features in `order` (QMoE's fc1 interleaves gate and up rows)."""
        zp = self.zero_points[order] if self.zero_points is not None else None
        return Packed(self.codes[order], self.scales[order], zp, self.k, self.block, self.bits)

    @staticmethod
    def stack(parts: list[Packed]) -> Packed:
        """The output features of several weights of one input, one after the other (q, k, v)."""
        if len(parts) == 1:
            return parts[0]
        zps = [p.zero_points for p in parts]
        zp = None if zps[0] is None else np.concatenate(zps)
        first = parts[0]
        return Packed(
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.scales for p in parts]),
            zp,
            first.k,
            first.block,
            first.bits,
        )


def _blocks(w_kn: np.ndarray, block: int) -> np.ndarray:
    """[N, n_blocks, block] view of W^T, zero-padded along K."""
    k, n = w_kn.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), dtype=np.float32)
    wt[:, :k] = w_kn.T
    return wt.reshape(n, nb, block)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 codes 0..15 along the last axis (padded to even length) -> packed pairs."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), dtype=values.dtype)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def quantize(
    w_kn: np.ndarray, block: int, importance: np.ndarray | None = None, symmetric: bool = False, chunk_rows: int = 4096
) -> Packed:
    """Quantize W[K, N] (MatMul weight) to 4 bits per element. `importance` [K] weights each input
    feature's error (mean squared activation from calibration); None weighs all equally."""
    k, n = w_kn.shape
    nb = -(-k // block)
    h_row = np.ones(nb * block, dtype=np.float32)
    if importance is not None:
        h_row[:k] = np.maximum(importance.astype(np.float32), 1e-8)
    h_row[k:] = 0.0  # padding never counts
    h = h_row.reshape(1, nb, block)
    codes = np.empty((n, nb, block), dtype=np.uint8)
    scales = np.empty((n, nb), dtype=np.float32)
    zps = np.empty((n, nb), dtype=np.uint8)
    for r0 in range(0, n, chunk_rows):
        x = _blocks(w_kn[:, r0 : r0 + chunk_rows], block)
        q, s, z = _search(x, h, symmetric)
        codes[r0 : r0 + len(x)], scales[r0 : r0 + len(x)], zps[r0 : r0 + len(x)] = q, s, z
    return Packed(_pack_nibbles(codes), scales, None if symmetric else _pack_nibbles(zps), k, block)


def _search(
    x: np.ndarray, h: np.ndarray, symmetric: bool, shrink: np.ndarray = SHRINK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each block of x [..., block] (weights h, broadcast), the (codes, scale, zero point) of
    least weighted error among the shrink candidates of its range: each candidate's scale is refit
    by least squares with its codes fixed, and the codes recomputed. Asymmetric: the range
    [min(x, 0), max(x, 0)] with a zero point 0..15; symmetric: +-max|x| with zero point 8. Runs
    with torch (its threads), on numpy arrays."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ht = torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32))
    if symmetric:
        amax = xt.abs().amax(-1)
        zp = torch.full_like(amax, 8.0)
    else:
        lo, hi = torch.clamp(xt.amin(-1), max=0.0), torch.clamp(xt.amax(-1), min=0.0)
    best_err = torch.full(xt.shape[:-1], float("inf"))
    best_s = torch.zeros(xt.shape[:-1])
    best_z = torch.zeros(xt.shape[:-1])
    for f in shrink.tolist():
        if symmetric:
            s = torch.where(amax > 0, amax * f / 8.0, torch.ones_like(amax))
        else:
            s = (hi - lo) * f / 15.0
            s = torch.where(s > 0, s, torch.ones_like(s))
            zp = torch.clamp(torch.round(-lo * f / s), 0, 15)
        q = torch.clamp(torch.round(xt / s[..., None]) + zp[..., None], 0, 15)
        d = q - zp[..., None]  # least-squares scale for these codes: argmin_s sum h (x - s d)^2
        num, den = (ht * xt * d).sum(-1), (ht * d * d).sum(-1)
        s = torch.where(den > 0, num / torch.clamp(den, min=1e-30), torch.zeros_like(num))
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.clamp(torch.round(xt / s[..., None]) + zp[..., None], 0, 15)
        err = (ht * (xt - s[..., None] * (q - zp[..., None])) ** 2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, zp, best_z)
    codes = torch.clamp(torch.round(xt / best_s[..., None]) + best_z[..., None], 0, 15)
    return codes.to(torch.uint8).numpy(), best_s.numpy(), best_z.to(torch.uint8).numpy()


def _minmax(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest of blocks x [..., block] to codes 0..top: (codes, scales, zero points)."""
    lo, hi = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)
    s = np.where(hi > lo, (hi - lo) / top, 1.0)
    z = np.clip(np.round(-lo / s), 0, top)
    return np.clip(np.round(x / s[..., None]) + z[..., None], 0, top), s, z


def quantize8(w_kn: np.ndarray, block: int, symmetric: bool = False, chunk_rows: int = 4096) -> Packed:
    """8-bit blocks of W[K, N], min-max (at 256 levels the rounding error is already small):
    asymmetric with a zero point per block, or symmetric around MatMulNBits' default 128. Output
    features are done `chunk_rows` at a time: a 200k-token table's temporaries stay small."""
    k, n = w_kn.shape
    nb = -(-k // block)
    codes = np.empty((n, nb, block), dtype=np.uint8)
    scales = np.empty((n, nb), dtype=np.float32)
    zps = None if symmetric else np.empty((n, nb), dtype=np.uint8)
    for r0 in range(0, n, chunk_rows):
        x = _blocks(w_kn[:, r0 : r0 + chunk_rows], block)
        rows = slice(r0, r0 + len(x))
        if symmetric:
            amax = np.abs(x).max(-1)
            s = np.where(amax > 0, amax / 127.0, 1.0)
            codes[rows] = np.clip(np.round(x / s[..., None]) + 128, 1, 255)
        else:
            q, s, z = _minmax(x, 255)
            codes[rows], zps[rows] = q, z
        scales[rows] = s
    return Packed(codes, scales, zps, k, block, bits=8)
