"""The bundle's own smoke test (tests/smoke_test.py) run in a child process on this machine, the
verification section of manifest.json, and `slmkit verify`."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import crash_line
from ..formats import format_of
from ..formats.format import Format
from ..plan.config import BuildPlan
from ..progress import waiting
from .device import CASE_KEYS, on_device, record_device, require_device


def _model_args(model_dir: Path | None) -> list[str]:
    return ["--model", str(model_dir)] if model_dir is not None else []


def record_bundle_tokens(bundle: Path, provider: str, fmt: Format, model_dir: Path | None = None) -> str | None:
    """Let the bundle's smoke test record its own greedy tokens into golden.json (the values a
    device run is compared with), with the graphs of `model_dir` when the host cannot load the
    bundle's own. Returns why it failed, or None."""
    with waiting("the bundle's greedy tokens (child process)"):
        proc = subprocess.run(
            [sys.executable, str(bundle / "tests" / "smoke_test.py"), "--provider", provider, "--record"]
            + _model_args(model_dir),
            capture_output=True,
            text=True,
        )
    if proc.returncode == 0:
        return None
    crash = crash_line("the bundle's smoke test (recording its tokens)", proc.returncode, fmt.illegal_instruction)
    return crash or f"the bundle does not load or run:\n{(proc.stdout + proc.stderr).strip()}"


def run_smoke_test(
    bundle: Path, provider: str, fmt: Format, model_dir: Path | None = None
) -> tuple[dict[str, Any], str]:
    """Run the bundle's own tests/smoke_test.py in a child process; return (results, its output)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        with waiting("smoke test (child process)"):
            proc = subprocess.run(
                [
                    sys.executable,
                    str(bundle / "tests" / "smoke_test.py"),
                    "--provider",
                    provider,
                    "--json",
                    str(result_path),
                ]
                + _model_args(model_dir),
                capture_output=True,
                text=True,
            )
        output = proc.stdout + proc.stderr
        if not result_path.is_file():
            crash = crash_line("the bundle's smoke test", proc.returncode, fmt.illegal_instruction)
            error = crash or f"smoke test crashed (exit {proc.returncode})"
            return {"passed": 0, "failed": 1, "checks": [], "error": error, "crashed": crash is not None}, output
        return json.loads(result_path.read_text(encoding="utf-8")), output


def summarize(result: dict[str, Any], provider: str, plan: BuildPlan, fmt: Format) -> dict[str, Any]:
    """The verification section of manifest.json."""
    execution_provider = plan.export.execution_provider
    ran_on = "cpu" if provider == "cpu" or execution_provider == "cpu" else execution_provider
    if result.get("backends"):  # a browser's
        ran_on = "browser: " + ", ".join(result["backends"])
    return {
        "host": {
            "provider": ran_on,
            **(
                {k: result.get(k) for k in ("runtime", "backends", "webgpu_adapter", "skipped")}
                if result.get("backends")
                else {}
            ),
            "passed": result.get("passed", 0),
            "failed": result.get("failed", 1),
            "top1_agreement": result.get("top1_agreement"),
            "min_top1_agreement": result.get("min_top1_agreement"),
            "cases": [{k: c[k] for k in ("adapter", *CASE_KEYS) if k in c} for c in result.get("cases", [])],
        },
        "pending_on_device": fmt.pending_on_device(plan),
    }


def _require_browser(path: Path, runner: str, provider: str, fmt: Format) -> None:
    """A web bundle's check needs headless Chromium here; the browser backends need a web bundle."""
    from ..errors import ToolchainError, VerificationError
    from ..plan.doctor import web_checks

    if provider in ("wasm", "webgpu") and not fmt.in_browser:
        raise VerificationError(
            f"--provider {provider} runs a web bundle's page in a browser; '{path}' has the {runner} runner. "
            "Use --provider bundle or cpu."
        )
    if fmt.in_browser and provider != "cpu":
        missing = [c for c in web_checks(need_npm=False) if not c.ok]
        if missing:
            raise ToolchainError(f"Cannot check the web bundle '{path}': " + "; ".join(c.detail for c in missing))


def verify_bundle(path: Path, provider: str | None = None) -> tuple[dict[str, Any], str]:
    """`slmkit verify`: the plan's settings read back from the graph, then the bundle's smoke test.
    A GPU bundle run with its own provider (on its GPU) keeps the run in its manifest.
    Returns (summary, smoke test output); raises VerificationError naming what failed."""
    from ..bundle.layout import read_manifest, require_bundle, save_manifest
    from ..errors import VerificationError
    from ..families import family_for
    from ..plan.config import plan_from_dict

    require_bundle(path)
    try:
        manifest = read_manifest(path)
        plan = plan_from_dict(manifest["plan"], f"{path}/manifest.json")
        architecture = manifest["source"]["architecture"]
        family_for(architecture)
        fmt = format_of(plan)
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"{path}/manifest.json is damaged ({type(e).__name__}: {e}).") from None
    ep = plan.export.execution_provider
    provider = provider or fmt.host_provider(ep)
    _require_browser(path, plan.runtime.runner, provider, fmt)
    version = manifest.get("dependencies", {}).get("onnxruntime-genai", "0.18.0")
    device = require_device(path, ep, plan.runtime.package, version) if on_device(provider, ep) else None
    result, output = run_smoke_test(path, provider, fmt, fmt.host_model(path, None, plan))
    problems = fmt.setting_mismatches(path / "model", plan, architecture) if result.get("failed", 1) == 0 else []
    summary = summarize(result, provider, plan, fmt)
    summary["host"]["settings_mismatches"] = problems
    if device:
        record_device(manifest, ep, result, device)
        save_manifest(path, manifest)
        summary["pending_on_device"] = manifest["verification"]["pending_on_device"]
        summary["checked_on_device"] = manifest["verification"]["checked_on_device"]
    if result.get("failed", 1) or problems:
        failed = [c for c in result.get("checks", []) if not c["ok"]]
        lines = [f"{c['name']}: {c['detail']}" for c in failed] + problems
        if result.get("crashed"):
            lines = [result["error"]]
        elif not lines:
            lines = [result.get("error", "the smoke test failed") + "\n" + output.strip()]
        raise VerificationError(f"Bundle '{path}' failed verification:\n  - " + "\n  - ".join(lines))
    return summary, output
