"""Static 16-bit activations for the NPU's graphs (w4a16): the range of every activation observed on
the calibration states (onnxruntime on the CPU, the float graph with its int4 weights), then a
QuantizeLinear/DequantizeLinear pair on each: the QDQ graph that onnxruntime-qnn compiles for the
HTP, and that onnxruntime's CPU provider runs as its reference. Data-movement ops (Reshape,
Transpose, Split) keep their input's encoding; a KV cache that is a graph input and output is
8- or 16-bit integers with one encoding per tensor, shared by the step's new rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
MOVES = ("Reshape", "Transpose", "Split")  # outputs are input values rearranged: the same encoding


@dataclass(frozen=True)
class Encoding:
    scale: float
    zero: int
    bits: int = 16

    @staticmethod
    def of(lo: float, hi: float, bits: int = 16) -> Encoding:
        """Asymmetric over [min(lo, 0), max(hi, 0)] (zero is exact)."""
        top = (1 << bits) - 1
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = max(hi - lo, 1e-8) / top
        return Encoding(scale, int(np.clip(round(-lo / scale), 0, top)), bits)

    @property
    def dtype(self) -> type:
        return np.uint16 if self.bits == 16 else np.uint8

    @property
    def elem(self) -> int:
        return TensorProto.UINT16 if self.bits == 16 else TensorProto.UINT8


def activations(model: ModelProto) -> list[str]:
    """The float activations of a graph: its float inputs and every node's outputs but the weights'
    DequantizeLinear ones."""
    names = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == FLOAT]
    return names + [o for n in model.graph.node if n.op_type != "DequantizeLinear" for o in n.output if o]


def observe(model: ModelProto, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """(min, max) of every float activation over the runs `feeds` (onnxruntime, CPU, no fusions)."""
    import onnxruntime as ort

    watched = ModelProto()
    watched.CopyFrom(model)
    have = {o.name for o in watched.graph.output}
    names = activations(model)
    watched.graph.output.extend(helper.make_tensor_value_info(n, FLOAT, None) for n in names if n not in have)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(watched.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    ranges: dict[str, tuple[float, float]] = {}
    for feed in feeds:
        values = dict(zip(outputs, session.run(None, feed), strict=True)) | feed
        for name in names:
            v = values[name]
            if v.dtype != np.float32 or v.size == 0:
                continue
            lo, hi = float(v.min()), float(v.max())
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return ranges


class _Rewriter:
    def __init__(self, model: ModelProto, encodings: dict[str, Encoding], io: dict[str, Encoding]):
        self.model, self.encodings, self.io = model, encodings, io
        self.nodes: list = []
        self.initializers: list = []
        self.rename: dict[str, str] = {}

    def pair(self, tensor: str, enc: Encoding, dq: str) -> None:
        """Q(tensor) -> DQ -> `dq`, with the encoding's scale and zero point as initializers."""
        scale, zero = f"{tensor}/q_scale", f"{tensor}/q_zero"
        self.initializers += [
            numpy_helper.from_array(np.array(enc.scale, np.float32), scale),
            numpy_helper.from_array(np.array(enc.zero, enc.dtype), zero),
        ]
        self.nodes.append(
            helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}/q"], name=f"{tensor}/Q")
        )
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}/q", scale, zero], [dq], name=f"{tensor}/DQ"))

    def constant(self, init: TensorProto) -> None:
        """A float initializer read by a compute op (a norm's gamma, a scalar): 16-bit, as the HTP takes it."""
        value = numpy_helper.to_array(init)
        enc = Encoding.of(value.min(), value.max())
        codes = np.clip(np.round(value / enc.scale) + enc.zero, 0, (1 << enc.bits) - 1).astype(enc.dtype)
        name = init.name
        self.initializers += [
            numpy_helper.from_array(codes, f"{name}/codes16"),
            numpy_helper.from_array(np.array(enc.scale, np.float32), f"{name}/q_scale"),
            numpy_helper.from_array(np.array(enc.zero, enc.dtype), f"{name}/q_zero"),
        ]
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}/codes16", f"{name}/q_scale", f"{name}/q_zero"],
                [f"{name}/dq"],
                name=f"{name}/DQ",
            )
        )
        self.rename[name] = f"{name}/dq"


