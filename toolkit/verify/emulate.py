"""A bundle's own smoke test on emulated ARM64 phone CPUs: qemu user mode runs an arm64 Debian
Python with the aarch64 wheels of the runtime versions the bundle's manifest names, so the graph
meets the ARM int4 kernels (KleidiAI / MLAS NEON) a phone runs, not the x86 ones of this host.

Cached under $SLMKIT_CACHE (default ~/.cache/slmkit)/arm64: the sysroot (about 80 MB, made once
with mmdebstrap) and one folder of wheels per runtime version."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ToolchainError, VerificationError, did_you_mean
from ..plan.doctor import cache_root
from ..progress import waiting
from .device import run_record

DEFAULT_CPUS = ("cortex-a55", "cortex-a76")  # a phone's little and big cores (both with dot product)
QEMU_MIN = (8, 0)
SUITE = "bookworm"  # its python3 is 3.11: the wheels are fetched for that
PYTHON = "3.11"
SYSROOT_PACKAGES = (
    "python3",
    "python3-minimal",
    "libpython3.11-stdlib",
    "libstdc++6",
    "libgomp1",
    "zlib1g",
    "libffi8",
    "libssl3",
    "ca-certificates",
)
RUNTIME = ("onnxruntime-genai", "onnxruntime", "numpy")  # what the smoke test imports
QEMU_FIX = (
    "Install it: `apt-get install -t bookworm-backports qemu-user` (Debian 12) or "
    "`apt-get install qemu-user` (Ubuntu 24.04 and newer)."
)
KLEIDIAI = "on (onnxruntime's default for int4 MatMulNBits on ARM64)"


def find_qemu() -> tuple[str, str]:
    """(path, version) of qemu-aarch64 8.0 or newer; a ToolchainError naming the fix otherwise."""
    path = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if path is None:
        raise ToolchainError(
            f"ARM64 emulation needs qemu-aarch64 (qemu user mode) {QEMU_MIN[0]}.0 or newer, "
            f"and none is on PATH. {QEMU_FIX}"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"version (\d+)\.(\d+)\.?(\d*)", out)
    if found is None or tuple(int(x) for x in found.groups()[:2]) < QEMU_MIN:
        version = found.group(0).split()[1] if found else "an unknown version"
        raise ToolchainError(
            f"{path} is qemu {version}; ARM64 emulation needs {QEMU_MIN[0]}.0 or newer (older "
            "ones pass this host's x86 /proc/cpuinfo to the guest and onnxruntime crashes at "
            f"import). {QEMU_FIX}"
        )
    return path, found.group(0).split()[1]


def check_cpus(qemu: str, cpus: list[str]) -> None:
    out = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout
    known = [line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith("Available")]
    for cpu in cpus:
        if cpu not in known:
            raise VerificationError(
                f"Unknown emulated CPU '{cpu}'.{did_you_mean(cpu, known)} "
                f"{os.path.basename(qemu)} knows: {', '.join(known)}."
            )


def _run_or_fail(
    cmd: list[str], what: str, partial: Path, explain: Callable[[str], str | None] = lambda _: None
) -> None:
    """Run cmd; on failure remove `partial` and raise ToolchainError: `explain(output)`'s message
    when it recognises the failure, else what failed with the last lines of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        output = proc.stdout + proc.stderr
        known = explain(output)
        if known:
            raise ToolchainError(f"Could not prepare ARM64 emulation: {known}")
        tail = "\n    ".join(output.strip().splitlines()[-6:])
        raise ToolchainError(f"Could not prepare ARM64 emulation: {what} failed (exit {proc.returncode}):\n    {tail}")


def _missing_wheel(output: str) -> str | None:
    """pip's answer when the index has no such version for the platform, as one sentence."""
    found = re.search(r"No matching distribution found for (\S+)", output)
    if found is None:
        return None
    have = re.search(rf"requirement {re.escape(found.group(1))} \(from versions: ([^)]*)\)", output)
    versions = f" (it has {have.group(1)})" if have else ""
    return (
        f"the package index has no Linux aarch64 wheel of {found.group(1)} for Python {PYTHON}{versions}. "
        "The bundle's manifest names that version; rebuild the bundle with a runtime that has ARM64 wheels."
    )


