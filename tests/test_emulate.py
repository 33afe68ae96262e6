"""`slmkit verify --emulate arm64`: the bundle's own smoke test on emulated phone CPUs, its error
paths, and the tie rule of the greedy check that lets ARM kernels differ from x86 near ties only."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import needs_emulator

from toolkit.cli import main
from toolkit.formats.onnx import ARM_NOTE

CHECKS = Path(__file__).resolve().parent.parent / "toolkit" / "bundle" / "runners" / "common" / "checks.py"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("bundle_smoke_checks", CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN = {"min_greedy_prefix": 8, "tie_logit_margin": 1.0}
CASE = {
    "bundle_ids": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    "bundle_near": [[], [], [40, 41], [], [], [], [], [], [], []],
}


def test_greedy_check_tells_a_tie_from_a_defect():
    check = _smoke_module().greedy_check
    assert check(CASE["bundle_ids"], CASE, GOLDEN) == (True, "first 10/10 tokens as recorded at build (need 8)", None)
    late = [5, 6, 7, 8, 9, 10, 11, 12, 99, 99]  # differs after the needed prefix: other kernels' late flip
    assert check(late, CASE, GOLDEN)[0]
    ok, text, tie = check([5, 6, 41, 3, 3], CASE, GOLDEN)  # token 3 within the margin on the build host
    assert (ok, tie) == (True, 2)
    assert text.endswith("token 3 is a tie (within 1.0 logits on the build host)")
    ok, text, tie = check([5, 6, 42, 3, 3], CASE, GOLDEN)  # not one of the near tokens: a defect
    assert (ok, tie) == (False, None)
    assert text == "first 2/10 tokens as recorded at build (need 8); token 3 (42 for 7) is no tie: a defect"
    # A bundle from before ties were recorded: every early difference fails, as it did.
    assert not check([5, 6, 41], {"bundle_ids": CASE["bundle_ids"]}, {"min_greedy_prefix": 8})[0]


def test_build_records_the_near_ties_of_every_greedy_step(bundles):
    golden = json.loads((bundles("android") / "tests" / "golden.json").read_text())
    assert golden["tie_logit_margin"] == 1.0
    for case in golden["cases"]:
        assert len(case["bundle_near"]) == len(case["bundle_ids"])
        for step, near in zip(case["bundle_ids"], case["bundle_near"], strict=True):
            assert step not in near and len(near) <= 8


def _rehash(bundle: Path, rel: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_the_bundles_smoke_test_passes_a_tie_and_fails_a_defect(copy_bundle, tmp_path):
    """A device that picks the runner-up at step 2 passes only if the build host saw it within the margin."""
    bundle = copy_bundle("cpu")
    path = bundle / "tests" / "golden.json"
    golden = json.loads(path.read_text())
    case = golden["cases"][0]
    device_token = case["bundle_ids"][1]
    case["bundle_ids"][1] = device_token + 1  # as if the build host had chosen another token there
    case["bundle_near"][1] = [device_token]
    path.write_text(json.dumps(golden))
    _rehash(bundle, "tests/golden.json")
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "PASS  greedy 1: first 1/" in result.output and "token 2 is a tie (within 1.0 logits" in result.output
    case["bundle_near"][1] = []
    path.write_text(json.dumps(golden))
    _rehash(bundle, "tests/golden.json")
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert f"token 2 ({device_token} for {device_token + 1}) is no tie: a defect" in result.output


def _fake_tool(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n" + script + "\n")
    (folder / name).chmod(0o755)


def _only(monkeypatch, folder: Path) -> None:
    """PATH holds the fake tools only (no real qemu, no mmdebstrap); they need nothing but /bin/sh."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", str(folder))


def test_no_qemu_says_what_to_install(bundles, tmp_path, monkeypatch):
    _only(monkeypatch, tmp_path / "bin")
    result = CliRunner().invoke(main, ["verify", str(bundles("android")), "--emulate", "arm64"])
    assert result.exit_code == 1
    assert (
        "ARM64 emulation needs qemu-aarch64 (qemu user mode) 8.0 or newer, and none is on PATH. Install it: "
        "`apt-get install -t bookworm-backports qemu-user` (Debian 12)"
    ) in result.output


def test_old_qemu_is_refused_with_the_reason(bundles, tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "qemu-aarch64", 'echo "qemu-aarch64 version 7.2.0 (Debian 1:7.2+dfsg-7)"')
    _only(monkeypatch, tmp_path / "bin")
    result = CliRunner().invoke(main, ["verify", str(bundles("android")), "--emulate", "arm64"])
    assert result.exit_code == 1
    assert "is qemu 7.2.0; ARM64 emulation needs 8.0 or newer" in result.output
    assert "onnxruntime crashes at import" in result.output


