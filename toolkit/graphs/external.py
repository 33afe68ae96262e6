"""One tensor at a time: read checkpoint tensors with plain file reads (no memory map, so pages
already used do not stay resident) and append ONNX initializers to an external data file. Peak
memory is then set by the largest tensor, not by the size of the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


class ExternalData:
    """Initializers whose bytes go to one external data file as they are made."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 (closed by __exit__: initializers are appended while the graph is written)
        self.offset = 0

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def tensor(self, name: str, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array)
        start = self.offset
        self.file.write(memoryview(array).cast("B"))
        self.offset += array.nbytes
        return self._proto(name, list(array.shape), array.dtype, start)

    def packed(self, name: str, tensor: Any) -> Any:
        """An initializer made in memory (an INT4 TensorProto's packed bytes) moved into the file."""
        start = self.offset
        self.file.write(tensor.raw_data)
        self.offset += len(tensor.raw_data)
        return self._proto(name, list(tensor.dims), tensor.data_type, start)

    def stacked(self, name: str, parts: Iterable[np.ndarray]) -> Any:
        """One initializer [len(parts), *part.shape] written part by part as `parts` yields them
        (each expert of a layer in turn, never all of them in memory at once)."""
        start, shape, dtype = self.offset, None, None
        for count, part in enumerate(parts, 1):
            part = np.ascontiguousarray(part)
            shape, dtype = [count, *part.shape], part.dtype
            self.file.write(memoryview(part).cast("B"))
            self.offset += part.nbytes
        return self._proto(name, shape, dtype, start)

    def _proto(self, name: str, shape: list[int], dtype: np.dtype | int, start: int) -> Any:
        import onnx

        t = onnx.TensorProto(
            name=name,
            dims=shape,
            data_type=dtype if isinstance(dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(dtype),
            data_location=onnx.TensorProto.EXTERNAL,
        )
        for key, value in (("location", self.path.name), ("offset", start), ("length", self.offset - start)):
            t.external_data.add(key=key, value=str(value))
        return t


def _copy(src: Any, start: int, length: int, out: Any, chunk: int) -> None:
    """`length` bytes of `src` from `start` appended to `out`, a chunk at a time."""
    src.seek(start)
    left = length
    while left:
        block = src.read(min(chunk, left))
        out.write(block)
        left -= len(block)


def compact(path: Path, tensors: list[Any], chunk: int = 1 << 24) -> None:
    """Rewrite the external data file `path` with only the bytes of `tensors` (in their order),
    and point each at its new offset: a file written with alternatives (mixed precision's int8
    blocks) keeps the chosen ones only. Streamed: memory holds one chunk."""
    fresh = path.with_name(path.name + ".compact")
    offset = 0
    with open(path, "rb") as src, open(fresh, "wb") as out:
        for t in tensors:
            entries = {e.key: e for e in t.external_data}
            if t.data_location != 1 or entries["location"].value != path.name:
                continue
            length = int(entries["length"].value)
            _copy(src, int(entries["offset"].value), length, out, chunk)
            entries["offset"].value = str(offset)
            offset += length
    fresh.replace(path)


def split(model_path: Path, limit: int, chunk: int = 1 << 24) -> list[str]:
    """Move the external data of `model_path` into files of at most `limit` bytes, whole tensors
    each (one larger tensor gets a file of its own): model.onnx.data, model.onnx.data.1, ...
    Returns the new files' names. Streamed: memory holds one chunk."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    entries = [{e.key: e for e in t.external_data} for t in tensors]
    entries.sort(key=lambda e: (e["location"].value, int(e["offset"].value)))
    base = f"{model_path.name}.data"
    names: list[str] = []
    sources = {e["location"].value for e in entries}
    out, size = None, 0
    with contextlib.ExitStack() as files:
        src = {name: files.enter_context(open(model_path.with_name(name), "rb")) for name in sources}
        for e in entries:
            length = int(e["length"].value)
            if out is None or (size and size + length > limit):
                if out is not None:
                    out.close()
                names.append(base if not names else f"{base}.{len(names)}")
                out, size = files.enter_context(open(model_path.with_name(names[-1] + ".split"), "wb")), 0
            _copy(src[e["location"].value], int(e["offset"].value), length, out, chunk)
            e["location"].value, e["offset"].value = names[-1], str(size)
            size += length
    for name in sources:
        model_path.with_name(name).unlink()
    for name in names:
        model_path.with_name(name + ".split").replace(model_path.with_name(name))
    onnx.save(model, str(model_path))
    return names


def data_files(model_path: Path) -> dict[str, list[int]]:
    """The external data files `model_path` reads, and the byte length of each tensor in each."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    used: dict[str, list[int]] = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            e = {x.key: x.value for x in t.external_data}
            used.setdefault(e["location"], []).append(int(e["length"]))
    return used
