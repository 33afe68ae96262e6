"""Static-shape graphs of plain ONNX ops for an NPU (the Hexagon HTP through onnxruntime-qnn): every
shape fixed at write time, attention over a fixed-length KV cache that comes in as an input and goes
out with the step's keys and values scattered into it, rotary tables and the attention mask as
inputs, RMSNorm as one SimplifiedLayerNormalization (the HTP's own RmsNorm), weights as
DequantizeLinear of int4 or int8 codes (per output channel, or LPBQ: 4-bit block scales times a
per-channel one). Activations stay float here; toolkit/quantize/qdq.py adds their 16-bit
quantization. The graph is built in memory: it holds one part of a decoder.

Ops the HTP runs (onnxruntime-qnn 2.7, checked with CPU fallback disabled): MatMul, Add, Mul, Sub,
Sigmoid, Softmax, Reshape, Transpose, Split, Concat, ScatterND, SimplifiedLayerNormalization.
Avoided: RotaryEmbedding (not supported), Reciprocal (wrong values when its input's range is below
1), Where with a broadcast condition (fails at run time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .external import ExternalData

MS = "com.microsoft"
OPSET = 21  # int4 DequantizeLinear with block_size


@dataclass
class QuantWeight:
    """A MatMul weight W[K, N] as signed integer codes and their scales (symmetric: no zero point)."""

    codes: np.ndarray  # int8 [K, N], in -8..7 (bits 4) or -128..127 (bits 8)
    scale: np.ndarray  # float32 [N]: per output channel (LPBQ: the channel's scale of the block scales)
    bits: int = 4
    block_scales: np.ndarray | None = None  # LPBQ: uint8 [K / block, N] in 1..15
    block: int = 0

    def dequantize(self) -> np.ndarray:
        if self.block_scales is None:
            return self.codes.astype(np.float32) * self.scale
        k, n = self.codes.shape
        scales = self.block_scales.astype(np.float32) * self.scale  # [K / block, N]
        return (self.codes.reshape(k // self.block, self.block, n) * scales[:, None, :]).reshape(k, n)

    @property
    def nbytes(self) -> int:
        codes = self.codes.size * self.bits // 8
        return codes + self.scale.nbytes + (self.block_scales.nbytes if self.block_scales is not None else 0)


def _raw(t: TensorProto) -> TensorProto:
    """The same tensor with its values in raw_data (numpy_helper may store INT8 as int32_data)."""
    if t.raw_data:
        return t
    return helper.make_tensor(t.name, t.data_type, list(t.dims), numpy_helper.to_array(t).tobytes(), raw=True)


def int_tensor(name: str, values: np.ndarray, bits: int) -> TensorProto:
    """An INT4 (two codes per byte, the first in the low nibble) or INT8 initializer."""
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    flat = (values.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = flat[0::2] | (flat[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, list(values.shape), packed.tobytes(), raw=True)


class StaticGraph:
    """Nodes and initializers of one graph, in the order they are made. Tensor names are chosen by
    the writer, so that graphs of other static shapes from the same writer share them (the
    activation ranges calibrated on one apply to all)."""

    def __init__(self, data: ExternalData | None = None, shared: dict[str, TensorProto] | None = None) -> None:
        self.nodes: list = []
        self.initializers: dict[str, TensorProto] = {}
        self.inputs: list = []
        self.outputs: list = []
        # weight codes go to `data` as they are made, once for all graphs that pass the same `shared`
        self.data, self.shared = data, shared if shared is not None else {}

    def op(self, op_type: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def const(self, name: str, value: np.ndarray | float | list) -> str:
        if name not in self.initializers:
            array = np.asarray(value)
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def weight(self, name: str, w: QuantWeight) -> str:
        """W as the HTP reads it: DequantizeLinear of the codes (LPBQ: of the codes with block scales
        that are themselves DequantizeLinear of 4-bit integers with the channel's scale)."""
        out = f"{name}/weight"
        k, n = w.codes.shape
        codes = self.shared.get(f"{name}/codes")
        if codes is None:
            codes = int_tensor(f"{name}/codes", w.codes, w.bits)
            if self.data is not None:
                codes = self.data.packed(codes.name, codes if w.bits == 4 else _raw(codes))
            self.shared[codes.name] = codes
        self.initializers[codes.name] = codes
        kind = TensorProto.INT4 if w.bits == 4 else TensorProto.INT8
        if w.block_scales is None:
            self.const(f"{name}/scale", w.scale.astype(np.float32))
            self.initializers[f"{name}/zero"] = helper.make_tensor(f"{name}/zero", kind, [n], [0] * n)
            return self.op("DequantizeLinear", [f"{name}/codes", f"{name}/scale", f"{name}/zero"], out, axis=1)
        nb = k // w.block
        self.const(f"{name}/block_codes", w.block_scales.astype(np.uint8))
        self.const(f"{name}/scale", w.scale.astype(np.float32))
        self.const(f"{name}/block_zero", np.zeros(n, dtype=np.uint8))
        blocks = self.op(
            "DequantizeLinear", [f"{name}/block_codes", f"{name}/scale", f"{name}/block_zero"], f"{name}/blocks", axis=1
        )
        self.initializers[f"{name}/zero"] = helper.make_tensor(f"{name}/zero", kind, [nb, n], [0] * (nb * n))
        return self.op("DequantizeLinear", [f"{name}/codes", blocks, f"{name}/zero"], out, axis=0, block_size=w.block)

    def input(self, name: str, elem: int, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape: list[int]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def model(self, name: str):
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, list(self.initializers.values()))
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)], producer_name="slmkit"
        )
        model.ir_version = 10
        return model


