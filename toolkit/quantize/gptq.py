"""GPTQ: a weight's 4-bit codes chosen column by column, each column's rounding error pushed onto the
columns not yet rounded through the inputs' second moments (Frantar et al. 2022), in the Packed
blocks of blocks.py. Columns go in decreasing order of their input's mean square ("act order"),
with static groups: every group's scale (and zero point) is chosen first, on the weights as they
are. Measured on SmolLM2-135M (block 64, float-trained checkpoint, an earlier run): +12.7%
perplexity on the evaluation text with act order, +17.9% without. Once the codes are chosen, each
group's scale is refit to them (refit_scales; docs/quality.md measures it).

Rows are independent: quantizing q, k and v apart with one input's X^T X gives the rows of
quantizing them stacked. Runs with torch on the calibration's device, on W transposed (a column
of W is then a contiguous row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blocks import Packed, _pack_nibbles, quantize

CHUNK_ROWS = 4096
REFIT_COLUMNS = 512  # refit_scales: columns whose error gradient one product makes
# The static groups' scale candidates (fractions of the range, each refit by least squares with its
# codes fixed). SmolLM2-135M, block 64, float-trained: mean KL 0.247 with these six, 0.258 with
# (0.8, 0.9, 1.0), and 0.279 with the range alone.
SHRINK = (0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


def gptq(w: Any, gram: Any, block: int, symmetric: bool = False, damp: float = 0.01, snap: Any = None) -> Packed:
    """GPTQ of a Linear weight w [out, in] (a torch tensor or an array) with 4-bit groups of `block`
    inputs, given gram = mean X^T X of its input [in, in] (None: blocks.quantize's search alone,
    unweighted). `snap(scales, zeros [groups, out]) -> (scales, zeros)` moves the groups' scales onto
    a grid the runtime stores (LPBQ's 4-bit block scales) before any code is chosen."""
    import torch

    if gram is None:
        return quantize(np.asarray(torch.as_tensor(w).cpu().numpy(), dtype=np.float32).T, block, None, symmetric)
    codes, s, z = gptq_codes(w, gram, block, symmetric, damp, snap)
    if snap is None:  # a snapped scale stays on its grid
        s = refit_scales(w, gram, codes, s, z, block)
    n, k0 = codes.shape
    k = -(-k0 // block) * block
    padded = np.zeros((n, k), dtype=np.uint8)
    padded[:, :k0] = codes
    zps = None if symmetric else _pack_nibbles(z.T.astype(np.uint8))
    return Packed(_pack_nibbles(padded.reshape(n, k // block, block)), np.ascontiguousarray(s.T), zps, k0, block)


def gptq_codes(
    w: Any, gram: Any, block: int, symmetric: bool, damp: float = 0.01, snap: Any = None, bits: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ's codes [out, in] (0 .. 2^bits - 1), and each group's scale and zero point [groups, out]
    (w = scale (code - zero); a snapped zero point may be a fraction, as K-quants' mins make it)."""
    import torch

    w = torch.as_tensor(w)
    device = w.device
    n, k0 = w.shape
    k = -(-k0 // block) * block  # the last group padded with dead inputs
    wt = torch.zeros((k, n), dtype=torch.float32, device=device)
    wt[:k0] = w.T
    h = torch.zeros((k, k), dtype=torch.float32, device=device)  # float32: down_proj's is 8192^2, 268 MB
    h[:k0, :k0] = torch.as_tensor(gram, device=device)
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    s, z = group_scales(wt, torch.diagonal(h).float(), block, symmetric, bits)  # [k // block, n] each
    if snap is not None:
        s, z = snap(s, z)
    perm = torch.argsort(torch.diagonal(h), descending=True)
    flipped = h[perm.flip(0)]  # H in act order, reversed (for _inverse_factor), one copy at a time
    del h
    flipped = flipped[:, perm.flip(0)]
    u = _inverse_factor(flipped)
    del flipped
    wt = wt[perm]
    s_col, z_col = s.repeat_interleave(block, 0)[perm], z.repeat_interleave(block, 0)[perm]
    top = float((1 << bits) - 1)
    codes = torch.empty((k, n), dtype=torch.uint8, device=device)
    for b0 in range(0, k, block):  # lazy batches of `block` columns (not the groups: those are static)
        b1 = b0 + block
        err = torch.empty((block, n), dtype=torch.float32, device=device)
        for j in range(block):
            c = b0 + j
            q = torch.clamp(torch.round(wt[c] / s_col[c] + z_col[c]), 0, top)
            codes[c] = q.to(torch.uint8)
            e = (wt[c] - s_col[c] * (q - z_col[c])) / u[c, c]
            wt[c + 1 : b1].addr_(u[c, c + 1 : b1], e, alpha=-1.0)
            err[j] = e
        wt[b1:].addmm_(u[b0:b1, b1:].T, err, alpha=-1.0)
    codes = codes[torch.argsort(perm)].T.contiguous()[:, :k0]
    return codes.cpu().numpy(), s.cpu().numpy(), z.cpu().numpy()


def refit_scales(w: Any, gram: Any, codes: np.ndarray, s: np.ndarray, z: np.ndarray, block: int) -> np.ndarray:
    """The groups' scales [groups, out] refit to GPTQ's codes. GPTQ chooses each group's scale
    before its codes, on the weights as they were; its error feedback then moves the codes. With
    every code and zero point fixed, each group's scale in turn (one sweep) takes the value of least
    output error on the calibration states, (W - S (Q - Z)) H (W - S (Q - Z))^T with H = X^T X over
    all inputs. A scale that would turn negative stays. As GPTQ batches its columns, the error's
    gradient is made for REFIT_COLUMNS columns at a time (one large product) and kept current
    within them; CHUNK_ROWS rows at a time (rows are independent)."""
    import torch

    w = torch.as_tensor(w).float()
    h = torch.as_tensor(gram, device=w.device).float()
    k0 = codes.shape[1]
    out = np.array(s, dtype=np.float32, copy=True)
    per_batch = max(1, REFIT_COLUMNS // block)
    for r0 in range(0, codes.shape[0], CHUNK_ROWS):
        rows = slice(r0, r0 + CHUNK_ROWS)
        scales = torch.from_numpy(out[:, rows]).to(w.device)  # [groups, rows]
        zeros = torch.from_numpy(np.ascontiguousarray(z[:, rows], dtype=np.float32)).to(w.device)
        d = torch.from_numpy(codes[rows]).to(w.device).float() - zeros.T.repeat_interleave(block, 1)[:, :k0]
        residual = w[rows] - scales.T.repeat_interleave(block, 1)[:, :k0] * d
        for g0 in range(0, scales.shape[0], per_batch):
            b0, b1 = g0 * block, min((g0 + per_batch) * block, k0)
            grad = residual @ h[:, b0:b1]  # half the gradient of the error on these columns, R H
            for g in range(g0, min(g0 + per_batch, scales.shape[0])):
                c0, c1 = g * block, min((g + 1) * block, k0)
                dg = d[:, c0:c1]
                hd = dg @ h[c0:c1, b0:b1]
                den = (hd[:, c0 - b0 : c1 - b0] * dg).sum(1)
                num = (dg * grad[:, c0 - b0 : c1 - b0]).sum(1)
                step = torch.where(den > 0, num / torch.clamp(den, min=1e-30), torch.zeros_like(den))
                step = torch.where(scales[g] + step > 0, step, torch.zeros_like(step))
                scales[g] += step
                residual[:, c0:c1] -= step[:, None] * dg
                grad -= step[:, None] * hd
        out[:, rows] = scales.cpu().numpy()
    return out


def group_scales(wt: Any, importance: Any, block: int, symmetric: bool, bits: int = 4) -> tuple[Any, Any]:
    """Each group's scale and zero point [groups, n] for W^T [k, n]: of SHRINK's fractions of the
    group's range (asymmetric: [min(w, 0), max(w, 0)], zero point 0..2^bits - 1; symmetric: +-max|w|,
    zero point 2^(bits-1)), with each candidate's codes fixed and its scale refit by least squares,
    the one of least error weighted by the inputs' mean squares `importance` [k]."""
    import torch

    top, half = float((1 << bits) - 1), float(1 << (bits - 1))
    k, n = wt.shape
    scales = torch.empty((k // block, n), dtype=torch.float32, device=wt.device)
    zeros = torch.empty_like(scales)
    hk = importance.reshape(k // block, block, 1)
    for c0 in range(0, n, CHUNK_ROWS):  # temporaries of a few hundred MB
        x = wt[:, c0 : c0 + CHUNK_ROWS].reshape(k // block, block, -1)
        hx = hk * x
        energy = (hx * x).sum(1)
        if symmetric:
            amax = x.abs().amax(1)
            zero = torch.full_like(amax, half)
        else:
            lo, hi = torch.clamp(x.amin(1), max=0.0), torch.clamp(x.amax(1), min=0.0)
        best_err = torch.full_like(energy, float("inf"))
        best_s, best_z = torch.ones_like(energy), torch.zeros_like(energy)
        for f in SHRINK:
            if symmetric:
                s = torch.where(amax > 0, amax * f / half, torch.ones_like(amax))
            else:
                s = torch.clamp((hi - lo) * f / top, min=1e-30)
                zero = torch.clamp(torch.round(-lo * f / s), 0, top)
            d = torch.clamp(torch.round(x / s[:, None]) + zero[:, None], 0, top) - zero[:, None]
            num, den = (hx * d).sum(1), (hk * d * d).sum(1)
            fit = torch.where(den > 0, num / torch.clamp(den, min=1e-30), torch.zeros_like(num))
            err = energy - fit * num  # the weighted error of the refit scale, sum h (x - fit d)^2
            better = (err < best_err) & (fit > 0)
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, fit, best_s)
            best_z = torch.where(better, zero, best_z)
        scales[:, c0 : c0 + CHUNK_ROWS], zeros[:, c0 : c0 + CHUNK_ROWS] = best_s, best_z
    return scales, zeros


def _inverse_factor(flipped: Any) -> Any:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U), float32, from one factorisation of
    `flipped` = P H P (P the order reversal; its diagonal is raised in place): with P H P = L L^T,
    U = P L^-1 P. X^T X summed in float32 from fewer distinct inputs than features (the first layer
    sees only the calibration text's tokens) is singular, and rounding leaves eigenvalues below
    zero that the damping may not cover: then the diagonal is raised by a tenth of its mean, and
    by its mean."""
    import torch

    step = float(torch.diagonal(flipped).mean())
    raised = 0.0
    for extra in (0.0, 0.1, 1.0):
        flipped.diagonal().add_((extra - raised) * step)
        raised = extra
        lower, info = torch.linalg.cholesky_ex(flipped)
        if int(info) == 0:
            return _lower_inverse(lower).flip(0, 1)
        del lower
    raise ValueError("X^T X is not positive definite even with its diagonal doubled: the inputs hold NaN or inf")


def _lower_inverse(lower: Any) -> Any:
    """The inverse of a lower triangular matrix, by halves: [[A, 0], [C, D]]^-1 is
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]]. Matrix products run at a CPU's full speed, a triangular
    solve against the identity at a third of it (8192 x 8192: 2.1 s against 3.6 s on 2 cores)."""
    import torch

    n = lower.shape[0]
    if n <= 1024:
        return torch.linalg.solve_triangular(lower, torch.eye(n, dtype=lower.dtype, device=lower.device), upper=False)
    m = n // 2
    a, d = _lower_inverse(lower[:m, :m]), _lower_inverse(lower[m:, m:])
    out = torch.zeros_like(lower)
    out[:m, :m], out[m:, m:] = a, d
    out[m:, :m] = -(d @ (lower[m:, :m] @ a))
    return out
