"""GPTQ: a weight's int4 codes chosen column by column with each column's error pushed onto the
columns not yet quantized, through the inputs' second moments (the same Packed blocks as blocks.py).
benchmarks/int4_methods.py measures it against the other methods.
"""

from __future__ import annotations

import numpy as np

from .blocks import Packed, _pack_nibbles, _search_asymmetric, quantize


def gptq(w_kn: np.ndarray, gram: np.ndarray | None, block: int, damp: float = 0.01) -> Packed:
    """GPTQ (Frantar et al. 2022) with static asymmetric 4-bit groups of `block` inputs: the
    columns of W^T are quantized in input order and each one's error is pushed onto the columns
    not yet quantized through the Cholesky factor of H^-1 (H = mean X^T X of the layer's input).
    Each group's scale and zero point are chosen, when the group is reached, by int4's search
    on the error-updated weights. Without `gram` (a weight calibration never reached), that
    search alone, unweighted."""
    if gram is None:
        return quantize(w_kn, block)
    k0, n = w_kn.shape
    k = -(-k0 // block) * block  # the last group padded with dead inputs
    w = np.zeros((n, k))
    w[:, :k0] = w_kn.T
    h = np.zeros((k, k))
    h[:k0, :k0] = gram
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    codes = np.empty((n, k), dtype=np.uint8)
    scales = np.empty((n, k // block), dtype=np.float32)
    zps = np.empty((n, k // block), dtype=np.uint8)
    for g, b0 in enumerate(range(0, k, block)):
        b1 = b0 + block
        wb = w[:, b0:b1]
        _, s, z = _search_asymmetric(wb[:, None, :].astype(np.float32), np.diag(h)[None, None, b0:b1])
        s, z = s[:, 0].astype(np.float64), z[:, 0].astype(np.float64)
        scales[:, g], zps[:, g] = s, z
        err = np.empty_like(wb)
        for j in range(block):
            q = np.clip(np.round(wb[:, j] / s) + z, 0, 15)
            codes[:, b0 + j] = q
            e = (wb[:, j] - s * (q - z)) / u[b0 + j, b0 + j]
            wb[:, j + 1 :] -= np.outer(e, u[b0 + j, b0 + j + 1 : b1])
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return Packed(_pack_nibbles(codes.reshape(n, k // block, block)), scales, _pack_nibbles(zps), k0, block)
