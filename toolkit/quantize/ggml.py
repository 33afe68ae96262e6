"""llama.cpp's block formats (GGUF tensor data) from slmkit's blocks: Q4_0 and Q4_1 carry the same
4-bit codes as MatMulNBits blocks of 32 (blocks.Packed: symmetric -> Q4_0, with zero points ->
Q4_1), so a calibrated choice (GPTQ, AWQ, the per-block search) lands on llama.cpp's grid with its
scale (and min) rounded to float16; Q8_0 and F16 come from gguf-py's reference quantizers (the
rounding of ggml-quants.c). Every function returns the tensor's bytes [rows, bytes per row].

    Q4_0: per 32 weights, float16 d, 16 bytes of codes: w = d (q - 8)
    Q4_1: per 32 weights, float16 d and m, 16 bytes of codes: w = d q + m
    codes: byte j holds weight j (low nibble) and weight j + 16 (high nibble)
"""

from __future__ import annotations

import numpy as np

from .blocks import Packed

GROUP = 32  # the weights of one Q4_0 / Q4_1 / Q8_0 block


def q4(p: Packed) -> tuple[np.ndarray, str]:
    """(bytes [rows, row bytes], "Q4_0" or "Q4_1") of 4-bit blocks of 32 weights whose rows span
    whole blocks."""
    if p.bits != 4 or p.block != GROUP or p.k % GROUP:
        raise ValueError(f"GGUF Q4 blocks hold 32 weights of 4 bits; these are {p.block} of {p.bits} over {p.k}")
    q, zp = p.nibbles()
    packed = q[..., :16] | (q[..., 16:] << 4)  # [rows, blocks, 16]
    d = p.scales.astype(np.float16)[..., None].view(np.uint8)  # [rows, blocks, 2]
    if p.zero_points is None:
        return np.concatenate([d, packed], -1).reshape(len(q), -1), "Q4_0"
    m = (-(zp.astype(np.float32)) * p.scales).astype(np.float16)[..., None].view(np.uint8)
    return np.concatenate([d, m, packed], -1).reshape(len(q), -1), "Q4_1"


def reference(w_out_in: np.ndarray, kind: str, chunk_rows: int = 4096) -> np.ndarray:
    """gguf-py's own quantizer (llama.cpp's round-to-nearest; F16 and F32 as they are) of a weight
    [rows, K], `chunk_rows` rows at a time: a 200k-token table's temporaries stay small."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F32":
        return np.ascontiguousarray(w_out_in, dtype=np.float32).view(np.uint8)
    parts = [gguf.quants.quantize(w_out_in[r : r + chunk_rows], qtype) for r in range(0, len(w_out_in), chunk_rows)]
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return out.view(np.uint8).reshape(len(w_out_in), -1)


def dequantize(data: np.ndarray, kind: str) -> np.ndarray:
    """The weights [rows, K] of GGUF tensor bytes [rows, row bytes] (gguf-py's dequantizer)."""
    import gguf

    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind])


def row_bytes(k: int, kind: str) -> int:
    """The bytes of one row of K weights."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    return k // block * size