def insert_qdq(model: ModelProto, encodings: dict[str, Encoding], io: dict[str, Encoding] | None = None) -> ModelProto:
    """The QDQ graph: every float activation through Q/DQ with its encoding, the float initializers
    that compute ops read as 16-bit constants, and the graph inputs and outputs named in `io` as
    raw integers of their encoding (a KV cache)."""
    io = io or {}
    r = _Rewriter(model, encodings, io)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    dq_scales = {n.input[1] for n in g.node if n.op_type == "DequantizeLinear"}
    dq_inputs = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    compute_reads = {i for n in g.node if n.op_type != "DequantizeLinear" for i in n.input}
    for name, init in inits.items():
        float_const = init.data_type == FLOAT and name not in dq_scales and name not in dq_inputs
        if float_const and name in compute_reads:
            r.constant(init)
        else:
            r.initializers.append(init)
    for i in g.input:
        if i.name in io:
            enc = io[i.name]
            scale, zero = f"{i.name}/q_scale", f"{i.name}/q_zero"
            r.initializers += [
                numpy_helper.from_array(np.array(enc.scale, np.float32), scale),
                numpy_helper.from_array(np.array(enc.zero, enc.dtype), zero),
            ]
            r.nodes.append(
                helper.make_node("DequantizeLinear", [i.name, scale, zero], [f"{i.name}/dq"], name=f"{i.name}/DQ")
            )
            r.rename[i.name] = f"{i.name}/dq"
        elif i.type.tensor_type.elem_type == FLOAT:
            r.pair(i.name, encodings[i.name], f"{i.name}/dq")
            r.rename[i.name] = f"{i.name}/dq"
    outputs = {o.name for o in g.output}
    for node in g.node:
        n = helper.make_node(
            node.op_type,
            [r.rename.get(x, x) for x in node.input],
            list(node.output),
            name=node.name,
            domain=node.domain,
        )
        n.attribute.extend(node.attribute)
        r.nodes.append(n)
        if node.op_type == "DequantizeLinear":
            continue
        for k, out in enumerate(node.output):
            if out in io:  # an integer graph output: Q straight into it, consumers read its DQ
                enc = io[out]
                n.output[k] = f"{out}/float"
                scale, zero = f"{out}/q_scale", f"{out}/q_zero"
                r.initializers += [
                    numpy_helper.from_array(np.array(enc.scale, np.float32), scale),
                    numpy_helper.from_array(np.array(enc.zero, enc.dtype), zero),
                ]
                r.nodes.append(
                    helper.make_node("QuantizeLinear", [f"{out}/float", scale, zero], [out], name=f"{out}/Q")
                )
                r.nodes.append(
                    helper.make_node("DequantizeLinear", [out, scale, zero], [f"{out}/dq"], name=f"{out}/DQ")
                )
                r.rename[out] = f"{out}/dq"
            elif out in outputs:  # a float graph output: the HTP dequantizes it
                n.output[k] = f"{out}/float"
                r.pair(f"{out}/float", encodings[out], out)
            else:
                r.pair(out, encodings[out], f"{out}/dq")
                r.rename[out] = f"{out}/dq"
    inputs = [_retyped(i, io) for i in g.input]
    result = [_retyped(o, io) for o in g.output]
    graph = helper.make_graph(r.nodes, g.name, inputs, result, r.initializers)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    out.ir_version = model.ir_version
    return out


def _retyped(value, io: dict[str, Encoding]):
    if value.name not in io:
        return value
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return helper.make_tensor_value_info(value.name, io[value.name].elem, shape)


def encodings_of(
    model: ModelProto, ranges: dict[str, tuple[float, float]], fixed: dict[str, Encoding]
) -> dict[str, Encoding]:
    """Each activation's encoding from its observed range; `fixed` ones as given; a data-movement
    op's outputs take its input's encoding, so the HTP moves codes without requantizing them."""
    out: dict[str, Encoding] = {}
    producer = {o: n for n in model.graph.node for o in n.output}
    for name in activations(model):
        if name in fixed:
            out[name] = fixed[name]
            continue
        node = producer.get(name)
        if node is not None and node.op_type in MOVES and node.input[0] in out:
            out[name] = out[node.input[0]]
            continue
        lo, hi = ranges.get(name, (0.0, 1.0))
        out[name] = Encoding.of(lo, hi)
    return out
