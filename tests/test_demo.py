"""`slmkit demo`: the README's first command, on a fresh folder."""

from __future__ import annotations

from click.testing import CliRunner

from toolkit.cli import main


def test_demo_builds_verifies_and_answers(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "Verified: " in result.output and " checks passed, top-1 agreement with the PyTorch reference " in result.output
    )
    assert "Answer: The capital of France is Paris." in result.output
    assert (out / "tiny-phi-3.5-cpu" / "manifest.json").is_file()
    again = CliRunner().invoke(main, ["demo", "-o", str(out)])
    assert again.exit_code == 1
    assert "already exists" in again.output and "--force" in again.output
