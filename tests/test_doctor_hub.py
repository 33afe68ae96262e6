"""`slmkit doctor`, and Hub ids: downloaded with huggingface_hub (mocked here: tests never touch the
network), only the files a build reads, with the resolved revision recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
from click.testing import CliRunner

from toolkit import doctor
from toolkit.cli import main
from toolkit.source import HUB_PATTERNS, open_source

REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_doctor_reports_packages_and_model_needs(tiny35):
    result = CliRunner().invoke(main, ["doctor", "--model", str(tiny35), "--target", "android"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("ok    onnxruntime-genai  0.18") for line in lines)
    assert any(line.startswith("ok    model              Phi3ForCausalLM, rope longrope,") and
               line.endswith("-> recipe phi-3.5-mini/android") for line in lines)
    assert any(line.startswith("ok    disk ") for line in lines) and any(line.startswith("ok    memory ") for line in lines)


def test_doctor_fails_when_the_disk_is_too_small(tiny35, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _: SimpleNamespace(free=1000, total=1, used=0))
    result = CliRunner().invoke(main, ["doctor", "--model", str(tiny35)])
    assert result.exit_code == 1
    assert "FAIL  disk               0.0 GB free at " in result.output
    assert "Error: The toolchain check failed:\n  - disk: " in result.output
    assert result.output.rstrip().endswith("Run `slmkit doctor` after fixing it.")


PHI35 = {"hidden_size": 3072, "intermediate_size": 8192, "vocab_size": 32064}


def test_memory_check_names_the_export_engine_and_the_reference(monkeypatch):
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 24_000_000_000)
    builder = doctor.memory_check(3_820_000_000, PHI35, "ort-genai")
    assert not builder.ok
    assert builder.detail == ("builder peak about 30.6 GB, float32 reference for verification 16.3 GB, "
                              "for 3.82 B parameters; machine has 24.0 GB")
    streamed = doctor.memory_check(3_820_000_000, PHI35, "stream")
    assert streamed.ok
    assert streamed.detail.startswith("streamed export peak about 2.6 GB, float32 reference")
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 16_000_000_000)
    laptop = doctor.memory_check(3_820_000_000, PHI35, "stream")
    assert laptop.ok and "bfloat16 reference for verification 8.6 GB" in laptop.detail


def test_a_build_short_of_memory_verifies_against_a_bfloat16_reference(tiny35, tmp_path, monkeypatch):
    from toolkit.build import build, plan_build

    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 4_000_000_000)
    monkeypatch.setattr(doctor, "REFERENCE_BASE_BYTES", 3.5e9)  # leaves no room for float32 weights
    src = open_source(str(tiny35))
    manifest = build(src, plan_build(src, None, "cpu", ()), tmp_path / "b", log=lambda _: None)
    golden = json.loads((tmp_path / "b" / "tests" / "golden.json").read_text())
    assert golden["reference"]["dtype"] == "bfloat16"
    assert manifest["verification"]["host"]["failed"] == 0


def test_hub_id_downloads_only_build_files_and_records_the_revision(tmp_path, tiny35, monkeypatch):
    calls = {}

    def snapshot_download(repo_id, revision, allow_patterns, cache_dir):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        dest = tmp_path / "hub" / revision
        shutil.copytree(tiny35, dest, dirs_exist_ok=True)  # a second call finds the cached snapshot
        return str(dest)

    class Api:
        def model_info(self, repo_id):
            return SimpleNamespace(sha=REVISION)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    src = open_source("microsoft/Phi-3.5-mini-instruct")
    assert calls == {"repo_id": "microsoft/Phi-3.5-mini-instruct", "revision": REVISION, "allow_patterns": HUB_PATTERNS}
    assert not any("bin" in p or "pt" in p.split(".")[-1] for p in HUB_PATTERNS)  # never pickles
    assert (src.origin, src.revision) == ("microsoft/Phi-3.5-mini-instruct", REVISION)
    result = CliRunner().invoke(main, ["build", "-m", "microsoft/Phi-3.5-mini-instruct", "-t", "cpu",
                                       "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["source"]["origin"] == "microsoft/Phi-3.5-mini-instruct"
    assert manifest["source"]["revision"] == REVISION


def test_hub_failure_is_a_clear_error(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    class Api:
        def model_info(self, repo_id):
            raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    result = CliRunner().invoke(main, ["build", "-m", "someone/some-model", "-t", "cpu"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Could not download 'someone/some-model' from the Hugging Face Hub (")
    assert "Check the id and your network (and `huggingface-cli login` for gated models), or pass a local folder." in result.output
    assert not Path("some-model-cpu").exists()
