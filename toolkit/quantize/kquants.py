"""llama.cpp's block formats from slmkit's codes, so that a calibrated choice (GPTQ on a type's
grid: kgrid() snaps its groups' scales and mins before any code is chosen) lands in a GGUF file bit
for bit as ggml's dequantizer reads it. pack() takes codes [rows, k] and the per-group parameters the
grid gives, and returns the tensor's bytes [rows, row bytes].

    Q4_K (144 bytes / 256): fp16 d, dmin; 8 groups of 32 with 6-bit scale sc and min m; 4-bit codes
                            w = d sc q - dmin m
    Q5_K (176 bytes / 256): the same with 5-bit codes (high bits in qh)
    Q6_K (210 bytes / 256): 16 groups of 16 with an int8 scale; fp16 d; 6-bit codes  w = d sc (q - 32)
    Q4_0 (18 bytes / 32), Q5_0 (22), Q8_0 (34): fp16 d; codes around 8, 16, 0   w = d (q - zero)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPER = 256  # weights of one K-quant super-block


@dataclass(frozen=True)
class KType:
    name: str
    bits: int  # code bits
    group: int  # weights per scale
    symmetric: bool  # Q6_K and the legacy types: codes around a fixed zero, no min
    nbytes: int  # bytes of one block (K-quants: of 256 weights)
    block: int = SUPER  # weights of one block

    @property
    def bpw(self) -> float:
        return 8 * self.nbytes / self.block


KTYPES = {
    "Q4_K": KType("Q4_K", 4, 32, False, 144),
    "Q5_K": KType("Q5_K", 5, 32, False, 176),
    "Q6_K": KType("Q6_K", 6, 16, True, 210),
    "Q4_0": KType("Q4_0", 4, 32, True, 18, 32),
    "Q5_0": KType("Q5_0", 5, 32, True, 22, 32),
    "Q8_0": KType("Q8_0", 8, 32, True, 34, 32),
}


def kgrid(kind: str):
    """snap(scales [groups, n], zeros [groups, n]) -> (scales, zeros) on `kind`'s grid (torch):
    per super-block of 256 inputs, 6-bit scales (and mins) of an fp16 d (and dmin), or Q6_K's int8
    scales of an fp16 d. Zero points become non-integers (min / scale), as Q4_K and Q5_K store
    them; GPTQ rounds each weight against them."""
    t = KTYPES[kind]

    def snap(scales, zeros):
        import torch

        if t.block != SUPER:  # a legacy type: the scale is the block's fp16 d
            return scales.half().float(), zeros
        g, n = scales.shape
        per = SUPER // t.group
        s = scales.reshape(g // per, per, n)
        if t.symmetric:
            d = (s.abs().amax(1, keepdim=True) / 127.0).half().float().clamp(min=1e-30)
            sc = torch.clamp(torch.round(s / d), -128, 127)
            return (sc * d).reshape(g, n), zeros
        mins = (scales * zeros).reshape(g // per, per, n)  # w = s q - s z: the min's size s z >= 0
        d = (s.amax(1, keepdim=True) / 63.0).half().float().clamp(min=1e-30)
        dmin = (mins.amax(1, keepdim=True) / 63.0).half().float().clamp(min=1e-30)
        sc = torch.clamp(torch.round(s / d), 1, 63)
        m = torch.clamp(torch.round(mins / dmin), 0, 63)
        snapped = (sc * d).reshape(g, n)
        return snapped, ((m * dmin).reshape(g, n) / snapped)

    return snap


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)


def pack(kind: str, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """Bytes [rows, k / 256 * block bytes] of codes [rows, k] (0 .. 2^bits - 1) whose groups have
    scales and zeros [rows, k / group] already on kind's grid (kgrid): the super-blocks' d (and dmin)
    and integer scales (and mins) are recovered from them exactly."""
    t = KTYPES[kind]
    rows, k = codes.shape
    if t.block != SUPER:
        return _legacy(t, codes.reshape(rows, k // 32, 32).astype(np.uint8), scales).reshape(rows, -1)
    nb, per = k // SUPER, SUPER // t.group
    s = scales.reshape(rows, nb, per).astype(np.float32)
    q = codes.reshape(rows, nb, SUPER).astype(np.uint8)
    if t.symmetric:
        d = (np.abs(s).max(-1, keepdims=True) / 127.0).astype(np.float16).astype(np.float32)
        sc = np.clip(np.round(s / np.maximum(d, 1e-30)), -128, 127).astype(np.int8)
        return _q6(q, sc, d[..., 0]).reshape(rows, -1)
    mins = (s * zeros.reshape(rows, nb, per)).astype(np.float32)
    d = (s.max(-1, keepdims=True) / 63.0).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1, keepdims=True) / 63.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(s / np.maximum(d, 1e-30)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(mins / np.maximum(dmin, 1e-30)), 0, 63).astype(np.uint8)
    head = np.concatenate([_fp16(d), _fp16(dmin), _scales12(sc, m)], -1)
    body = _q4(q) if t.bits == 4 else _q5(q)
    return np.concatenate([head, body], -1).reshape(rows, -1)


def _legacy(t: KType, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Q4_0, Q5_0 and Q8_0 blocks [rows, blocks, bytes]: fp16 d, then (Q5_0) the fifth bits as one
    little-endian 32-bit word, then the codes (4-bit: byte j holds weights j and j + 16)."""
    d = _fp16(scales.astype(np.float32)[..., None])
    if t.bits == 8:
        return np.concatenate([d, (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)], -1)
    low = (q & 0xF)[..., :16] | ((q & 0xF)[..., 16:] << 4)
    if t.bits == 4:
        return np.concatenate([d, low], -1)
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    qh = bits.sum(-1, dtype=np.uint32)[..., None].astype("<u4").view(np.uint8)
    return np.concatenate([d, qh, low], -1)


