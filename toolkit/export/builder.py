"""HF folder -> ONNX model folder, with onnxruntime-genai's model builder called as a library."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StageError
from ..plan.config import ExportConfig
from ..progress import waiting


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    """Send everything written to stdout/stderr, by Python or by native code, to a log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """The builder reads a local folder only: no Hub calls, no telemetry, no token lookup."""
    keys = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_tail(log_path: Path, lines: int = 15) -> str:
    if not log_path.is_file():
        return ""
    text = log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


@contextlib.contextmanager
def builder_call(log_path: Path, work: Path) -> Iterator[None]:
    """Run the builder offline with its output in the log; its exceptions become one StageError
    that quotes the log's last lines (a full disk is re-raised: build() reports it)."""
    try:
        with offline_env(), captured_output(log_path):
            yield
    except Exception as e:  # the builder raises bare Exception/ValueError/NotImplementedError
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise
        raise StageError(
            "export",
            f"onnxruntime-genai builder raised {type(e).__name__}: {e}\n"
            f"Last lines of {log_path}:\n{log_tail(log_path)}",
            work,
        ) from e


def create_model(source: Path, out: Path, precision: str, provider: str, argv: list[str]) -> None:
    """The builder's own entry point, as `python -m onnxruntime_genai.models.builder` calls it."""
    from onnxruntime_genai.models import builder

    cache = str(out.parent / "builder-cache")
    kv = builder.parse_extra_options(None, str(source), str(out), precision, provider, cache, argv)
    builder.create_model(None, str(source), str(out), precision, provider, cache, **kv)


def run_builder(source: Path, cfg: ExportConfig, options: dict[str, Any], work: Path) -> Path:
    """Run the builder for one precision/provider; return the folder with model.onnx and
    genai_config.json. `options` are builder extra options (current names only)."""
    out = work / "export"
    log_path = work / "export.log"
    extra = {"hf_token": "false", "hf_remote": "false", **options}
    argv = [f"{k}={v}" for k, v in sorted(extra.items())]
    with waiting(f"export with the builder (its log: {log_path.name})"), builder_call(log_path, work):
        print(f"slmkit: builder precision={cfg.precision} ep={cfg.execution_provider} {argv}")
        create_model(source, out, cfg.precision, cfg.execution_provider, argv)
    for name in ("model.onnx", "genai_config.json"):
        if not (out / name).is_file():
            raise StageError("export", f"the builder wrote no {name} (see {log_path}).", work)
    return out
