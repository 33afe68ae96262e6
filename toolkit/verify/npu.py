"""An NPU bundle's graphs at CPU speed: the QDQ graphs the build compiled (kept in its work folder,
work/qdq) on onnxruntime's CPU provider, driven as onnxruntime-genai's decoder-pipeline drives the
context binaries: prompt windows of npu.prompt_tokens with the last one padded, the positions graph
before each, the fixed KV cache carried from window to window. The x86 HTP backend runs the same
graphs about a hundred times slower; quality (perplexity, top-1, KL against float32) is measured
here, and tests/test_npu.py measures how closely the HTP backend follows this path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class QdqPipeline:
    def __init__(self, model_dir: Path, qdq_dir: Path):
        import onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

        def session(path: Path):
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.window = config["model"]["decoder"]["sliding_window"]["window_size"]
        self.context = config["search"]["max_length"]
        self.pad = config["model"]["decoder"]["sliding_window"]["pad_value"]
        self.embeddings = session(model_dir / "embeddings.onnx")
        self.positions = session(model_dir / "positions.onnx")
        parts = json.loads((model_dir / "npu.json").read_text(encoding="utf-8"))["parts"]
        self.parts = [session(qdq_dir / p["files"]["prompt"]) for p in parts]
        self.empty: dict[str, np.ndarray] = {}  # each cache input as its zero point (an empty cache)
        for p, s in zip(parts, self.parts, strict=True):
            graph = onnx.load(str(qdq_dir / p["files"]["prompt"]), load_external_data=False).graph
            zeros = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("/q_zero")}
            for i in s.get_inputs():
                if i.name.startswith("past_key_values."):
                    zero = zeros[f"{i.name}/q_zero"]
                    self.empty[i.name] = np.full(i.shape, zero, dtype=zero.dtype)

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] logits, the sequence processed from an empty cache in prompt windows."""
        if len(ids) + -len(ids) % self.window > self.context:
            raise ValueError(f"{len(ids)} tokens do not fit the bundle's context of {self.context}")
        cache = dict(self.empty)
        padded = list(ids) + [self.pad] * (-len(ids) % self.window)
        rows = []
        for start in range(0, len(padded), self.window):
            chunk = np.asarray([padded[start : start + self.window]], dtype=np.int32)
            values = {"input_ids": chunk, "past_sequence_length": np.array([[start + self.window - 1]], np.int32)}
            values["total_sequence_length"] = np.array([self.context], np.int32)
            values |= dict(
                zip(_names(self.positions), self.positions.run(None, _feed(self.positions, values)), strict=True)
            )
            values["hidden_0"] = self.embeddings.run(None, {"input_ids": chunk})[0]
            for part in self.parts:
                values |= dict(zip(_names(part), part.run(None, _feed(part, values | cache)), strict=True))
                for name in _names(part):
                    if name.startswith("present."):
                        cache[name.replace("present.", "past_key_values.")] = values[name]
            pieces = sorted((k for k in values if k.startswith("logits_")), key=lambda k: int(k.split("_")[1]))
            rows.append(np.concatenate([values[k] for k in pieces], axis=-1)[0] if pieces else values["logits"][0])
        return np.concatenate(rows)[: len(ids)]


def _names(session) -> list[str]:
    return [o.name for o in session.get_outputs()]


def _feed(session, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: values[i.name] for i in session.get_inputs()}
