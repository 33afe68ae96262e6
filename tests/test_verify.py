"""The bundle checks itself: tests/smoke_test.py with the runtime alone, and `slmkit verify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from toolkit.cli import main


def _smoke(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(bundle / "tests" / "smoke_test.py"), *args], capture_output=True, text=True
    )


def test_smoke_test_passes_on_cpu_runnable_bundles(bundles):
    for target in ("cpu", "android", "ios"):
        proc = _smoke(bundles(target))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("PASS  files: ")
        assert "PASS  load: model loaded (bundle provider)" in lines
        assert any(line.startswith("PASS  greedy 1: first ") for line in lines)
        assert any(line.startswith("PASS  agreement: top-1 agreement ") for line in lines)
        assert lines[-1].endswith(" passed, 0 failed")


def test_gpu_bundles_run_their_graph_on_the_cpu_here(bundles):
    proc = _smoke(bundles("linux-cuda"), "--provider", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  load: model loaded (cpu provider)" in proc.stdout


def test_one_changed_byte_is_named(copy_bundle):
    bundle = copy_bundle("android")
    data = bundle / "model" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    proc = _smoke(bundle)
    assert proc.returncode == 1
    assert (
        "FAIL  file model/model.onnx.data: sha256 differs from manifest.json (the file was changed or corrupted)"
        in proc.stdout
    )
    assert "FAIL  model: skipped: fix the damaged files above first" in proc.stdout
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert f"Error: Bundle '{bundle}' failed verification:\n" in result.output
    assert "  - file model/model.onnx.data: sha256 differs from manifest.json" in result.output


def test_a_truncated_download_is_reported_as_truncated(copy_bundle):
    bundle = copy_bundle("cpu")
    data = bundle / "model" / "model.onnx.data"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 3)
    proc = _smoke(bundle)
    assert proc.returncode == 1
    assert (
        f"FAIL  file model/model.onnx.data: truncated: {size // 3} of {size} bytes (incomplete copy or download)"
    ) in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_missing_file_is_named(copy_bundle):
    bundle = copy_bundle("cpu")
    (bundle / "model" / "tokenizer.json").unlink()
    proc = _smoke(bundle)
    assert proc.returncode == 1 and "FAIL  file model/tokenizer.json: missing" in proc.stdout


def test_a_graph_that_no_longer_matches_its_plan_fails_verify(copy_bundle):
    bundle = copy_bundle("android")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["plan"]["optimize"]["context_cap"] = 2048  # the plan says one cap, the config another
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert "  - search.max_length = 4096, requested 2048" in result.output


def test_verify_cli_passes_and_says_what_needs_the_device(bundles):
    result = CliRunner().invoke(main, ["verify", str(bundles("windows-dml"))])
    assert result.exit_code == 0, result.output
    assert "Needs the device: greedy tokens with the DirectML provider" in result.output
    assert result.output.rstrip().endswith(f"Bundle {bundles('windows-dml')} verified.")


def test_verify_on_the_gpu_provider_needs_its_runtime_and_leaves_the_manifest(bundles):
    bundle = bundles("linux-cuda")
    before = (bundle / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["verify", str(bundle), "--provider", "cuda"])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: Checking '{bundle}' with the cuda provider needs "
        "onnxruntime-genai-cuda, which this Python does not have: on the GPU "
        "machine, `pip install onnxruntime-genai-cuda=="
    )
    assert f"Without the GPU, `slmkit verify {bundle}` runs the same graph on the CPU provider." in result.output
    assert (bundle / "manifest.json").read_bytes() == before


def test_a_passing_gpu_run_moves_its_kernels_from_pending_to_checked():
    from toolkit.formats.onnx import DEVICE_ONLY, pending_on_device
    from toolkit.verify.device import record_device

    manifest = {"verification": {"pending_on_device": pending_on_device("cuda", "python")}}
    case = {"prompt": "p", "top1_agreement": 0.9, "greedy_prefix": 20, "bundle_prefix": 24, "tie": None}
    passed = {
        "passed": 9,
        "failed": 0,
        "top1_agreement": 0.9,
        "min_top1_agreement": 0.8,
        "runtime": "onnxruntime-genai-cuda 0.18.0",
        "cases": [case],
    }
    record_device(manifest, "cuda", passed, "NVIDIA H200 (driver 580, 143771 MiB)")
    v = manifest["verification"]
    assert v["pending_on_device"] == []
    assert v["checked_on_device"] == [
        f"{DEVICE_ONLY['cuda']}: the smoke test passed on NVIDIA H200 (driver 580, "
        "143771 MiB) with onnxruntime-genai-cuda 0.18.0, top-1 agreement 0.900"
    ]
    assert v["device"]["cuda"]["cases"] == [case] and v["device"]["cuda"]["passed"] == 9
    record_device(manifest, "cuda", {**passed, "passed": 8, "failed": 1}, "NVIDIA H200")  # a later run fails
    assert v["pending_on_device"] == [DEVICE_ONLY["cuda"]] and v["checked_on_device"] == []
    assert v["device"]["cuda"]["failed"] == 1


def test_verify_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"Error: '{tmp_path}' is not an slmkit bundle: it has no manifest.json.\n"


def test_golden_holds_reference_and_bundle_tokens(bundles):
    golden = json.loads((bundles("cpu") / "tests" / "golden.json").read_text())
    assert golden["reference"]["dtype"] == "float32"
    assert golden["min_greedy_prefix"] == 8 and 0 < golden["min_top1_agreement"] <= 1
    for case in golden["cases"]:
        assert case["prompt_ids"] and case["expected_ids"] and case["bundle_ids"]
    fmt = json.loads((bundles("cpu") / "model" / "prompt_format.json").read_text())
    assert fmt == {"single_turn": "<|user|>\n{content}<|end|>\n<|assistant|>\n", "placeholder": "{content}"}
