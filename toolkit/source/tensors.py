"""One tensor at a time: read checkpoint tensors with plain file reads (no memory map, so pages
already used do not stay resident) and append ONNX initializers to an external data file. Peak
memory is then set by the largest tensor, not by the size of the model."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputModelError
from .checkpoint import SourceModel, inspect_folder, safetensors_header

ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4}
WIDEN = 1 << 24  # elements read and widened at a time (32 MB of bf16): a table's float32 is its only copy


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class CheckpointTensors:
    """The tensors of a safetensors checkpoint (one file or shards), read on demand as float32."""

    def __init__(self, folder: Path, files: tuple[str, ...]):
        self.entries: dict[str, _Entry] = {}
        # Tensors that replace the checkpoint's while they are set: the calibrated int4 pass puts
        # the layer it holds here (AWQ-scaled norms included), so the writer reads them, not the file.
        self.overlay: dict[str, np.ndarray] = {}
        self.on_read: Callable[[int], None] = lambda nbytes: None  # progress: bytes of each tensor read
        for name in files:
            header, base = safetensors_header(folder / name)
            for key, info in header.items():
                if info["dtype"] not in ITEM_BYTES:
                    raise InputModelError(
                        f"{folder / name}: tensor '{key}' is {info['dtype']}; the streamed export reads "
                        f"{', '.join(ITEM_BYTES)} checkpoints. Use --set export.engine=ort-genai."
                    )
                start, end = info["data_offsets"]
                self.entries[key] = _Entry(folder / name, info["dtype"], tuple(info["shape"]), base + start, base + end)

    def alias(self, name: str, stored_as: str) -> None:
        """Read tensor `name` from `stored_as` when the checkpoint keeps it only there (a tied
        weight saved under its other name); when both are kept, `stored_as` is dropped."""
        if stored_as in self.entries:
            entry = self.entries.pop(stored_as)
            self.entries.setdefault(name, entry)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def nbytes(self, names: Iterable[str]) -> int:
        return sum(self.entries[n].end - self.entries[n].start for n in names if n in self.entries)

    def entry(self, name: str, user: str = "the decoder graph", index: int | None = None) -> _Entry:
        """A tensor's place in its file, checked: present, and its bytes what its shape needs; with
        `index`, the place of tensor[index] alone (one expert of a stacked [experts, ...] tensor)."""
        if name not in self.entries:
            raise InputModelError(
                f"The checkpoint has no tensor '{name}', which {user} needs. Re-download the checkpoint."
            )
        e = self.entries[name]
        count = math.prod(e.shape)
        if e.end - e.start != count * ITEM_BYTES[e.dtype]:
            raise InputModelError(
                f"{e.file}: tensor '{name}' spans {e.end - e.start} bytes, its shape "
                f"{list(e.shape)} of {e.dtype} needs {count * ITEM_BYTES[e.dtype]}."
            )
        if index is not None:
            step = (e.end - e.start) // e.shape[0]
            e = _Entry(e.file, e.dtype, e.shape[1:], e.start + index * step, e.start + (index + 1) * step)
        return e

    def read_into(self, e: _Entry, buffer: memoryview) -> None:
        """The tensor's raw bytes into `buffer` (plain reads: no memory map stays resident)."""
        with open(e.file, "rb") as f:
            f.seek(e.start)
            f.readinto(buffer)
        self.on_read(e.end - e.start)

    def pieces(self, e: _Entry, step: int = WIDEN) -> Iterator[tuple[int, _Entry]]:
        """(first element, entry) of each `step`-element piece of a tensor, in order: a read
        widened piece by piece holds only the widened copy."""
        item = ITEM_BYTES[e.dtype]
        count = (e.end - e.start) // item
        for a in range(0, count, step):
            n = min(step, count - a)
            yield a, _Entry(e.file, e.dtype, (n,), e.start + item * a, e.start + item * (a + n))

    def float32(self, name: str, index: int | None = None) -> np.ndarray:
        """The tensor as a new float32 array (bf16 and fp16 widen exactly); with `index`, only
        tensor[index] is read (one expert of a stacked [experts, ...] tensor)."""
        if index is None and name in self.overlay:
            self.on_read(self.nbytes([name]))  # read by the calibration instead: counted once, here
            return self.overlay[name]
        e = self.entry(name, index=index)
        count = math.prod(e.shape)
        if e.dtype == "BF16":  # bfloat16 is the top half of a float32: widened WIDEN elements at a time
            wide = np.empty(count, dtype=np.uint32)
            part = np.empty(min(WIDEN, count), dtype=np.uint16)
            for a, piece in self.pieces(e):
                n = piece.shape[0]
                self.read_into(piece, memoryview(part[:n]).cast("B"))
                wide[a : a + n] = part[:n]
                wide[a : a + n] <<= 16
            return wide.view(np.float32).reshape(e.shape)
        raw = np.empty(count, dtype={"F16": np.float16, "F32": np.float32}[e.dtype])
        self.read_into(e, memoryview(raw).cast("B"))
        return raw.astype(np.float32, copy=False).reshape(e.shape)


COPY_CHUNK = 1 << 26  # bytes copied at a time from a tensor a derived checkpoint keeps as it is


def write_derived(
    src: SourceModel,
    dest: Path,
    tensors: list[tuple[str, tuple[int, ...], bool]],
    value: Callable[[str], np.ndarray],
) -> SourceModel:
    """A checkpoint folder `dest` made from `src` one tensor at a time (model.safetensors and links
    to the source's other files): of `tensors` (name, shape, computed), in order, the computed ones
    written as float32 from value(name), the others copied byte for byte from the source."""
    entries = CheckpointTensors(src.path, src.weight_files).entries
    header, offset = {}, 0
    for name, shape, computed in tensors:
        size = math.prod(shape) * 4 if computed else entries[name].end - entries[name].start
        dtype = "F32" if computed else entries[name].dtype
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    dest.mkdir(parents=True)
    with open(dest / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, _, computed in tensors:
            if computed:
                f.write(np.ascontiguousarray(value(name), dtype=np.float32).tobytes())
                continue
            e = entries[name]
            with open(e.file, "rb") as source:
                source.seek(e.start)
                for start in range(e.start, e.end, COPY_CHUNK):
                    f.write(source.read(min(COPY_CHUNK, e.end - start)))
    for p in src.path.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json":
            (dest / p.name).symlink_to(p.resolve())
    return inspect_folder(dest, src.origin, src.revision)
