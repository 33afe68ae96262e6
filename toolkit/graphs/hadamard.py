"""Hadamard matrices (entries +-1, H H^T = n I) of the widths the served models have, and the
online Hadamard of an activation: x @ H / sqrt(n) as a few small MatMuls, one per Kronecker factor,
instead of one n x n matrix (toolkit/quantize/rotation.py folds the inverse into the next weight).

H(n) = S(2^k) (x) P(m): Sylvester's 2^k times a Paley core of order m (1, 12, 20, 36, ...), and
S(2^k) = S(2^a) (x) S(2^b). The online product reshapes x [..., n] to [..., f1, f2, ..., m] and
multiplies each axis by its factor, cycling the axes (a MatMul on the last one, then the last
axis moved first): SmolLM2's 1536 = 128 x 12 costs 140 multiply-adds a channel instead of 1536,
Phi-3.5's 8192 = 128 x 64 costs 192."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .ops import GraphWriter

ONLINE_HADAMARD = "/online_hadamard"  # in the names of its nodes and factors
LARGEST_FACTOR = 128  # a Sylvester part above this is split in two (S(2^a) (x) S(2^b))


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = the quadratic character of (j - i) mod the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> np.ndarray | None:
    """A Hadamard matrix of order m from Paley's constructions, or None: order q + 1 for a prime
    q = 3 mod 4 (I), order 2(q + 1) for a prime q = 1 mod 4 (II)."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        s = np.zeros((m, m), dtype=np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return s + np.eye(m, dtype=np.int64)
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:
        c = np.zeros((q + 1, q + 1), dtype=np.int64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, -1], [-1, -1]])
    return None


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _split(n: int) -> tuple[int, int] | None:
    """(2^k, m) with n = 2^k m and a Paley core of order m (m = 1: none), the largest 2^k; or None."""
    power = 1
    while n % (2 * power) == 0:
        power *= 2
    for p in [power // 2**i for i in range(power.bit_length())]:
        if n // p == 1 or _paley(n // p) is not None:
            return p, n // p
    return None


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n as S(2^k) (x) P(m), or None when n is not of that form."""
    split = _split(n)
    if split is None:
        return None
    power, core = split
    return np.kron(_sylvester(power), _sylvester(1) if core == 1 else _paley(core))


def factor_orders(n: int) -> list[int] | None:
    """The orders of the Kronecker factors of hadamard(n), outermost first, or None."""
    split = _split(n)
    if split is None:
        return None
    power, core = split
    half = 2 ** ((power.bit_length() - 1) // 2)
    orders = [power] if power <= LARGEST_FACTOR else [power // half, half]
    return [o for o in orders if o > 1] + ([core] if core > 1 else [])


def factors(orders: list[int]) -> list[np.ndarray]:
    """The float32 factor matrices of `orders` (factor_orders), the first scaled by 1 / sqrt(n) so
    that their Kronecker product is the orthogonal hadamard(n) / sqrt(n)."""
    n = math.prod(orders)
    found = [(_sylvester(o) if o & (o - 1) == 0 else _paley(o)).astype(np.float64) for o in orders]
    found[0] = found[0] / math.sqrt(n)
    return [f.astype(np.float32) for f in found]


def apply(x: Any, mats: list[Any], xp: Any) -> Any:
    """x [..., n] @ kron(mats) for numpy (xp = np) or torch (xp = torch) arrays."""
    lead = x.shape[:-1]
    x = x.reshape(*lead, *(m.shape[0] for m in mats))
    for m in reversed(mats):
        x = xp.moveaxis(x @ m, -1, len(lead))
    return x.reshape(*lead, -1)


def online(g: GraphWriter, base: str, x: str, orders: list[int]) -> str:
    """x [batch, sequence, n] @ hadamard(n) / sqrt(n) in the graph: a Reshape, a MatMul and a
    Transpose per factor, a Reshape (the factors are initializers written once, read by every layer)."""
    n = math.prod(orders)
    names = [f"/model{ONLINE_HADAMARD}/{n}/factor_{i}_order_{o}" for i, o in enumerate(orders)]
    if not any(t.name == names[0] for t in g.initializers):
        for name, mat in zip(names, factors(orders), strict=True):
            g.weight(name, mat)
    axes = len(orders)
    y = g.node("Reshape", f"{base}/Reshape", [x, g.constant([0, 0, *orders])])
    for i, name in enumerate(reversed(names)):
        y = g.node("MatMul", f"{base}/MatMul_{i}", [y, name])
        y = g.node("Transpose", f"{base}/Transpose_{i}", [y], perm=[0, 1, 1 + axes, *range(2, 1 + axes)])
    return g.node("Reshape", f"{base}/Reshape_back", [y, g.constant([0, 0, -1])])