QEMU10 = (
    '[ "$1" = "--version" ] && echo "qemu-aarch64 version 10.0.2"; '
    '[ "$1" = "-cpu" ] && printf "Available CPUs:\\n  cortex-a55\\n  cortex-a76\\n"; exit 0'
)


def test_unknown_cpu_names_the_known_ones(bundles, tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "qemu-aarch64", QEMU10)
    _only(monkeypatch, tmp_path / "bin")
    result = CliRunner().invoke(main, ["verify", str(bundles("android")), "--emulate", "arm64", "--cpu", "cortex_a55"])
    assert result.exit_code == 1
    assert (
        "Unknown emulated CPU 'cortex_a55'. Did you mean 'cortex-a55'? qemu-aarch64 knows: cortex-a55, cortex-a76."
        in result.output
    )


def test_no_mmdebstrap_says_what_to_install_and_leaves_no_cache(bundles, tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "qemu-aarch64", QEMU10)
    _only(monkeypatch, tmp_path / "bin")
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["verify", str(bundles("android")), "--emulate", "arm64"])
    assert result.exit_code == 1
    assert (
        "an arm64 Debian sysroot, made with mmdebstrap, which is not on PATH. Install it: `apt-get install mmdebstrap`."
    ) in result.output
    assert not list(tmp_path.rglob("sysroot-*"))


def test_runtime_wheels_that_cannot_be_had_are_named(tmp_path):
    """A version the package index does not have is named as such, with the versions it has (pip
    reached the index: a network failure would give another message, and fail this test)."""
    from toolkit.errors import ToolchainError
    from toolkit.verify.emulate import runtime_wheels

    versions = {"onnxruntime-genai": "0.0.0", "onnxruntime": "1.32.0", "numpy": "2.0.0"}
    with pytest.raises(ToolchainError) as err:
        runtime_wheels(tmp_path, versions)
    assert str(err.value).startswith(
        "Could not prepare ARM64 emulation: the package index has no Linux aarch64 wheel of "
        "onnxruntime-genai==0.0.0 for Python 3.11 (it has "
    )
    assert "0.18.0" in str(err.value) and str(err.value).endswith(
        "The bundle's manifest names that version; rebuild the bundle with a runtime that has ARM64 wheels."
    )
    assert not list(tmp_path.rglob("site-*"))  # no partial folder is left


def test_gpu_bundles_are_refused(bundles):
    result = CliRunner().invoke(main, ["verify", str(bundles("linux-cuda")), "--emulate", "arm64"])
    assert result.exit_code == 1
    assert "is for the cuda execution provider; an emulated ARM64 CPU runs CPU bundles only" in result.output


@needs_emulator
def test_tiny_android_bundle_passes_on_emulated_phone_cpus(copy_bundle):
    """The real thing: aarch64 onnxruntime-genai under qemu, KleidiAI int4 kernels, two phone cores."""
    bundle = copy_bundle("android")
    result = CliRunner().invoke(main, ["verify", str(bundle), "--emulate", "arm64"])
    assert result.exit_code == 0, result.output
    assert "== emulated cortex-a55 ==" in result.output and "== emulated cortex-a76 ==" in result.output
    verification = json.loads((bundle / "manifest.json").read_text())["verification"]
    runs = verification["emulated"]["arm64"]
    assert [r["cpu"] for r in runs] == ["cortex-a55", "cortex-a76"]
    for run in runs:
        assert run["failed"] == 0 and run["passed"] > 0
        assert run["top1_agreement"] >= run["min_top1_agreement"]
        assert run["emulated"].startswith("qemu-aarch64 ") and run["kleidiai"].startswith("on")
        assert all(c["bundle_prefix"] is not None for c in run["cases"])
    assert ARM_NOTE not in verification["pending_on_device"]
    assert "cortex-a55, cortex-a76" in verification["checked_under_emulation"][0]


@needs_emulator
def test_bench_under_emulation_measures_memory_not_time(bundles):
    """Phone bundles: load and generation memory inside the emulated process, no tok/s."""
    result = CliRunner().invoke(
        main, ["bench", str(bundles("android")), "--emulate", "arm64", "--prompt-tokens", "16", "--new-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "cortex-a76 (qemu-aarch64): memory only" in result.output and "tok/s" not in result.output
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(bundles("android")),
            "--emulate",
            "arm64",
            "--prompt-tokens",
            "16",
            "--new-tokens",
            "8",
            "--json",
        ],
    )
    memory = json.loads(result.output)
    assert memory["load_peak_mb"] > 0 and memory["run_peak_mb"] >= memory["load_peak_mb"]
    assert memory["run_peak_x_weights"] == pytest.approx(memory["run_peak_mb"] * (1 << 20) / memory["weight_bytes"])
