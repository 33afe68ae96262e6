"""The GGUF engine (`export.engine = "gguf"`): model.gguf for llama.cpp, Ollama and LM Studio,
written one tensor at a time. Every tensor's type and size follow from the plan, so the header goes
first and each tensor's bytes follow as they are made: memory holds one tensor (and, calibrated,
one decoder layer), whatever the model's size.

Types: int4 matrices are Q4_1 (blocks with zero points) or Q4_0 (symmetric): the calibrated codes
(quantize.method gptq, awq or mse, run layer by layer as for the ONNX targets) with their scale
and min in float16, or llama.cpp's own round-to-nearest for quantize.method = "default"; int8 is
Q8_0, fp16 F16; norms and longrope factors stay F32. The lm_head (quantize.lm_head = "int8": Q8_0)
is token_embd itself when the embeddings are tied; an untied token table takes the matrices' type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..families import family_of
from ..graphs.ops import Shape
from ..plan.config import OWN_METHODS, ExportConfig, QuantizeConfig
from ..progress import bar
from ..quantize import ggml
from ..quantize.blocks import Packed
from ..source.tensors import CheckpointTensors
from .gguf_vocab import add_vocab, model_name

# mixed: every matrix's type measured (toolkit/export/gguf_mixed.py), within llama.cpp Q4_K_M's bytes
GGUF_METHODS = ("default", "mse", "gptq", "awq", "mixed")
# general.file_type (llama.cpp's ftype); a mixed file is MOSTLY_Q4_K_M's size and kind
FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "F16": 1, "F32": 0, "Q4_K_M": 15}


def problems(config: dict[str, Any], export: ExportConfig, q: QuantizeConfig) -> list[str]:
    """What of a plan the GGUF engine does not write for this checkpoint (empty when it can)."""
    found = []
    if family_of(config).gguf is None:
        found.append(f"{config['architectures'][0]} (slmkit writes no llama.cpp graph for its family)")
    if export.precision == "int4" and q.method not in GGUF_METHODS:
        found.append(f"quantize.method '{q.method}' (it writes {', '.join(GGUF_METHODS)})")
    if export.precision == "int4" and q.method == "mixed" and q.lm_head != "int4":
        found.append("quantize.lm_head 'int8' with mixed (whose measured types include the lm_head's: use int4)")
    if export.precision == "int4" and q.method != "mixed" and q.block_size != ggml.GROUP:
        found.append(f"quantize.block_size {q.block_size} (llama.cpp's Q4_0/Q4_1 blocks hold {ggml.GROUP} weights)")
    return found


def check_supported(config: dict[str, Any], export: ExportConfig, q: QuantizeConfig) -> None:
    """Refuse, before anything is written, what the GGUF engine does not write."""
    found = problems(config, export, q)
    if found:
        raise ConfigError("The GGUF target cannot build " + "; ".join(found) + ".")


def kinds(export: ExportConfig, q: QuantizeConfig) -> tuple[str, str]:
    """(the matrices' GGUF type, the lm_head's); mixed: "Q4_K_M" for both (each tensor's own is measured)."""
    if export.precision == "int4" and q.method == "mixed":
        return "Q4_K_M", "Q4_K_M"
    kind = {"int8": "Q8_0", "fp16": "F16", "fp32": "F32"}.get(export.precision) or ("Q4_0" if q.symmetric else "Q4_1")
    return kind, "Q8_0" if export.precision == "int4" and q.lm_head == "int8" else kind


def export_gguf(
    source: Path,
    weight_files: tuple[str, ...],
    config: dict[str, Any],
    export: ExportConfig,
    q: QuantizeConfig,
    work: Path,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Write work/export/model.gguf (and gguf.json: each tensor's type and shape); return
    work/export."""
    import gguf

    check_supported(config, export, q)
    family, shape = family_of(config), Shape.of(config)
    arch = family.gguf.architectures[config["architectures"][0]]
    weights = CheckpointTensors(source, weight_files)
    family.prepare_weights(weights)
    kind, head_kind = kinds(export, q)
    out = work / "export"
    out.mkdir(parents=True)
    w = gguf.GGUFWriter(out / "model.gguf", arch)
    w.add_name(model_name(source.name, source))
    w.add_file_type(FILE_TYPES[kind])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_quantized_by("slmkit")
    extra = family.gguf.metadata(w, config, shape, arch)
    add_vocab(w, source, shape.vocab)
    tensors = family.gguf.tensors(weights, shape, arch, extra)
    if q.method == "mixed" and export.precision == "int4":
        from ..quantize.kmix import KQuantCalibration
        from .gguf_mixed import write_mixed

        calibration = KQuantCalibration(source, weight_files, config, q, weights, work / "calibration", log)
        try:
            types = write_mixed(w, tensors, weights, calibration, shape.layers, out, log, q.target_mb)
        finally:
            calibration.close()
        _save(out, {"tensors": _plan(tensors, types)})
        return out
    types = {t.name: ("F32" if not t.k else head_kind if t.parts[0].base == "/lm_head" else kind) for t in tensors}
    _header(w, tensors, types)
    calibration = None
    if q.method in OWN_METHODS and export.precision == "int4":
        from ..quantize.sequential import Calibration

        calibration = Calibration(source, weight_files, config, q, weights, work / "calibration", log)
    stage = -1
    with bar("export", weights.nbytes(weights.entries), "bytes of weights") as progress:
        weights.on_read = progress.advance
        try:
            for t in tensors:
                if calibration is not None and t.stage != stage:
                    stage = t.stage
                    calibration.layer(stage if stage < shape.layers else None)
                w.write_tensor_data(_bytes(t, types[t.name], weights, calibration))
        finally:
            if calibration is not None:
                calibration.close()
            w.close()
    _save(out, {"tensors": _plan(tensors, types)})
    log(f"model.gguf: {len(tensors)} tensors, {kind} matrices, {head_kind} lm_head")
    return out


def _plan(tensors: list[Any], types: dict[str, str]) -> dict[str, Any]:
    return {t.name: {"type": types.get(t.name, "F32"), "shape": [t.rows, t.k] if t.k else [t.rows]} for t in tensors}


def _header(w: Any, tensors: list[Any], types: dict[str, str]) -> None:
    """The file's header, keys and tensor table: every tensor's type and size are the plan's."""
    import gguf

    for t in tensors:
        nbytes = t.rows * 4 if not t.k else t.rows * ggml.row_bytes(t.k, types[t.name])
        shape = [t.rows, t.k] if t.k else [t.rows]
        w.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, gguf.GGMLQuantizationType[types[t.name]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()


def _bytes(t: Any, kind: str, weights: CheckpointTensors, calibration: Any) -> np.ndarray:
    """A tensor's GGUF bytes: F32 vectors as they are; matrices from the calibration's blocks, or
    gguf-py's quantizer (llama.cpp's rounding) when there is none or the type is not 4-bit. Each
    checkpoint tensor is read once (Phi-3's gate_up gives two parts)."""
    if t.value is not None:
        return np.ascontiguousarray(t.value, dtype=np.float32)
    read: dict[str, np.ndarray] = {}
    parts = []
    for p in t.parts:
        if p.key not in read:
            read[p.key] = weights.float32(p.key)
        parts.append((p.base, read[p.key] if p.rows is None else read[p.key][p.rows]))
    if not t.k:
        return np.ascontiguousarray(parts[0][1], dtype=np.float32)
    if calibration is not None and kind in ("Q4_0", "Q4_1"):
        blocks = [
            calibration.table(base, w) if base == "/model/embed_tokens" else calibration.packed(base, w)[0]
            for base, w in parts
        ]
        del read, parts
        p = Packed.stack(blocks)
        return ggml.q4(p.take(t.order) if t.order is not None else p)[0]
    w = np.concatenate([w for _, w in parts]) if len(parts) > 1 else parts[0][1]
    del read, parts
    return ggml.reference(w[t.order] if t.order is not None else w, kind)


def _save(model_dir: Path, settings: dict[str, Any]) -> None:
    (model_dir / "gguf.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def read_settings(model_dir: Path) -> dict[str, Any]:
    """model/gguf.json: the tensors' planned types and shapes, the context cap, the stop ids."""
    return json.loads((model_dir / "gguf.json").read_text(encoding="utf-8"))


def apply_settings(model_dir: Path, context_cap: int, eos_ids: list[int]) -> list[int]:
    """The target's context cap and every stop id the checkpoint names (the file's EOS first), in
    gguf.json for the runner; returns the stop ids."""
    from gguf import GGUFReader

    fields = GGUFReader(model_dir / "model.gguf").fields
    first = fields.get("tokenizer.ggml.eos_token_id")
    stops = list(dict.fromkeys(([int(first.contents())] if first else []) + list(eos_ids)))
    _save(model_dir, {**read_settings(model_dir), "context_cap": context_cap, "stop_ids": stops})
    return stops


def setting_mismatches(model_dir: Path, export: ExportConfig, q: QuantizeConfig) -> list[str]:
    """What in model.gguf differs from the plan: each tensor's type and shape against gguf.json,
    and the matrices' type against the plan's precision."""
    from gguf import GGUFReader

    planned = read_settings(model_dir)["tensors"]
    found = {t.name: t for t in GGUFReader(model_dir / "model.gguf").tensors}
    problems = [f"tensor {n} is missing" for n in planned if n not in found]
    problems += [f"tensor {n} is not in the plan" for n in found if n not in planned]
    for name, want in planned.items():
        t = found.get(name)
        if t is None:
            continue
        shape = [int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else [int(t.shape[0])]
        if t.tensor_type.name != want["type"] or shape != want["shape"]:
            problems.append(f"tensor {name} is {t.tensor_type.name} {shape}, planned {want['type']} {want['shape']}")
    kind, head = kinds(export, q)
    allowed = {kind, head}
    if kind == "Q4_K_M":  # measured per tensor: any of the candidates
        from ..quantize.kmix import K_CANDIDATES, LEGACY_CANDIDATES

        allowed = set(K_CANDIDATES + LEGACY_CANDIDATES)
    odd = [n for n, t in planned.items() if len(t["shape"]) == 2 and t["type"] not in allowed]
    problems += [f"tensor {n} is {planned[n]['type']}; the plan's precision writes {kind}" for n in odd]
    return problems


def check_settings(model_dir: Path, export: ExportConfig, q: QuantizeConfig) -> None:
    """Read model.gguf back; a tensor whose type or shape is not the plan's fails the stage."""
    from ..errors import StageError

    problems = setting_mismatches(model_dir, export, q)
    if problems:
        raise StageError(
            "optimize", "model.gguf does not match the plan:\n  - " + "\n  - ".join(problems), model_dir.parent
        )