def sysroot(cache: Path) -> Path:
    """An arm64 Debian with Python and the C++ runtime, extracted (no root, nothing configured)."""
    root = cache / "arm64" / f"sysroot-{SUITE}"
    if (root / "usr" / "bin" / f"python{PYTHON}").is_file():
        return root
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise ToolchainError(
            "ARM64 emulation needs an arm64 Debian sysroot, made with mmdebstrap, which is "
            "not on PATH. Install it: `apt-get install mmdebstrap`."
        )
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with waiting(f"arm64 {SUITE} sysroot (mmdebstrap, about 80 MB, once)"):
        _run_or_fail(
            [
                tool,
                "--quiet",
                "--variant=extract",
                "--architectures=arm64",
                f"--include={','.join(SYSROOT_PACKAGES)}",
                SUITE,
                str(partial),
            ],
            f"mmdebstrap (an arm64 {SUITE} sysroot from deb.debian.org)",
            partial,
        )
    partial.rename(root)
    return root


def runtime_wheels(cache: Path, versions: dict[str, str]) -> Path:
    """The aarch64 wheels of the bundle's runtime versions, unpacked into one folder for PYTHONPATH."""
    pins = [f"{name}=={versions[name]}" for name in RUNTIME]
    site = cache / "arm64" / ("site-py" + PYTHON.replace(".", "") + "-" + "-".join(p.replace("==", "") for p in pins))
    if (site / ".complete").is_file():
        return site
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with waiting(f"aarch64 wheels of {', '.join(pins)}"):
        _run_or_fail(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_28_aarch64",
                "--python-version",
                PYTHON,
                "--implementation",
                "cp",
                "--target",
                str(partial),
                *pins,
            ],
            f"pip (the aarch64 wheels of {' '.join(pins)}: can it reach the package index?)",
            partial,
            _missing_wheel,
        )
    (partial / ".complete").write_text("\n".join(pins) + "\n", encoding="utf-8")
    partial.rename(site)
    return site


def runtime_versions(manifest: dict[str, Any], path: Path) -> dict[str, str]:
    deps = manifest.get("dependencies", {})
    missing = [name for name in RUNTIME if name not in deps]
    if missing:
        raise VerificationError(
            f"{path}/manifest.json names no version of {', '.join(missing)} "
            "(dependencies): rebuild the bundle with this slmkit."
        )
    return {name: deps[name] for name in RUNTIME}


@dataclass(frozen=True)
class Emulator:
    """qemu-aarch64 and the arm64 Python with the bundle's runtime versions."""

    qemu: str
    qemu_version: str
    versions: dict[str, str]
    root: Path  # the arm64 Debian sysroot
    site: Path  # the aarch64 runtime wheels, installed

    @classmethod
    def for_bundle(cls, manifest: dict[str, Any], bundle: Path, cpus: list[str]) -> Emulator:
        """Find qemu, check the CPUs' names, and make (or reuse) the sysroot and the wheels."""
        versions = runtime_versions(manifest, bundle)
        qemu, qemu_version = find_qemu()
        check_cpus(qemu, cpus)
        cache = cache_root()
        return cls(qemu, qemu_version, versions, sysroot(cache), runtime_wheels(cache, versions))

    def python(self, cpu: str, args: list[str], doing: str) -> subprocess.CompletedProcess:
        """The emulated Python on `args` (a script and its arguments) under qemu-aarch64 -cpu CPU."""
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(self.site),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "HOME": str(Path.home()),
        }
        python = str(self.root / "usr" / "bin" / f"python{PYTHON}")
        with waiting(f"{doing} on an emulated {cpu}"):
            return subprocess.run(
                [self.qemu, "-cpu", cpu, "-L", str(self.root), python, *args], capture_output=True, text=True, env=env
            )


