"""The GGUF engine with measured types (quantize.method = "mixed", toolkit/quantize/kmix.py): one
calibrated pass writes every matrix's candidate encodings (K-quants, or the 32-weight types where
rows are not whole super-blocks) to a spill file beside the export with their costs; the types are
then chosen within the bytes of llama.cpp's Q4_K_M for the same model, and model.gguf is written
from the spill (memory: one layer and its candidates; disk: the candidates, about 3x the file).
The calibration's input statistics go beside it as llama.cpp's importance matrix
(model.imatrix.gguf: `llama-quantize --imatrix` takes it, for a user who wants another type)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..progress import bar
from ..quantize import kquants
from ..quantize.kmix import KQuantCalibration, choose, llama_q4_k_m, quantize_on, row_bytes
from ..quantize.sequential import WINDOW
from ..source.tensors import CheckpointTensors

IMATRIX = "model.imatrix.gguf"
TABLE_ROWS = 8192  # an untied token table is quantized this many rows at a time (no input statistics)


def write_mixed(
    w: Any,
    tensors: list[Any],
    weights: CheckpointTensors,
    calibration: KQuantCalibration,
    layers: int,
    out: Path,
    log: Callable[[str], None],
    target_mb: float = 0.0,
) -> dict[str, str]:
    """Calibrate, choose and write every tensor of `tensors` with gguf-py's writer `w` (its keys
    already added), the matrices within llama.cpp Q4_K_M's bytes or, with `target_mb`, within what
    that leaves beside the float32 vectors; returns each matrix's type."""
    tied = not any(t.name == "output.weight" for t in tensors)
    llama = llama_q4_k_m(tensors, layers, tied)
    spill_path = out.parent / "candidates.bin"
    options: dict[str, list[tuple[str, int, float]]] = {}
    where: dict[tuple[str, str], tuple[int, int]] = {}
    imatrix: set[str] = set()  # the matrices with input statistics
    stage = -1
    with (
        open(spill_path, "wb") as spill,
        bar("export", weights.nbytes(weights.entries), "bytes of weights") as progress,
    ):
        weights.on_read = progress.advance
        for t in tensors:
            if not t.k:
                continue
            if t.stage != stage:
                stage = t.stage
                calibration.layer(stage if stage < layers else None)
            if t.parts[0].base != "/model/embed_tokens":
                imatrix.add(t.name)
            for kind, data, cost in _candidates(t, weights, calibration, llama[t.name]):
                where[(t.name, kind)] = (spill.tell(), data.nbytes)
                spill.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                options.setdefault(t.name, []).append((kind, data.nbytes, cost))
    budget = sum(t.rows * row_bytes(t.k, llama[t.name]) for t in tensors if t.k)
    if target_mb:
        vectors = sum(4 * t.rows for t in tensors if not t.k)  # norms and rope factors, float32
        budget = int(target_mb * 1e6) - vectors
        least = sum(min(size for _, size, _ in kinds) for kinds in options.values())
        if budget < least:
            raise ConfigError(
                f"quantize.target_mb = {target_mb} is below the {(least + vectors) / 1e6:.1f} MB of this model "
                "in its smallest GGUF types. Raise it."
            )
    types, used = choose(options, budget)
    counts = {k: sum(v == k for v in types.values()) for k in dict.fromkeys(sorted(types.values()))}
    log(
        f"types by measured cost per byte: {used / 1e6:.1f} MB of matrices within "
        f"{f'quantize.target_mb = {target_mb}: ' if target_mb else 'llama.cpp Q4_K_M: '}"
        f"{budget / 1e6:.1f} MB: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    )
    fallback = sum(t.k % kquants.SUPER != 0 for t in tensors if t.k)
    if fallback:
        log(
            f"{fallback} of {len(options)} matrices have rows of {sorted({t.k for t in tensors if t.k})} weights "
            "that are not whole 256-weight super-blocks: Q4_0/Q5_0/Q8_0, as llama.cpp falls back"
        )
    _write(w, tensors, types, where, spill_path, weights)
    spill_path.unlink()
    sums = {t.name: calibration.in_sum2[calibration.linear_of(t.parts[0].base)] for t in tensors if t.name in imatrix}
    write_imatrix(out / IMATRIX, sums, calibration.tokens, WINDOW)
    return types


def _candidates(t: Any, weights: CheckpointTensors, calibration: KQuantCalibration, fixed: str):
    """(type, bytes, cost) of every candidate of matrix t: its parts' grids stacked in t's row order.
    An untied token table (no input statistics, no sensitivity) takes llama.cpp's Q4_K_M type."""
    if t.parts[0].base == "/model/embed_tokens":
        yield fixed, _table(weights.float32(t.parts[0].key), fixed), 0.0
        return
    per_part = [calibration.grids_of(p.base, None) for p in t.parts]
    for kind in per_part[0]:
        grids = [g[kind][0] for g in per_part]
        codes = np.concatenate([g.codes for g in grids])
        scales, zeros = np.concatenate([g.scales for g in grids]), np.concatenate([g.zeros for g in grids])
        if t.order is not None:
            codes, scales, zeros = codes[t.order], scales[t.order], zeros[t.order]
        yield kind, kquants.pack(kind, codes, scales, zeros), sum(g[kind][1] for g in per_part)


def _table(table: np.ndarray, kind: str) -> np.ndarray:
    """A token table on `kind`'s grid, rounded to nearest (GPTQ with no input correlation)."""
    import torch

    eye = torch.eye(table.shape[1])
    parts = []
    for r0 in range(0, len(table), TABLE_ROWS):
        g = quantize_on(kind, torch.from_numpy(table[r0 : r0 + TABLE_ROWS]), eye)
        parts.append(kquants.pack(kind, g.codes, g.scales, g.zeros))
    return np.concatenate(parts)


def _write(
    w: Any, tensors: list[Any], types: dict[str, str], where: dict, spill: Path, weights: CheckpointTensors
) -> None:
    """The header with the chosen types, then every tensor's bytes (matrices from the spill file)."""
    import gguf

    for t in tensors:
        kind = types.get(t.name, "F32")
        nbytes = t.rows * 4 if not t.k else t.rows * row_bytes(t.k, kind)
        shape = [t.rows, t.k] if t.k else [t.rows]
        w.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, gguf.GGMLQuantizationType[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    with open(spill, "rb") as src:
        for t in tensors:
            if not t.k:
                value = t.value if t.value is not None else weights.float32(t.parts[0].key)
                w.write_tensor_data(np.ascontiguousarray(value, dtype=np.float32))
                continue
            offset, length = where[(t.name, types[t.name])]
            src.seek(offset)
            w.write_tensor_data(np.frombuffer(src.read(length), dtype=np.uint8))
    w.close()


def write_imatrix(path: Path, sums: dict[str, np.ndarray], tokens: int, chunk: int) -> None:
    """llama.cpp's importance matrix (tools/imatrix's GGUF): per matrix, `<name>.in_sum2` (the sum
    of its input's squares over the calibration tokens, [1, k]) and `<name>.counts` (the tokens)."""
    import gguf

    w = gguf.GGUFWriter(path, "")
    w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # an imatrix file names no architecture
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["slmkit calibration text"])
    w.add_uint32("imatrix.chunk_count", tokens // chunk)
    w.add_uint32("imatrix.chunk_size", chunk)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[tokens]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