# -- building blocks ------------------------------------------------------------------------------


def rms_norm(g: StaticGraph, name: str, x: str, gamma: np.ndarray, eps: float) -> str:
    """RMSNorm as one SimplifiedLayerNormalization: the HTP's RmsNorm, computed at its own precision
    (a Pow/ReduceMean/Sqrt/Div chain squares the residual stream into a 16-bit range it does not fit)."""
    w = g.const(f"{name}/gamma", gamma.astype(np.float32))
    return g.op("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=float(eps), stash_type=1)


def linear(g: StaticGraph, name: str, x: str, w: QuantWeight) -> str:
    return g.op("MatMul", [x, g.weight(name, w)], name)


def heads(g: StaticGraph, name: str, x: str, s: int, n: int, d: int) -> str:
    """[1, S, n*d] -> [1, n, S, d]."""
    shaped = g.op("Reshape", [x, g.const(f"shape_{s}_{n}_{d}", np.array([1, s, n, d], np.int64))], f"{name}/4d")
    return g.op("Transpose", [shaped], f"{name}/heads", perm=[0, 2, 1, 3])


def rope(g: StaticGraph, name: str, x: str, cos: str, sin: str, head: int, rotary: int) -> str:
    """Rotary embedding of x [1, n, S, head] on its first `rotary` dims (the rest pass through), with
    cos/sin [1, 1, S, rotary/2] from the positions graph: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)."""
    half = rotary // 2
    sizes = [half, half] + ([head - rotary] if rotary < head else [])
    parts = [f"{name}/x1", f"{name}/x2"] + ([f"{name}/pass"] if rotary < head else [])
    g.nodes.append(
        helper.make_node(
            "Split",
            [x, g.const(f"split_{'_'.join(map(str, sizes))}", np.array(sizes, np.int64))],
            parts,
            name=f"{name}/split",
            axis=-1,
        )
    )
    x1, x2 = parts[:2]
    a = g.op("Sub", [g.op("Mul", [x1, cos], f"{name}/x1c"), g.op("Mul", [x2, sin], f"{name}/x2s")], f"{name}/r1")
    b = g.op("Add", [g.op("Mul", [x2, cos], f"{name}/x2c"), g.op("Mul", [x1, sin], f"{name}/x1s")], f"{name}/r2")
    return g.op("Concat", [a, b] + parts[2:], f"{name}/rotated", axis=-1)


@dataclass(frozen=True)
class Step:
    """The static shape of one graph: S tokens a step over a cache of `context` positions."""

    tokens: int
    context: int


def attention(
    g: StaticGraph,
    name: str,
    q: str,
    k: str,
    v: str,
    past: tuple[str, str],
    present: tuple[str, str],
    step: Step,
    n_heads: int,
    kv_heads: int,
    head: int,
) -> str:
    """Attention of q [1, H, S, d] over the cache after this step's keys and values (k, v
    [1, Hkv, S, d]) are scattered into it at the positions of the step (kv_index): present = the
    cache [1, Hkv, context, d]. Grouped queries attend as [1, Hkv, group*S, d] against their one
    key/value head, with no copy of the cache per query head. Masked scores become exactly -mask
    (scores * keep + (keep - 1) * mask_value), so the 16-bit range of the scores is the real scores'
    range and the mask's one value. Returns [1, S, H*d]."""
    s, group = step.tokens, n_heads // kv_heads
    key = g.op("ScatterND", [past[0], "kv_index", k], present[0])
    value = g.op("ScatterND", [past[1], "kv_index", v], present[1])
    if group > 1:
        q = g.op(
            "Reshape",
            [q, g.const(f"shape_{kv_heads}_{group * s}_{head}", np.array([1, kv_heads, group * s, head], np.int64))],
            f"{name}/grouped",
        )
    keys_t = g.op("Transpose", [key], f"{name}/keys_t", perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, keys_t], f"{name}/qk")
    scores = g.op("Mul", [scores, g.const(f"{name}/scale", np.float32(1.0 / np.sqrt(head)))], f"{name}/scores")
    kept = g.op("Mul", [scores, "attention_keep"], f"{name}/kept")
    masked = g.op("Add", [kept, "attention_bias"], f"{name}/masked")
    probs = g.op("Softmax", [masked], f"{name}/probs", axis=-1)
    out = g.op("MatMul", [probs, value], f"{name}/context")  # [1, Hkv, group*S, d]
    if group > 1:
        out = g.op(
            "Reshape",
            [out, g.const(f"shape_{n_heads}_{s}_{head}", np.array([1, n_heads, s, head], np.int64))],
            f"{name}/ungrouped",
        )
    out = g.op("Transpose", [out], f"{name}/tokens", perm=[0, 2, 1, 3])
    return g.op(
        "Reshape",
        [out, g.const(f"shape_{s}_{n_heads * head}", np.array([1, s, n_heads * head], np.int64))],
        f"{name}/merged",
    )
