"""What every graph writer shares: the model's shape, rope caches, the MatMulNBits quantizer the
builder uses, and GraphWriter, which makes nodes in order and appends each initializer to the
external data file as it is made (nothing of the model stays in memory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..plan.config import QuantizeConfig
from ..source.tensors import CheckpointTensors
from .external import ExternalData

MS = "com.microsoft"
FLOAT, INT64, FLOAT16 = 1, 7, 10
# The WASM graph's precision (export.wasm_graph = "int8"): every MatMul as DynamicQuantizeMatMul,
# uint8 weights per output channel (zero point 128) times int8 activations quantized per call.
# onnxruntime's WASM build has SIMD kernels for that integer GEMM and none for MatMulNBits, which
# it dequantizes to float32 on every call.
DYNAMIC_INT8 = "int8-dynamic"
WASM_GRAPH = "model-wasm.onnx"  # the file of that graph, beside model.onnx in a web bundle's model/
ELEM = {np.dtype(np.float32): FLOAT, np.dtype(np.float16): FLOAT16}


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    head: int
    intermediate: int
    vocab: int
    layers: int
    eps: float
    context: int
    original_context: int
    rotary: int  # dimensions of each head that rotary embeddings turn (head, or less: Phi-4-mini's 96 of 128)

    @staticmethod
    def of(config: dict[str, Any]) -> Shape:
        heads = config["num_attention_heads"]
        head = config.get("head_dim") or config["hidden_size"] // heads
        return Shape(
            hidden=config["hidden_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head=head,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            layers=config["num_hidden_layers"],
            eps=config.get("rms_norm_eps", 1e-5),
            context=config["max_position_embeddings"],
            original_context=(
                config.get("original_max_position_embeddings")
                or (config.get("rope_scaling") or {}).get("original_max_position_embeddings")
                or config["max_position_embeddings"]
            ),
            rotary=int(head * (config.get("partial_rotary_factor") or 1.0)),
        )


def rope_caches(config: dict[str, Any], shape: Shape) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cos/sin caches [positions, rotary/2] (rotary: the rotated dims of a head, all of them unless
    the config has a partial_rotary_factor), computed as the builder computes them (torch, float32):
    one pair, or for longrope a short pair (up to the original context) and a long pair, each
    scaled by sqrt(1 + ln(context / original) / ln(original))."""
    import torch

    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or scaling.get("rope_theta") or 10000.0

    def caches(factors: Any, length: int, mscale: Any) -> tuple[np.ndarray, np.ndarray]:
        dim = shape.rotary
        inv_freq = 1.0 / (factors * (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)))
        t = torch.arange(length, dtype=torch.int64).type_as(inv_freq)
        emb = torch.cat((torch.outer(t, inv_freq),) * 2, dim=-1)
        cos, sin = emb.cos() * mscale, emb.sin() * mscale
        return cos[:, : dim // 2].to(torch.float32).numpy(), sin[:, : dim // 2].to(torch.float32).numpy()

    if (scaling.get("type") or scaling.get("rope_type")) not in ("longrope", "su"):
        return {"": caches(1, shape.context, 1)}
    ratio = shape.context / shape.original_context
    default = np.sqrt(1 + np.log(ratio) / np.log(shape.original_context)) if ratio > 1.0 else 1.0
    mscale = {k: scaling.get(f"{k}_mscale") or default for k in ("short", "long")}
    return {
        "large": caches(torch.tensor(scaling["long_factor"], dtype=torch.float32), shape.context, mscale["long"]),
        "small": caches(
            torch.tensor(scaling["short_factor"], dtype=torch.float32), shape.original_context, mscale["short"]
        ),
    }


def blockwise(w_kn: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits blobs of a [K, N] float32 weight, from onnxruntime's own kernel (the one its
    default MatMulNBits quantizer calls, so the codes equal the builder's bit for bit)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, cols = w_kn.shape
    k_blocks = -(-rows // block)
    per_byte = 8 // bits
    if k_blocks * block != rows:
        w_kn = np.pad(w_kn, ((0, k_blocks * block - rows), (0, 0)))
    packed = np.zeros((cols, k_blocks, block // per_byte), dtype=np.uint8)
    zero_points = np.zeros((cols, -(-k_blocks // per_byte)), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=np.float32)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    scales = scales.astype(w_kn.dtype)  # float16 weights get float16 scales, as in the builder
    kernel(packed, w_kn, scales, zero_points, block, cols, rows, symmetric)
    return packed, scales, zero_points


def blockwise_rows(
    w_out_in: np.ndarray, dtype: type, bits: int, block: int, symmetric: bool, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """blockwise() of an HF Linear weight [N, K] in `dtype`, `chunk` output features at a time (the
    kernel quantizes each one on its own, so the blobs are the same): a 200k-token table's
    transposed copy stays 200 MB instead of 2.5 GB."""
    import torch

    n = w_out_in.shape[0]
    parts = []
    for r0 in range(0, n, chunk):
        w_kn = torch.from_numpy(w_out_in[r0 : r0 + chunk]).T.contiguous().numpy()  # 3x numpy's copy, 2 cores
        parts.append(blockwise(w_kn.astype(dtype, copy=False), bits, block, symmetric))
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def per_channel_u8(w_out_in: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N, K] uint8 with zero point 128, scales [N] float32) of an HF Linear weight [N, K]:
    each output channel's absolute maximum at 127 steps, rounded to nearest; `chunk` rows at a time
    (a 200k-token table's float temporaries stay small)."""
    n = w_out_in.shape[0]
    codes = np.empty(w_out_in.shape, dtype=np.uint8)
    scales = np.empty(n, dtype=np.float32)
    for r0 in range(0, n, chunk):
        w = np.asarray(w_out_in[r0 : r0 + chunk], dtype=np.float32)
        s = np.abs(w).max(axis=1) / 127.0
        s[s == 0] = 1.0
        codes[r0 : r0 + chunk] = np.clip(np.rint(w / s[:, None]), -127, 127) + 128
        scales[r0 : r0 + chunk] = s
    return codes, scales


def _stem(base: str) -> str:
    """The initializer name of a MatMul's weight, as the builder names it ("/model/x" -> "model.x.MatMul.weight")."""
    return base.lstrip("/").replace("/", ".") + ".MatMul.weight"


class Quantizer(Protocol):
    """Calibrated weights for a GraphWriter (toolkit/quantize/sequential.py): told where the writer
    is, it returns each matrix's blocks (and an int8 alternative it may choose at the end)."""

    def layer(self, index: int | None) -> None: ...  # layer `index` comes next; None: the final norm and lm_head

    def packed(self, base: str, w_out_in: np.ndarray) -> tuple[Any, Any]: ...  # (blocks, int8 blocks or None)

    def table(self, base: str, table: np.ndarray) -> Any: ...  # a token table's blocks (rows = tokens)

    def promoted(self) -> set[str]: ...  # the matrices whose int8 alternative is used


class GraphWriter:
    """Nodes in order, with initializers appended to the external data file as they are made. With a
    `quantizer`, int4 weights are its calibrated blocks instead of the builder's round-to-nearest."""

    def __init__(
        self,
        data: ExternalData,
        precision: str,
        q: QuantizeConfig,
        dtype: type = np.float32,
        quantizer: Quantizer | None = None,
    ):
        self.data, self.precision, self.q, self.dtype = data, precision, q, np.dtype(dtype)
        self.quantizer = quantizer
        # False where the runtime has no 8-bit MatMulNBits (onnxruntime-web's WebGPU): a small
        # matrix that would take int8 blocks (a tied table's rotation) stays float instead.
        self.int8_blocks = True
        # True for onnxruntime-web's WebGPU MatMulNBits, which reads zero points as uint32 words and
        # refuses a 2-D [N, bytes] tensor whose rows are not whole words (SmolLM2: 9 bytes): they are
        # written in the contrib op's 1-D form [N * bytes] (the same bytes; the CPU kernel takes both).
        self.flat_zero_points = False
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.constants: set[str] = set()
        self.alternatives: dict[str, list[str]] = {}  # matrix -> its int8 initializers (mixed precision)
        # Runtime LoRA: the checkpoint rows (module, start, end) of a MatMul that adapters target, or
        # None; each such MatMul gets A [K, r] and B [r, N] inputs (toolkit/export/lora.py).
        self.lora: Callable[[str], list[tuple[str, Any, Any]] | None] | None = None
        self.lora_slots: dict[str, dict[str, Any]] = {}
        self.lora_inputs: list[Any] = []

    def layer(self, index: int | None) -> None:
        """The writer starts decoder layer `index` (None: the final norm and lm_head)."""
        if self.quantizer is not None:
            self.quantizer.layer(index)

    def node(
        self, op: str, name: str, inputs: list[str], outputs: list[str] | None = None, domain: str = "", **attrs: Any
    ) -> str:
        from onnx import helper

        outputs = outputs or [f"{name}/output_0"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs[0]

    def constant(self, value: int | list[int]) -> str:
        """An INT64 Constant named as the builder names it: "1" for a scalar, "[1]" for a list."""
        from onnx import numpy_helper

        label = str(value)
        if label in self.constants:  # made once, read by every node that needs it
            return f"/model/constants/INT64/{label}"
        self.constants.add(label)
        tensor = numpy_helper.from_array(np.array(value, dtype=np.int64), "")
        return self.node(
            "Constant", f"/model/constant_nodes/INT64/{label}", [], [f"/model/constants/INT64/{label}"], value=tensor
        )

    @property
    def elem(self) -> int:
        return ELEM[self.dtype]

    def weight(self, name: str, array: np.ndarray, keep: bool = False) -> str:
        """An initializer; float32 values are stored in the graph's float type (unless `keep`)."""
        if array.dtype == np.float32 and not keep:
            array = array.astype(self.dtype, copy=False)
        self.initializers.append(self.data.tensor(name, array))
        return name

    def stacked(self, name: str, parts: Any) -> str:
        """An initializer [n, ...] written from n equally shaped parts, one at a time."""
        self.initializers.append(self.data.stacked(name, parts))
        return name

    def linear(self, base: str, w_out_in: np.ndarray, lm_head: bool = False) -> tuple[list[str], dict[str, Any]]:
        """Write the initializers of an HF Linear weight [out, in]: (their names, MatMulNBits
        attributes; empty for a float32 MatMul)."""
        import torch

        stem = _stem(base)
        if self.quantizer is not None and self.precision == "int4":
            blocks, alternative = self.quantizer.packed(base, w_out_in)
            if alternative is not None:
                self.alternatives[base] = self._blocks(f"{stem}_int8", alternative)
            return self._blocks(stem, blocks), self._attributes(
                blocks.k, blocks.scales.shape[0], blocks.bits, blocks.block
            )
        if self.precision in ("fp32", "fp16"):
            return [self.weight(stem, torch.from_numpy(w_out_in).T.contiguous().numpy())], {}
        if self.precision == DYNAMIC_INT8:
            return self._per_channel(stem, w_out_in, transposed=True)
        bits = 8 if self.precision == "int8" or (lm_head and self.q.lm_head == "int8") else 4
        return self._rounded(stem, w_out_in, bits)

    def _per_channel(self, stem: str, w_out_in: np.ndarray, transposed: bool) -> tuple[list[str], dict[str, Any]]:
        """DynamicQuantizeMatMul's initializers of an HF Linear weight [N, K]: codes [K, N] (or, not
        `transposed`, the rows [N, K] of a token table that a Transpose turns), scales and zero points [N]."""
        import torch

        codes, scales = per_channel_u8(w_out_in)
        if transposed:
            codes = torch.from_numpy(codes).T.contiguous().numpy()
        names = [
            self.weight(f"{stem}_U8", codes),
            self.weight(f"{stem}_scales", scales, keep=True),
            self.weight(f"{stem}_zero_points", np.full(len(scales), 128, dtype=np.uint8)),
        ]
        return names, {"op": "DynamicQuantizeMatMul", "K": w_out_in.shape[1], "N": w_out_in.shape[0]}

    def int8_table(self, base: str, table: np.ndarray) -> tuple[list[str], dict[str, Any]]:
        """A token table [rows, width] in per_channel_u8's rows: the embedding gathers its rows, and
        a tied lm_head reads it through a Transpose (constant-folded when the session loads)."""
        return self._per_channel(_stem(base), table, transposed=False)

    def int8_rows(self, base: str, w_out_in: np.ndarray) -> tuple[list[str], dict[str, Any]]:
        """An HF Linear weight [out, in] in int8 blocks of quantize.block_size (zero points as
        quantize.symmetric says), whatever the graph's precision and quantizer: a small matrix that
        int4 would cost more than it saves."""
        return self._rounded(_stem(base), w_out_in, 8)

    def _rounded(self, stem: str, w_out_in: np.ndarray, bits: int) -> tuple[list[str], dict[str, Any]]:
        """The onnxruntime kernel's round-to-nearest blocks of `bits` (the builder's default quantizer)."""
        packed, scales, zero_points = blockwise_rows(w_out_in, self.dtype, bits, self.q.block_size, self.q.symmetric)
        names = [self.weight(f"{stem}_Q{bits}", packed), self.weight(f"{stem}_scales", scales)]
        if not self.q.symmetric:
            names.append(self.weight(f"{stem}_zero_points", self._zero_point_layout(zero_points)))
        return names, self._attributes(w_out_in.shape[1], w_out_in.shape[0], bits, self.q.block_size)

    def _blocks(self, stem: str, p: Any) -> list[str]:
        """The initializers of calibrated blocks (toolkit/quantize/blocks.py Packed)."""
        names = [self.weight(f"{stem}_Q{p.bits}", p.codes), self.weight(f"{stem}_scales", p.scales)]
        if p.zero_points is not None:
            names.append(self.weight(f"{stem}_zero_points", self._zero_point_layout(p.zero_points)))
        return names

    def _zero_point_layout(self, zero_points: np.ndarray) -> np.ndarray:
        return zero_points.reshape(-1) if self.flat_zero_points else zero_points

    def _attributes(self, k: int, n: int, bits: int, block: int) -> dict[str, Any]:
        """MatMulNBits attributes of a [K, N] weight in blocks of `block` inputs."""
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
        if self.q.accuracy_level:
            attrs["accuracy_level"] = self.q.accuracy_level
        return attrs

    def table(self, base: str, table: np.ndarray) -> tuple[list[str], dict[str, Any]]:
        """A token table [rows, width] in the quantizer's blocks, for gather_blocks."""
        p = self.quantizer.table(base, table)
        return self._blocks(base.lstrip("/").replace("/", ".") + ".weight", p), self._attributes(
            p.k, p.scales.shape[0], p.bits, p.block
        )

    def use_alternatives(self) -> None:
        """Point each matrix the quantizer promoted at its int8 initializers; the unused blocks
        stay in the data file until ExternalData.compact drops them."""
        chosen = self.quantizer.promoted() if self.quantizer is not None else set()
        unused: set[str] = set()
        for base, names in self.alternatives.items():
            if base not in chosen:
                unused.update(names)
                continue
            node = next(n for n in self.nodes if n.op_type == "MatMulNBits" and n.name.startswith(f"{base}/MatMul"))
            unused.update(node.input[1:])
            del node.input[1:]
            node.input.extend(names)
            for attr in node.attribute:
                if attr.name == "bits":
                    attr.i = 8
        self.initializers = [t for t in self.initializers if t.name not in unused]

    def matmul(
        self,
        base: str,
        x: str,
        w_out_in: np.ndarray | None = None,
        lm_head: bool = False,
        output: str = "",
        written: tuple[list[str], dict[str, Any]] | None = None,
        float_weight: bool = False,
    ) -> str:
        """x @ W.T as MatMul (float precisions, or `float_weight`) or MatMulNBits, from a weight or
        from initializers `written`."""
        if float_weight:
            written = [self.weight(_stem(base), np.ascontiguousarray(w_out_in.T))], {}
        names, attrs = written or self.linear(base, w_out_in, lm_head)
        output = output or f"{base}/MatMul/output_0"
        pieces = self.lora(base) if self.lora is not None else None
        final, output = output, f"{base}/MatMul/base_output_0" if pieces else output
        if not attrs:
            out = self.node("MatMul", f"{base}/MatMul", [x, *names], [output])
        elif attrs.get("op") == "DynamicQuantizeMatMul":
            out = self.node("DynamicQuantizeMatMul", f"{base}/DynamicQuantizeMatMul", [x, *names], [output], MS)
        else:
            out = self.node("MatMulNBits", f"{base}/MatMul_Q{attrs['bits']}", [x, *names], [output], MS, **attrs)
        if not pieces:
            return out
        k, n = (attrs["K"], attrs["N"]) if attrs else (w_out_in.shape[1], w_out_in.shape[0])
        return self._lora_branch(base, x, out, final, k, n, pieces)

    def _lora_branch(self, base: str, x: str, out: str, final: str, k: int, n: int, pieces: list) -> str:
        """out + (x @ A) @ B with A [K, r] and B [r, N] graph inputs whose defaults are empty (r = 0:
        no adapter active adds zeros); the runtime binds an active adapter's tensors to them."""
        from onnx import helper, numpy_helper

        stem = base.lstrip("/").replace("/", ".")
        a, b = f"{stem}.lora_A", f"{stem}.lora_B"
        for name, dims, empty in ((a, [k, f"{stem}.rank"], (k, 0)), (b, [f"{stem}.rank", n], (0, n))):
            self.lora_inputs.append(helper.make_tensor_value_info(name, self.elem, dims))
            self.initializers.append(numpy_helper.from_array(np.zeros(empty, dtype=self.dtype), name))
        self.lora_slots[base] = {"A": a, "B": b, "K": k, "N": n, "dtype": self.dtype.name, "rows": pieces}
        low = self.node("MatMul", f"{base}/lora/MatMul_A", [x, a])
        delta = self.node("MatMul", f"{base}/lora/MatMul_B", [low, b])
        return self.node("Add", f"{base}/lora/Add", [out, delta], [final])


def layer_norm(g: GraphWriter, name: str, x: str, weights: CheckpointTensors, key: str, eps: float) -> str:
    """LayerNormalization with the checkpoint's `key`.weight and `key`.bias (PhiMoE, CLIP)."""
    scale = g.weight(f"{key}.weight", weights.float32(f"{key}.weight"))
    bias = g.weight(f"{key}.bias", weights.float32(f"{key}.bias"))
    return g.node("LayerNormalization", f"{name}/LayerNorm", [x, scale, bias], axis=-1, epsilon=eps)


def biased(g: GraphWriter, name: str, x: str, weights: CheckpointTensors, key: str, output: str = "") -> str:
    """x + the checkpoint's `key`.bias (a Linear's bias after its MatMul)."""
    bias = g.weight(f"{key}.bias", weights.float32(f"{key}.bias"))
    return g.node("Add", f"{name}/Add", [x, bias], [output] if output else None)


def gather_blocks(
    g: GraphWriter,
    base: str,
    names: list[str],
    attrs: dict[str, Any],
    ids: str,
    rows: int,
    width: int,
    output: str | None = None,
    const: Any = None,
) -> str:
    """Rows `ids` of a table [rows, width] stored as MatMulNBits blocks along its width (the
    builder's tied int4 embedding): Reshape of the codes, GatherBlockQuantized, and a Slice back to
    `width` when the blocks pad it. `const` makes the int64 shapes (default: Constant nodes)."""
    const = const or g.constant
    block, bits = attrs["block_size"], attrs["bits"]
    padded = -(-width // block) * block
    codes = g.node("Reshape", f"{base}/Reshape", [names[0], const([rows, padded * bits // 8])])
    if g.flat_zero_points and len(names) > 2:  # GatherBlockQuantized takes them [rows, bytes]
        blocks = padded // block
        zero_points = g.node(
            "Reshape", f"{base}/Reshape_zero_points", [names[2], const([rows, -(-blocks * bits // 8)])]
        )
        names = [names[0], names[1], zero_points]
    last = output if output and padded == width else None
    out = g.node(
        "GatherBlockQuantized",
        f"{base}/GatherBlockQuantized",
        [codes, ids, *names[1:]],
        [last] if last else None,
        MS,
        bits=bits,
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )
    if padded != width:
        out = g.node(
            "Slice", f"{base}/Slice", [out, const([0]), const([width]), const([-1])], [output] if output else None
        )
    return out


def gather_int8_rows(g: GraphWriter, base: str, names: list[str], ids: str, output: str | None = None) -> str:
    """Rows `ids` of a table stored by GraphWriter.int8_table, in float32: (codes - 128) * scale."""
    codes, scales, _ = names
    rows = g.node("Cast", f"{base}/Cast", [g.node("Gather", f"{base}/Gather", [codes, ids])], to=FLOAT)
    centred = g.node("Sub", f"{base}/Sub", [rows, g.weight(f"{codes}_centre", np.array(128.0, dtype=np.float32))])
    scale = g.node("Gather", f"{base}/Gather_scales", [scales, ids])
    scale = g.node("Unsqueeze", f"{base}/Unsqueeze", [scale, g.constant([-1])])
    return g.node("Mul", f"{base}/Mul", [centred, scale], [output] if output else None)


def save_graph(g: GraphWriter, inputs: list[Any], outputs: list[Any], path: Path, name: str = "main_graph") -> None:
    import onnx
    from onnx import helper

    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 22), helper.make_opsetid(MS, 1)],
        ir_version=10,
        producer_name="slmkit stream engine",
    )
    onnx.save_model(model, str(path))
