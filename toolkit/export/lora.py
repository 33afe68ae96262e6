"""Runtime LoRA adapters (`adapters.mode = "runtime"`): the streamed graph's MatMuls that adapters
target take an A [K, r] and a B [r, N] input each (toolkit/graphs/ops.py GraphWriter._lora_branch,
empty by default: no adapter adds zeros), and each adapter becomes one `.onnx_adapter` file
(onnxruntime's adapter format) holding those tensors, which onnxruntime-genai binds when the adapter
is active. A graph MatMul made of several checkpoint Linears (Llama's q, k and v in one qkv_proj)
gets their A matrices side by side and their B matrices block-diagonal, each B scaled by its
module's alpha / r: x A B is then exactly the sum of the modules' s B_m A_m x over their rows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..plan.config import BuildPlan
from ..source.adapter import PREFIX, Adapter
from ..source.checkpoint import SourceModel
from ..source.tensors import CheckpointTensors

ADAPTERS_DIR = "adapters"  # in the model folder
SUFFIXES = {"stream": ".onnx_adapter", "gguf": ".gguf"}  # by export engine
# (engine, runner) pairs whose runner switches adapters: Python and Kotlin (onnxruntime-genai), llama.cpp.
RUNNERS = (("stream", "python"), ("stream", "android"), ("gguf", "llama-cpp"))
WHY_NOT = {
    "ios": "onnxruntime-genai's Objective-C API (ort_genai_objc.h) has no adapter calls",
    "web": "onnxruntime-web runs the graph without onnxruntime-genai, whose adapters bind the LoRA inputs",
    "qnn": "a QNN context binary is compiled with its weights fixed",
}
# The decoder layers' projections: what the graph writers make MatMuls of, by checkpoint name.
LAYER_MODULE = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_runtime(src: SourceModel, plan: BuildPlan, adapters: list[Adapter]) -> None:
    """Refuse, before anything is written, runtime adapters that this target or these adapters
    cannot have."""
    if (plan.export.engine, plan.runtime.runner) not in RUNNERS:
        why = WHY_NOT.get(plan.runtime.runner if plan.export.engine == "stream" else plan.export.engine, "")
        raise ConfigError(
            f"adapters.mode=runtime on target '{plan.target}': runtime adapters are written for slmkit's streamed "
            "ONNX graphs with the Python and Kotlin runners (targets cpu, linux-cuda, windows-dml, android) and as "
            f"llama.cpp LoRA files (target gguf){f'; {why}' if why else ''}. Merge the adapter into this target's "
            "weights instead: leave adapters.mode at 'merged' (one --adapter)."
        )
    names = [a.name for a in adapters]
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ConfigError(
            f"--adapter name {bad[0]!r}: an adapter's name becomes its file name; use letters, digits, '.', '_' "
            "and '-' (at most 64), e.g. --adapter support=./support-lora."
        )
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(
            f"--adapter: the name {twice[0]!r} is given twice; name each adapter, e.g. "
            "--adapter a=./one --adapter b=./two."
        )
    for a in adapters:
        other = sorted(m for m in a.scales if not LAYER_MODULE.match(m))
        if other:
            raise ConfigError(
                f"--adapter {a.name}={a.path}: it adapts {other[0]}, which is not a decoder layer's projection; "
                "runtime adapters take the layers' attention and MLP projections. Merge it instead "
                "(adapters.mode=merged)."
            )


def pieces_of(family: Any, shape: Any, weights: CheckpointTensors, modules: frozenset[str]):
    """For GraphWriter.lora: the checkpoint rows of a decoder MatMul that any adapter targets."""
    has = weights.__contains__

    def pieces(base: str) -> list[tuple[str, Any, Any, int]] | None:
        """(module, first row, end row or None for all, rows) in the MatMul's output order."""
        if base == "/lm_head" or family.hf_rows is None:
            return None
        try:
            rows = family.hf_rows(base, shape, lambda m: has(f"{m}.weight"))
        except AttributeError:  # a MatMul no decoder Linear makes (a vision encoder's)
            return None
        if not any(m in modules for m, *_ in rows):
            return None
        return [(m, s, e, e - s if s is not None else weights.entries[f"{m}.weight"].shape[0]) for m, s, e in rows]

    return pieces


def write_slots(slots: dict[str, dict[str, Any]], modules: frozenset[str], path: Path) -> None:
    """The graph's LoRA inputs and the checkpoint rows each is made of; every targeted module
    must have one."""
    covered = {m for slot in slots.values() for m, *_ in slot["rows"]}
    missing = sorted(modules - covered)
    if missing:
        raise ConfigError(
            f"The adapters target {missing[0]}, which no MatMul of this graph is made of (this family writes "
            "its projections differently). Merge the adapter instead (adapters.mode=merged)."
        )
    path.write_text(json.dumps(slots, indent=1) + "\n", encoding="utf-8")


