"""The decoder for the HTP, layer by layer in one streamed pass:

1. NpuCalibration reads layer i and chooses its int4 codes (GPTQ on the calibration states);
2. the layer alone, at the calibration's shape (512 tokens over a 512-slot cache), runs in float on
   those states: every activation's range, the KV cache's encoding, the mask value;
3. its QDQ graph runs on the same states: the next layer's input (so each layer is calibrated on
   what its quantized predecessors give, 16-bit activations included);
4. the layer is appended to the current part's prompt graph (N tokens a step) and token graph (1),
   which share its weight codes in one data file. A part closes before its weights would pass
   npu.part_mb; the last one ends with the final norm and the lm_head (int8 per channel).

Memory holds one layer, its calibration state and one part's graph structure (the codes are on
disk), whatever the model's size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ...families import family_of
from ...graphs.external import ExternalData
from ...graphs.ops import Shape, rope_caches
from ...graphs.static import QuantWeight, StaticGraph, Step
from ...plan.config import BuildPlan
from ...progress import bar
from ...quantize.npu import NpuCalibration, int8_channel
from ...quantize.qdq import Encoding, encodings_of, insert_qdq, observe
from ...source.checkpoint import SourceModel
from ...source.tensors import CheckpointTensors
from .cpu_graphs import positions_feed

CALIBRATION_MASK = 1.0e4  # the calibration's masked scores: softmax gives them 0 exactly
MASK_MARGIN = 30.0  # the mask sits this far below the lowest real score (e^-30: nothing)
MIN_MASK = 60.0
MB = 1 << 20  # npu.part_mb's unit
F32 = TensorProto.FLOAT


@dataclass
class Part:
    """One part of the decoder: a prompt graph and a token graph over the same weight codes."""

    index: int
    folder: Path
    shape: Shape
    steps: dict[str, Step]
    kv: dict[str, Encoding] = field(default_factory=dict)
    encodings: dict[str, Encoding] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    weight_bytes: int = 0
    mask: float = MIN_MASK
    x: str = ""
    head: bool = False  # the final norm and lm_head alone: onnxruntime-genai runs it on the last window only

    def __post_init__(self) -> None:
        self.data = ExternalData(self.folder / f"part{self.index}.data")
        shared: dict = {}
        self.graphs = {kind: StaticGraph(self.data, shared) for kind in self.steps}
        for kind, step in self.steps.items():
            if self.head:
                self.graphs[kind].input(self.x, F32, [1, step.tokens, self.shape.hidden])
            else:
                _inputs(self.graphs[kind], self.shape, step, self.x)

    def add_layer(self, write: Callable[[StaticGraph, Step, str], str], index: int, kv: dict[str, Encoding]) -> None:
        for kind, step in self.steps.items():
            g = self.graphs[kind]
            _cache(g, self.shape, step, index)
            out = write(g, step, self.x)
            for part in ("key", "value"):
                g.output(f"present.{index}.{part}", F32, [1, self.shape.kv_heads, step.context, self.shape.head])
        self.x = out
        self.layers.append(index)
        self.kv.update(kv)

    def close(self, output: str, width: int) -> dict[str, Any]:
        """Save the QDQ prompt and token graphs; returns what genai_config.json says of the part."""
        if not self.head:
            self.encodings["attention_bias"] = Encoding.of(-self.mask, 0.0)
        files = {}
        for kind, step in self.steps.items():
            g = self.graphs[kind]
            g.outputs.insert(0, onnx.helper.make_tensor_value_info(output, F32, [1, step.tokens, width]))
            model = insert_qdq(g.model(f"part{self.index}_{kind}"), self.encodings, self.kv)
            path = self.folder / f"part{self.index}_{kind}.onnx"
            onnx.save_model(model, str(path))
            files[kind] = path.name
        self.data.file.close()
        inputs = [i.name for i in self.graphs["prompt"].inputs]
        outputs = [o.name for o in self.graphs["prompt"].outputs]
        self.graphs = {}
        return {
            "index": self.index,
            "layers": self.layers,
            "head": self.head,
            "files": files,
            "inputs": inputs,
            "outputs": outputs,
            "weight_bytes": self.weight_bytes,
            "data": f"part{self.index}.data",
        }


def _inputs(g: StaticGraph, shape: Shape, step: Step, x: str) -> None:
    s, rows, half = step.tokens, (shape.heads // shape.kv_heads) * step.tokens, shape.rotary // 2
    g.input(x, F32, [1, s, shape.hidden])
    g.input("cos", F32, [1, 1, s, half])
    g.input("sin", F32, [1, 1, s, half])
    g.input("kv_index", TensorProto.INT64, [1, shape.kv_heads, s, 3])
    g.input("attention_keep", F32, [1, 1, rows, step.context])
    g.input("attention_bias", F32, [1, 1, rows, step.context])


def _cache(g: StaticGraph, shape: Shape, step: Step, index: int) -> list[str]:
    names = [f"past_key_values.{index}.key", f"past_key_values.{index}.value"]
    for name in names:
        g.input(name, F32, [1, shape.kv_heads, step.context, shape.head])
    return names


def _session(model: onnx.ModelProto) -> Any:
    """onnxruntime's CPU provider on a graph, no fusions (the QDQ graph as the HTP computes it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def rope_tables(config: dict[str, Any], shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, rotary/2]: longrope's short factors (an NPU bundle's context stays within
    the original one)."""
    caches = rope_caches(config, shape)
    return caches.get("small") or caches[""]


class DecoderWriter:
    def __init__(self, src: SourceModel, plan: BuildPlan, folder: Path, log: Callable[[str], None]):
        self.src, self.plan, self.folder, self.log = src, plan, folder, log
        self.config, self.shape = src.config, Shape.of(src.config)
        self.hooks = family_of(src.config).npu
        self.weights = CheckpointTensors(src.path, src.weight_files)
        family_of(src.config).prepare_weights(self.weights)
        self.cos, self.sin = rope_tables(self.config, self.shape)
        ctx, n = plan.optimize.context_cap, plan.npu.prompt_tokens
        self.steps = {"prompt": Step(n, ctx), "token": Step(1, ctx)}
        self.head: QuantWeight | None = None
        self.mask = MIN_MASK
        self.parts: list[dict[str, Any]] = []

    def weight_of(self, cal: NpuCalibration) -> Callable[[list[str]], QuantWeight]:
        def weight(names: list[str]) -> QuantWeight:
            if names[0] in cal.packs:
                return cal.weight(names)
            if self.head is None:  # the lm_head (or the tied table): int8 per output channel
                self.head = int8_channel(self.weights.float32(f"{names[0]}.weight"))
            return self.head

        return weight

    def write(self, work: Path) -> list[dict[str, Any]]:
        q, npu, shape = self.plan.quantize, self.plan.npu, self.shape
        cal = NpuCalibration(
            self.src.path,
            self.src.weight_files,
            self.config,
            q,
            self.weights,
            work / "calibration",
            self.log,
            lpbq=npu.weights == "lpbq",
        )
        window = int(cal.hidden.shape[1])
        self.cal_step = Step(window, window)
        self.cal_positions = positions_feed(shape, window, self.cos, self.sin, 0, window, CALIBRATION_MASK)
        weight = self.weight_of(cal)
        part = self._new_part(0, "hidden_0", Encoding.of(0.0, 1.0))
        limit = npu.part_mb * MB
        with bar("NPU layers", shape.layers, "layers") as progress:
            for i in range(shape.layers):
                cal.layer(i)
                encodings, kv, size = self._calibrate_layer(cal, i, weight)
                if i == 0:
                    part.encodings["hidden_0"] = encodings["hidden"]
                if part.layers and part.weight_bytes + size > limit:
                    self.parts.append(part.close(part.x, shape.hidden))
                    part = self._new_part(len(self.parts), part.x, part.encodings[part.x])
                part.encodings.update({k: v for k, v in encodings.items() if k != "hidden"})
                part.weight_bytes += size
                part.mask = max(part.mask, self.layer_mask)
                part.add_layer(self._layer_writer(weight, i), i, kv)
                progress.advance(1)
        cal.finish_layers()
        self.parts.append(part.close(part.x, shape.hidden))
        encodings = {k: v for k, v in self._calibrate_head(cal, weight).items() if k != "hidden"}
        cal.layer(None)
        self._write_head(part, encodings, limit)
        self.log(
            f"decoder: {shape.layers} layers in {len(self.parts)} parts, "
            + ", ".join(f"{p['weight_bytes'] / 1e6:.0f} MB" for p in self.parts)
        )
        return self.parts

    def _write_head(self, last: Part, encodings: dict[str, Encoding], limit: int) -> None:
        """The final norm and lm_head as parts of their own: one, or (an lm_head larger than a
        part, Phi-4-mini's 200064 rows) its rows in as many parts, each giving logits_j, which the
        CPU concatenates (logits.onnx)."""
        full = self.head
        chunks = max(1, -(-full.nbytes // limit))
        rows = -(-self.shape.vocab // chunks)
        for j, start in enumerate(range(0, self.shape.vocab, rows)):
            stop = min(start + rows, self.shape.vocab)
            piece = QuantWeight(full.codes[:, start:stop], full.scale[start:stop], full.bits)
            output = "logits" if chunks == 1 else f"logits_{j}"
            head = Part(len(self.parts), self.folder, self.shape, self.steps, x=last.x, head=True)
            head.encodings[last.x] = last.encodings[last.x]
            head.encodings.update(encodings | {output: encodings["logits"]})
            for g in head.graphs.values():
                self.hooks.write_head(g, self.weights, lambda _names, w=piece: w, self.shape, head.x, output)
            head.weight_bytes = piece.nbytes
            self.parts.append(head.close(output, stop - start))

    def _layer_writer(self, weight: Callable, index: int) -> Callable[[StaticGraph, Step, str], str]:
        def write(g: StaticGraph, step: Step, x: str) -> str:
            return self.hooks.write_layer(g, self.weights, weight, index, self.shape, step, x)

        return write

    def _new_part(self, index: int, x: str, encoding: Encoding) -> Part:
        """A part whose input x (the previous part's output) has `encoding`."""
        part = Part(index, self.folder, self.shape, self.steps, x=x)
        part.encodings.update(self._fixed_inputs())
        part.encodings[x] = encoding
        return part

    def _calibrate_layer(self, cal: NpuCalibration, i: int, weight: Callable) -> tuple[dict, dict, int]:
        """Layer i's activation encodings and KV cache encodings, its weights' bytes; hands its
        quantized output on the calibration states back to the calibration."""
        sizes: dict[tuple[str, ...], int] = {}

        def counted(names: list[str]) -> QuantWeight:
            w = weight(names)
            sizes[tuple(names)] = w.nbytes
            return w

        g = StaticGraph()
        _inputs(g, self.shape, self.cal_step, "hidden")
        past = _cache(g, self.shape, self.cal_step, i)
        out = self.hooks.write_layer(g, self.weights, counted, i, self.shape, self.cal_step, "hidden")
        g.output(out, F32, [1, self.cal_step.tokens, self.shape.hidden])
        cache = [1, self.shape.kv_heads, self.cal_step.context, self.shape.head]
        for name in past:
            g.output(name.replace("past_key_values", "present"), F32, cache)
        model = g.model(f"layer{i}")
        zeros = {
            n: np.zeros((1, self.shape.kv_heads, self.cal_step.context, self.shape.head), np.float32) for n in past
        }
        ranges = observe(model, (self._feed(cal, w) | zeros for w in range(cal.hidden.shape[0])))
        bits = self.plan.npu.kv_bits
        kv = {}
        for part in ("key", "value"):
            enc = Encoding.of(*ranges[f"present.{i}.{part}"], bits)
            kv[f"past_key_values.{i}.{part}"] = kv[f"present.{i}.{part}"] = enc
        lo, hi = ranges[f"/l{i}/attn/scores"]
        self.layer_mask = max(MIN_MASK, MASK_MARGIN - lo)
        fixed = self._fixed_inputs() | {
            f"/l{i}/attn/masked": Encoding.of(-self.layer_mask, hi),
            "attention_bias": Encoding.of(-self.layer_mask, 0.0),
            f"/l{i}/k_rope/rotated": kv[f"present.{i}.key"],
            f"/l{i}/v/heads": kv[f"present.{i}.value"],
        }
        encodings = encodings_of(model, ranges, fixed)
        codes = {n: np.full(zeros[n].shape, kv[n].zero, kv[n].dtype) for n in past}
        session = _session(insert_qdq(model, encodings, kv))
        outputs = [session.run([out], self._feed(cal, w) | codes)[0] for w in range(cal.hidden.shape[0])]
        cal.advance_to(np.concatenate(outputs))
        self.mask = max(self.mask, self.layer_mask)
        return encodings, kv, sum(sizes.values())

    def _calibrate_head(self, cal: NpuCalibration, weight: Callable) -> dict[str, Encoding]:
        """The final norm's and the logits' encodings on the last layer's quantized output."""
        g = StaticGraph()
        g.input("hidden", F32, [1, self.cal_step.tokens, self.shape.hidden])
        out = self.hooks.write_head(g, self.weights, weight, self.shape, "hidden")
        g.output(out, F32, [1, self.cal_step.tokens, self.shape.vocab])
        model = g.model("head")
        ranges = observe(model, ({"hidden": cal.hidden[w : w + 1].cpu().numpy()} for w in range(cal.hidden.shape[0])))
        return encodings_of(model, ranges, {})

    def _feed(self, cal: NpuCalibration, w: int) -> dict[str, np.ndarray]:
        return {"hidden": cal.hidden[w : w + 1].cpu().numpy(), **self.cal_positions}

    def _fixed_inputs(self) -> dict[str, Encoding]:
        ctx = self.plan.optimize.context_cap
        return {
            "cos": Encoding.of(float(self.cos[:ctx].min()), float(self.cos[:ctx].max())),
            "sin": Encoding.of(float(self.sin[:ctx].min()), float(self.sin[:ctx].max())),
            "attention_keep": Encoding.of(0.0, 1.0),
        }
