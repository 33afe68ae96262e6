"""`slmkit doctor`: packages, disk and memory for a model (Hub downloads: tests/test_hub.py)."""

from __future__ import annotations

from types import SimpleNamespace

from click.testing import CliRunner

from toolkit.cli import main
from toolkit.plan import doctor


def test_doctor_reports_packages_and_model_needs(tiny35):
    result = CliRunner().invoke(main, ["doctor", "--model", str(tiny35), "--target", "android"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("ok    onnxruntime-genai  0.18") for line in lines)
    assert any(
        line.startswith("ok    model              Phi3ForCausalLM, rope longrope,")
        and line.endswith("-> recipe phi-3.5-mini/android")
        for line in lines
    )
    assert any(line.startswith("ok    disk ") for line in lines) and any(
        line.startswith("ok    memory ") for line in lines
    )


def test_doctor_fails_when_the_disk_is_too_small(tiny35, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _: SimpleNamespace(free=1000, total=1, used=0))
    result = CliRunner().invoke(main, ["doctor", "--model", str(tiny35)])
    assert result.exit_code == 1
    assert "FAIL  disk               0.0 GB free at " in result.output
    assert "Error: The toolchain check failed:\n  - disk: " in result.output
    assert result.output.rstrip().endswith("Run `slmkit doctor` after fixing it.")


PHI35 = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "vocab_size": 32064,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
}


def test_memory_check_names_the_export_engine_and_the_reference(monkeypatch):
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 24_000_000_000)
    builder = doctor.memory_check(3_820_000_000, PHI35, "ort-genai")
    assert not builder.ok
    assert builder.detail == (
        "builder peak about 30.6 GB, float32 layer-by-layer reference for verification "
        "2.7 GB, the smoke test running the bundle 4.2 GB, for 3.82 B parameters; "
        "machine has 24.0 GB"
    )
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 8_000_000_000)  # a small laptop
    streamed = doctor.memory_check(3_820_000_000, PHI35, "stream")
    assert streamed.ok
    assert streamed.detail.startswith(
        "streamed export peak about 1.6 GB, float32 layer-by-layer reference for verification 2.7 GB"
    )
    mse = doctor.memory_check(3_820_000_000, PHI35, "stream", "mse")
    assert mse.ok and mse.detail.startswith(
        "streamed export + calibrated mse int4 (one layer, its inputs' X^T X, the calibration states) peak about 4.9 GB"
    )
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 4_500_000_000)  # less than the calibration needs
    assert not doctor.memory_check(3_820_000_000, PHI35, "stream", "mse").ok
    assert doctor.memory_check(3_820_000_000, PHI35, "stream").ok


def test_a_mixture_of_experts_too_big_to_run_here_is_refused_by_its_smoke_test(monkeypatch):
    """Phi-3.5-MoE: export and reference stay small (one tensor, one expert at a time), but the
    smoke test loads the whole int4 bundle, as any run of it does."""
    moe = {
        "hidden_size": 4096,
        "intermediate_size": 6400,
        "vocab_size": 32064,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 16,
    }
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 24_000_000_000)
    check = doctor.memory_check(41_900_000_000, moe, "stream")
    assert not check.ok
    assert check.detail == (
        "streamed export peak about 1.8 GB, float32 layer-by-layer reference for verification "
        "3.0 GB, the smoke test running the bundle 27.2 GB, for 41.90 B parameters; "
        "machine has 24.0 GB"
    )
    monkeypatch.setattr(doctor, "total_memory_bytes", lambda: 64_000_000_000)
    assert doctor.memory_check(41_900_000_000, moe, "stream").ok
