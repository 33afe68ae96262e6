"""quantize.method = "mixed": GPTQ int4 blocks for every matrix, then the matrices whose int4 error
costs the most per extra byte moved to int8 blocks, inside the bytes the builder's default int4
(symmetric, block 32, float32 scales) gives the same matrices.

A matrix's cost is layer-local: each output feature's error with the int4 blocks on the
calibration states, (x (W - Q))^2 summed over tokens, times that feature's mean squared gradient
of the loss, E[(dL/dy)^2] (fisher.py): the first-order estimate of what the error costs at the
model's output. Nothing runs the whole model per matrix, so it serves any size (sequential.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str  # the ONNX MatMul
    error: float  # its output error with int4 blocks on the calibration states
    int4_bytes: int
    int8_bytes: int
    k: int  # inputs
    n: int  # outputs


def builder_bytes(k: int, n: int) -> int:
    """A [K, N] matrix as the builder's default stores it: 4-bit codes and a float32 scale per block of 32."""
    blocks = -(-k // 32)
    return n * blocks * (16 + 4)


def int8_bytes(k: int, n: int, block: int) -> int:
    """A [K, N] matrix in blocks.quantize8's layout: a code, and per block a float32 scale and a zero point."""
    blocks = -(-k // block)
    return n * blocks * (block + 4 + 1)


def choose_promotions(
    candidates: list[Candidate], reserved: int = 0, room: int | None = None
) -> tuple[set[str], int, int]:
    """The matrices to store in int8: the highest error per extra byte first, while all of them
    and `reserved` bytes (what the builder's graph does not have: a rotated tied table's MatMul)
    stay within the builder default's bytes, or within `room` extra bytes where given. Returns
    (names, extra bytes used, the room)."""
    if room is None:
        room = sum(builder_bytes(c.k, c.n) - c.int4_bytes for c in candidates) - reserved
    chosen, used = set(), 0
    for c in sorted(candidates, key=lambda c: c.error / (c.int8_bytes - c.int4_bytes), reverse=True):
        extra = c.int8_bytes - c.int4_bytes
        if used + extra <= room:
            chosen.add(c.name)
            used += extra
    return chosen, used, room
