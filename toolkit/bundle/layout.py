"""Lay out the bundle a device receives, and write manifest.json (hashes, plan, versions, results)."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import VerificationError
from ..plan.config import BuildPlan
from ..source.checkpoint import SourceModel, eos_sources, sha256_file

SCHEMA_VERSION = 1
RUNNERS = Path(__file__).resolve().parent / "runners"
DEPENDENCIES = ("onnxruntime-genai", "onnxruntime", "onnx", "transformers", "torch", "tokenizers", "numpy")
MODEL_FILES_SKIPPED = {"builder-cache"}
RUN_OUTPUT = "tests/output/"  # what a smoke test run writes (the web page's screenshots): not the bundle's


def assemble(model_dir: Path, bundle: Path, host_runner: str) -> None:
    """model/ from the export; runner/run.py, tests/smoke_test.py and tests/checks.py from the
    runner this machine checks the bundle with (runners/<host_runner>/)."""
    shutil.move(str(model_dir), str(bundle / "model"))
    runner = bundle / "runner"
    runner.mkdir()
    shutil.copy2(RUNNERS / host_runner / "run.py", runner / "run.py")
    tests = bundle / "tests"
    tests.mkdir()
    shutil.copy2(RUNNERS / "common" / "checks.py", tests / "checks.py")
    shutil.copy2(RUNNERS / host_runner / "smoke_test.py", tests / "smoke_test.py")


def add_device_runner(bundle: Path, runner: str) -> None:
    """runner/<runner>/: a phone's own runner (Kotlin, Objective-C) beside the host's run.py."""
    shutil.copytree(RUNNERS / runner, bundle / "runner" / runner)


def file_table(bundle: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in the bundle except manifest.json, by relative POSIX path."""
    table = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel == "manifest.json" or "__pycache__" in rel or rel.startswith(RUN_OUTPUT):
            continue
        table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def dependency_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in DEPENDENCIES}


def write_manifest(
    bundle: Path,
    plan: BuildPlan,
    source: SourceModel,
    source_files: dict[str, Any],
    verification: dict[str, Any] | None,
    quality: dict[str, Any] | None,
    runtime_version: str,
    stops: list[int] | int,
    adapters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """manifest.json; `runtime_version` and `stops` are the format's (its runtime package's
    version, the ids its settings file stops on)."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "toolkit": {"name": "slmkit", "version": __version__},
        "dependencies": dependency_versions(),
        "source": {**source.summary(), "files": source_files},
        "plan": plan.to_dict(),
        "runtime": {
            "package": plan.runtime.package,
            "version": runtime_version,
            "execution_provider": plan.export.execution_provider,
            "runner": plan.runtime.runner,
        },
        "files": file_table(bundle),
        "verification": verification,
        "quality": quality,
    }
    manifest["source"].pop("path")  # machine-specific; `origin` says what was built
    if adapters:  # merged into the weights: their files' hashes, rank and the base they were trained on
        manifest["adapters"] = adapters
    manifest["source"]["eos_token_id"] = {**eos_sources(source.path), "stops_on": stops}
    save_manifest(bundle, manifest)
    return manifest


def save_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def require_bundle(path: Path) -> None:
    """Commands that take a bundle refuse any other folder the same way."""
    if not (path / "manifest.json").is_file():
        raise VerificationError(f"'{path}' is not an slmkit bundle: it has no manifest.json.")


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
