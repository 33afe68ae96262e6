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
        q = np.empty((n, nb, self.block), dtype=np.float32)
        q[..., 0::2] = self.codes & 0x0F
        q[..., 1::2] = self.codes >> 4
        if self.zero_points is None:
            zp = np.full((n, nb), 8.0, dtype=np.float32)
        else:
            zp = np.empty((n, self.zero_points.shape[1] * 2), dtype=np.float32)
            zp[:, 0::2] = self.zero_points & 0x0F
            zp[:, 1::2] = self.zero_points >> 4
            zp = zp[:, :nb]
        w = (q - zp[..., None]) * self.scales[..., None]
        return w.reshape(n, nb * self.block)[:, : self.k].T


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
    search = _search_symmetric if symmetric else _search_asymmetric
    for r0 in range(0, n, chunk_rows):
        x = _blocks(w_kn[:, r0 : r0 + chunk_rows], block)
        q, s, z = search(x, h)
        codes[r0 : r0 + len(x)], scales[r0 : r0 + len(x)], zps[r0 : r0 + len(x)] = q, s, z
    return Packed(_pack_nibbles(codes), scales, None if symmetric else _pack_nibbles(zps), k, block)


def _refine(x, h, q, zp):
    """Least-squares scale for fixed codes: argmin_s sum h (x - s (q - zp))^2."""
    d = q - zp
    num = (h * x * d).sum(-1)
    den = (h * d * d).sum(-1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)


def _search(x: np.ndarray, h: np.ndarray, grid):
    """For each block, the (codes, scale, zero point) of least weighted error among the shrink
    candidates. `grid(f)` gives the starting scale and the zero point of candidate f; the scale is
    then refit by least squares with the codes fixed, and the codes recomputed."""
    best_err = np.full(x.shape[:-1], np.inf, dtype=np.float32)
    best_q = np.zeros(x.shape, dtype=np.uint8)
    best_s = np.zeros(x.shape[:-1], dtype=np.float32)
    best_z = np.zeros(x.shape[:-1], dtype=np.uint8)
    for f in SHRINK:
        s, zp = grid(f)
        q = np.clip(np.round(x / s[..., None]) + zp[..., None], 0, 15)
        s = _refine(x, h, q, zp[..., None])
        s = np.where(s > 0, s, 1.0)
        q = np.clip(np.round(x / s[..., None]) + zp[..., None], 0, 15)
        err = (h * (x - s[..., None] * (q - zp[..., None])) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[..., None], q, best_q).astype(np.uint8)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, zp, best_z).astype(np.uint8)
    return best_q, best_s.astype(np.float32), best_z


def _search_asymmetric(x: np.ndarray, h: np.ndarray):
    # The range holds 0, so the zero point fits 0..15.
    lo, hi = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)

    def grid(f):
        s = (hi - lo) * f / 15.0
        s = np.where(s > 0, s, 1.0)
        return s, np.clip(np.round(-lo * f / s), 0, 15)

    return _search(x, h, grid)


def _search_symmetric(x: np.ndarray, h: np.ndarray):
    amax = np.abs(x).max(-1)
    eight = np.full(amax.shape, 8.0)
    return _search(x, h, lambda f: (np.where(amax > 0, amax * f / 8.0, 1.0), eight))


def _minmax(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest of blocks x [..., block] to codes 0..top: (codes, scales, zero points)."""
    lo, hi = np.minimum(x.min(-1), 0.0), np.maximum(x.max(-1), 0.0)
    s = np.where(hi > lo, (hi - lo) / top, 1.0)
    z = np.clip(np.round(-lo / s), 0, top)
    return np.clip(np.round(x / s[..., None]) + z[..., None], 0, top), s, z


def quantize8(w_kn: np.ndarray, block: int) -> Packed:
    """Asymmetric 8-bit blocks (min-max: at 256 levels the rounding error is already small)."""
    q, s, z = _minmax(_blocks(w_kn, block), 255)
    return Packed(q.astype(np.uint8), s.astype(np.float32), z.astype(np.uint8), w_kn.shape[0], block, bits=8)