def _scales12(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """ggml's 12-byte packing of 8 6-bit scales and mins (get_scale_min_k4's inverse)."""
    out = np.zeros((*sc.shape[:-1], 12), dtype=np.uint8)
    out[..., 0:4] = sc[..., 0:4] | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = m[..., 0:4] | ((m[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0xF) | ((m[..., 4:8] & 0xF) << 4)
    return out


def _q4(q: np.ndarray) -> np.ndarray:
    """128 bytes per super-block: for each 64 weights, byte l holds weight l (low) and l + 32 (high)."""
    x = q.reshape(*q.shape[:-1], 4, 2, 32)
    return (x[..., 0, :] | (x[..., 1, :] << 4)).reshape(*q.shape[:-1], 128)


def _q5(q: np.ndarray) -> np.ndarray:
    """qh (32 bytes: bit 2i and 2i+1 of byte j are the fifth bits of weights 64i + j and 64i + 32 + j)
    then the low nibbles as Q4_K packs them."""
    x = q.reshape(*q.shape[:-1], 4, 2, 32)
    high = (x >> 4) & 1
    qh = np.zeros((*q.shape[:-1], 32), dtype=np.uint8)
    for i in range(4):
        qh |= (high[..., i, 0, :] << (2 * i)) | (high[..., i, 1, :] << (2 * i + 1))
    return np.concatenate([qh, _q4(q & 0xF)], -1)


def _q6(q: np.ndarray, sc: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ql (128), qh (64), 16 int8 scales, fp16 d: per 128 weights, ql byte l holds weights l and
    l + 64 (low nibbles), byte l + 32 weights l + 32 and l + 96; qh byte l their four high pairs."""
    x = q.reshape(*q.shape[:-1], 2, 4, 32)  # [.., half, quarter, l]
    low, high = x & 0xF, x >> 4
    ql = np.concatenate([low[..., 0, :] | (low[..., 2, :] << 4), low[..., 1, :] | (low[..., 3, :] << 4)], -1)
    qh = high[..., 0, :] | (high[..., 1, :] << 2) | (high[..., 2, :] << 4) | (high[..., 3, :] << 6)
    parts = [ql.reshape(*q.shape[:-1], 128), qh.reshape(*q.shape[:-1], 64), sc.view(np.uint8), _fp16(d[..., None])]
    return np.concatenate(parts, -1)