def run_smoke_test(bundle: Path, cpu: str, emulator: Emulator) -> tuple[dict[str, Any], str]:
    """The bundle's tests/smoke_test.py under qemu-aarch64 -cpu CPU; (its JSON results, its output)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        script = str(bundle.resolve() / "tests" / "smoke_test.py")
        proc = emulator.python(cpu, [script, "--json", str(result_path)], "smoke test")
        output = proc.stdout + proc.stderr
        if not result_path.is_file():
            return {"passed": 0, "failed": 1, "error": f"smoke test crashed (exit {proc.returncode})"}, output
        return json.loads(result_path.read_text(encoding="utf-8")), output


def run_probe(bundle: Path, manifest: dict[str, Any], cpu: str, args: list[str]) -> dict[str, Any]:
    """A script (args[0], then its arguments, the last of them added here: the JSON it writes)
    under qemu-aarch64 -cpu CPU with the bundle's runtime versions; returns that JSON."""
    emulator = Emulator.for_bundle(manifest, bundle, [cpu])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = emulator.python(cpu, [*args, str(out)], Path(args[0]).name)
        if not out.is_file():
            raise VerificationError(
                f"{Path(args[0]).name} crashed on the emulated {cpu} (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr).strip()[-2000:]
            )
        return json.loads(out.read_text(encoding="utf-8"))


def summarize(cpu: str, qemu_version: str, versions: dict[str, str], result: dict[str, Any]) -> dict[str, Any]:
    """What manifest.json keeps of one emulated CPU's run."""
    return {
        "cpu": cpu,
        "emulated": f"qemu-aarch64 {qemu_version}; linux arm64, Debian {SUITE}, Python {PYTHON}",
        "kleidiai": KLEIDIAI,
        "runtime": {name: versions[name] for name in RUNTIME[:2]},
        **run_record(result),
    }


def record(manifest: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Keep the runs in manifest.json; when every CPU passed, the ARM kernels leave the pending list
    as checked under emulation (the device's own speed and its runner stay pending)."""
    from ..formats.onnx import ARM_NOTE

    verification = manifest.setdefault("verification", None) or {}
    manifest["verification"] = verification
    verification.setdefault("emulated", {})["arm64"] = runs
    pending = verification.setdefault("pending_on_device", [])
    checked = [r["cpu"] for r in runs if r["failed"] == 0]
    if checked and len(checked) == len(runs):
        if ARM_NOTE in pending:
            pending.remove(ARM_NOTE)
        verification["checked_under_emulation"] = [
            f"the ARM64 int4 kernels (KleidiAI): the bundle's smoke test passed on emulated {', '.join(checked)} "
            f"({runs[0]['emulated']}); not a device speed"
        ]
    elif ARM_NOTE not in pending:
        pending.append(ARM_NOTE)
        verification.pop("checked_under_emulation", None)


def verify_emulated(path: Path, cpus: list[str]) -> tuple[list[dict[str, Any]], str]:
    """`slmkit verify --emulate arm64`: the bundle's smoke test on each emulated CPU, kept in its
    manifest. Returns (runs, their output); raises VerificationError naming the CPUs that failed."""
    from ..bundle.layout import read_manifest, require_bundle, save_manifest

    require_bundle(path)
    manifest = read_manifest(path)
    provider = manifest.get("runtime", {}).get("execution_provider")
    if provider != "cpu":
        raise VerificationError(
            f"Bundle '{path}' is for the {provider} execution provider; an emulated ARM64 CPU "
            "runs CPU bundles only (android, ios, cpu). Check a GPU bundle on its GPU."
        )
    emulator = Emulator.for_bundle(manifest, path, cpus)
    runs, outputs = [], []
    for cpu in cpus:
        result, output = run_smoke_test(path, cpu, emulator)
        runs.append(summarize(cpu, emulator.qemu_version, emulator.versions, result))
        outputs.append(f"== emulated {cpu} ==\n{output.rstrip()}")
    record(manifest, runs)
    save_manifest(path, manifest)
    failed = [r for r in runs if r["failed"]]
    if failed:
        raise VerificationError(
            f"Bundle '{path}' failed its smoke test on emulated "
            f"{', '.join(r['cpu'] for r in failed)}:\n" + "\n".join(outputs)
        )
    return runs, "\n".join(outputs)
