"""What only the device can check (a GPU's kernels, a phone's ARM kernels and runner), and the
record in manifest.json of a smoke-test run on a device: emulated ARM64 or a real GPU."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import VerificationError
from ..formats.onnx import DEVICE_ONLY


def on_device(provider: str, execution_provider: str) -> bool:
    """Whether a run with `provider` used a GPU bundle's own provider: a check only its device makes."""
    return execution_provider in DEVICE_ONLY and provider in ("bundle", execution_provider)


def describe_device(execution_provider: str) -> str | None:
    """The GPU the provider will run on, as nvidia-smi names it (CUDA), for the manifest;
    None when no NVIDIA GPU answers."""
    if execution_provider != "cuda":
        return "a DirectML GPU"
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [r.split(", ") for r in proc.stdout.splitlines() if r.count(", ") == 2]
    return "; ".join(f"{name} (driver {driver}, {mem})" for name, driver, mem in rows) or None


def require_device(path: Path, execution_provider: str, package: str, version: str) -> str:
    """Refuse a run on the bundle's GPU provider where its runtime package (the plan's) or its GPU
    is missing (it would fail for a reason that says nothing about the bundle); else the device's
    description."""
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        raise VerificationError(
            f"Checking '{path}' with the {execution_provider} provider needs {package}, which this Python "
            f"does not have: on the GPU machine, `pip install {package}=={version} numpy` (the version "
            f"the bundle was built with), then run this again. Without the GPU, `slmkit verify {path}` runs the "
            "same graph on the CPU provider."
        ) from None
    device = describe_device(execution_provider)
    if device is None:
        raise VerificationError(
            f"Checking '{path}' with the cuda provider needs an NVIDIA GPU, and nvidia-smi "
            "found none here: run it on the GPU machine (the driver's nvidia-smi on PATH)."
        )
    return device


# What manifest.json keeps of each prompt's run: how many greedy tokens followed the reference's and
# the recorded ones, and the step where greedy left the recorded tokens at a tie (None: it did not)
CASE_KEYS = ("prompt", "top1_agreement", "greedy_prefix", "bundle_prefix", "tie")


def run_record(result: dict[str, Any]) -> dict[str, Any]:
    """What manifest.json keeps of one smoke-test run on a device (emulated or real): checks,
    top-1 agreement and, per prompt, the greedy prefixes and the tie if there was one."""
    return {
        "passed": result.get("passed", 0),
        "failed": result.get("failed", 1),
        "top1_agreement": result.get("top1_agreement"),
        "min_top1_agreement": result.get("min_top1_agreement"),
        "cases": [{k: c.get(k) for k in CASE_KEYS} for c in result.get("cases", [])],
        **({"error": result["error"]} if "error" in result else {}),
    }


def record_device(manifest: dict[str, Any], execution_provider: str, result: dict[str, Any], device: str) -> None:
    """Keep a GPU run of the smoke test in manifest.json; when it passed, the provider's kernels
    leave the pending list as checked on that device."""
    verification = manifest.get("verification") or {}
    manifest["verification"] = verification
    run = {"device": device, "runtime": result.get("runtime"), **run_record(result)}
    verification.setdefault("device", {})[execution_provider] = run
    note = DEVICE_ONLY[execution_provider]
    pending = verification.setdefault("pending_on_device", [])
    checked = [c for c in verification.get("checked_on_device", []) if not c.startswith(note)]
    if run["failed"] == 0:
        if note in pending:
            pending.remove(note)
        checked.append(
            f"{note}: the smoke test passed on {device} with {run['runtime']}, "
            f"top-1 agreement {run['top1_agreement']:.3f}"
        )
    elif note not in pending:
        pending.append(note)
    verification["checked_on_device"] = checked