def stacked(
    lora: CheckpointTensors, adapter: Adapter, pieces: list[tuple[str, slice | None, int]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(A [R, K], B [N, R]) of a matrix whose output rows stack `pieces` (module, its rows or None
    for all, their count) in order: the adapted modules' A one under the other (each module once),
    each one's B rows, scaled by its alpha / r, in its rows and rank columns, zeros elsewhere (a
    module the adapter leaves alone). None when the adapter adapts none of them."""
    a = {m: lora.float32(f"{PREFIX}{m}.lora_A.weight") for m, _, _ in pieces if m in adapter.scales}
    if not a:
        return None
    first = dict(zip(a, np.cumsum([0] + [x.shape[0] for x in a.values()]), strict=False))  # rank offsets
    b = np.zeros((sum(width for *_, width in pieces), sum(x.shape[0] for x in a.values())), dtype=np.float32)
    row = 0
    for module, rows, width in pieces:
        if module in a:
            block = lora.float32(f"{PREFIX}{module}.lora_B.weight")  # [out, r]
            block = block if rows is None else block[rows]
            b[row : row + width, first[module] : first[module] + a[module].shape[0]] = (
                np.float32(adapter.scales[module]) * block
            )
        row += width
    return np.concatenate(list(a.values())), b


def parameters(adapter: Adapter, slots: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The adapter's A [K, R] and B [R, N] graph inputs for each MatMul it targets."""
    lora = CheckpointTensors(adapter.path, ("adapter_model.safetensors",))
    out: dict[str, np.ndarray] = {}
    for slot in slots.values():
        pieces = [(m, None if s is None else slice(s, e), width) for m, s, e, width in slot["rows"]]
        pair = stacked(lora, adapter, pieces)
        if pair is not None:
            dtype = np.dtype(slot["dtype"])
            out[slot["A"]] = np.ascontiguousarray(pair[0].T, dtype=dtype)
            out[slot["B"]] = np.ascontiguousarray(pair[1].T, dtype=dtype)
    return out


def adapter_file(plan: BuildPlan, name: str) -> str:
    """The bundle path of adapter `name`'s file."""
    return f"model/{ADAPTERS_DIR}/{name}{SUFFIXES[plan.export.engine]}"


def write_adapters(
    adapters: list[Adapter], src: SourceModel, plan: BuildPlan, work: Path, model_dir: Path
) -> list[dict[str, Any]]:
    """One file per adapter in model_dir/adapters (.onnx_adapter for the ONNX graph's inputs, a
    llama.cpp LoRA GGUF for the gguf target); their manifest entries."""
    (model_dir / ADAPTERS_DIR).mkdir()
    slots = json.loads((work / "lora_slots.json").read_text(encoding="utf-8")) if plan.export.engine == "stream" else {}
    entries = []
    for adapter in adapters:
        path = model_dir / ADAPTERS_DIR / f"{adapter.name}{SUFFIXES[plan.export.engine]}"
        count = _write_gguf(adapter, src, path) if plan.export.engine == "gguf" else _write_onnx(adapter, slots, path)
        entry = {"mode": "runtime", "file": adapter_file(plan, adapter.name), "tensors": count}
        entries.append(adapter.summary() | entry)
    return entries


def _write_onnx(adapter: Adapter, slots: dict[str, dict[str, Any]], path: Path) -> int:
    import onnxruntime as ort

    params = parameters(adapter, slots)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    fmt.export_adapter(str(path))
    return len(params)


def _write_gguf(adapter: Adapter, src: SourceModel, path: Path) -> int:
    """llama.cpp's LoRA GGUF (general.type "adapter", adapter.type "lora"): `<tensor>.lora_a` [r, K]
    and `<tensor>.lora_b` [N, r] for each model.gguf matrix made of adapted modules, laid out as that
    matrix stacks and orders its rows (fused qkv and gate/up, llama's q/k row interleave). Each B
    carries its module's scale; adapter.lora.alpha 0 tells llama.cpp to add B A x unscaled."""
    import gguf

    from ..families import family_of
    from ..graphs.ops import Shape

    family, shape = family_of(src.config), Shape.of(src.config)
    arch = family.gguf.architectures[src.config["architectures"][0]]
    weights = CheckpointTensors(src.path, src.weight_files)
    lora = CheckpointTensors(adapter.path, ("adapter_model.safetensors",))
    w = gguf.GGUFWriter(path, arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    count = 0
    for t in family.gguf.tensors(weights, shape, arch, {}):
        pieces = [
            (
                part.key.removesuffix(".weight"),
                part.rows,
                part.rows.stop - part.rows.start if part.rows else weights.entries[part.key].shape[0],
            )
            for part in (t.parts if t.k else ())
        ]
        pair = stacked(lora, adapter, pieces)
        if pair is None:
            continue
        a, b = pair
        if t.order is not None:
            b = b[t.order]
        w.add_tensor(f"{t.name}.lora_a", np.ascontiguousarray(a))
        w.add_tensor(f"{t.name}.lora_b", np.ascontiguousarray(b))
        count += 2
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return count
