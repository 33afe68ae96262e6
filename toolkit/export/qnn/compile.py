"""QNN context binaries at build time: each part's QDQ prompt and token graphs compiled for the
plan's SoC by onnxruntime-qnn in a child process of its own (compiler.py), one part after the
other, so a part's compiler memory is freed before the next and a crash names its part. A
failure says which part and why: the nodes the HTP does not take, the signal that killed the
compiler, or its last log lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ...errors import StageError, crash_line
from ...plan.config import SOCS, NpuConfig
from ...progress import waiting

# onnxruntime-qnn's verbose log: "Validation FAILED for 1 nodes in OrtNodeUnit (Op) :" then, per node,
# "Operator type: Op Node name: name" and "REASON : why"
REFUSED = re.compile(r"Operator type: (\S+) Node name: ?(.*?)\s*Node index: \d+\s*\n\s*REASON : (.*)")
FALLBACK_FIX = (
    "onnxruntime-qnn's compiler died of an instruction this CPU does not execute: the wheel is built for "
    "x86-64 with AVX2; run the build on such a machine"
)


def provider_options(npu: NpuConfig) -> dict[str, str]:
    """The QNN execution provider's options for the plan's SoC (the HTP backend)."""
    return {"backend_type": "htp", "soc_model": str(SOCS[npu.soc][0])}


def context_name(qdq_name: str) -> str:
    return qdq_name.replace(".onnx", "_ctx.onnx")


def compile_part(qdq: Path, out: Path, part: dict[str, Any], npu: NpuConfig, share: bool, what: str) -> dict[str, Any]:
    """Compile one part's graphs from folder `qdq` into `out`; returns {seconds, peak_mb, files}."""
    kinds = list(part["files"])
    graphs = [[str(qdq / part["files"][k]), str(out / context_name(part["files"][k]))] for k in kinds]
    spec = {"graphs": graphs, "provider": provider_options(npu), "share": share}
    with waiting(f"compiling {what} for the HTP (child process)"):
        proc = _compile(spec)
    if proc.returncode != 0:
        if crash_line("", proc.returncode, "") is None:  # ask the EP why, in its verbose log
            for _, target in graphs:
                Path(target).unlink(missing_ok=True)
            proc = _compile(spec | {"log_level": 0})
        raise StageError("export", f"{what} did not compile for the HTP: {_reason(proc)}", out.parent)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["files"] = sorted(p.name for p in out.iterdir() if p.name.startswith(f"part{part['index']}_"))
    return report


def _compile(spec: dict[str, Any]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        return subprocess.run(
            [sys.executable, "-m", "toolkit.export.qnn.compiler", str(path)], capture_output=True, text=True
        )


def _reason(proc: subprocess.CompletedProcess) -> str:
    crash = crash_line("the compiler", proc.returncode, FALLBACK_FIX)
    if crash:
        return crash
    text = proc.stdout + proc.stderr
    nodes = REFUSED.findall(text)
    if nodes:
        return "these nodes do not run on the HTP and CPU fallback is disabled: " + "; ".join(
            dict.fromkeys(f"{op} node '{name}' ({why.strip()})" for op, name, why in nodes)
        )
    tail = [line for line in text.strip().splitlines() if line.strip()][-4:]
    return " | ".join(tail)
