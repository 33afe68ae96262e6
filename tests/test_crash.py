"""A runtime that dies of a signal is reported on one line naming it, with the fix for SIGILL; the
install line that builds llama.cpp for any AVX2 CPU is the same in the README and in CI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from toolkit.cli import main
from toolkit.formats.onnx import ILLEGAL_INSTRUCTION
from toolkit.plan import llama

ROOT = Path(__file__).resolve().parent.parent
SIGILL = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"


def test_a_smoke_test_killed_by_sigill_is_one_error_line_with_the_reinstall_command(copy_bundle, tmp_path):
    bundle = copy_bundle("cpu")
    (bundle / "tests" / "smoke_test.py").write_text(SIGILL)
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: Bundle '{bundle}' failed verification:\n  - the bundle's smoke test was killed by SIGILL "
        f"(Illegal instruction): it ran an instruction this CPU does not execute. {ILLEGAL_INSTRUCTION}\n"
    )


def test_a_gguf_bundle_whose_llama_cpp_dies_gets_the_portable_rebuild(tiny35, tmp_path):
    out = tmp_path / "b"
    assert CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "gguf", "-o", str(out)]).exit_code == 0
    (out / "tests" / "smoke_test.py").write_text(SIGILL)
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1
    assert result.output.endswith(
        "the bundle's smoke test was killed by SIGILL (Illegal instruction): it ran an instruction this CPU does "
        "not execute. llama-cpp-python was compiled for CPU features this machine does not run (a native build "
        f"that assumes AMX or AVX-512). Rebuild it for any AVX2 CPU: {llama.REINSTALL}\n"
    )
    assert "--no-cache-dir --force-reinstall" in llama.REINSTALL and "-DGGML_NATIVE=OFF" in llama.REINSTALL


def test_the_llama_cpp_check_evaluates_a_model_in_a_child_and_names_a_signal():
    ok = llama.check()
    assert ok.ok and re.match(r"llama-cpp-python [\d.]+ evaluates a Q4_0 model here \(.*AVX2.*\)$", ok.detail)
    assert "AMX" not in ok.detail and "AVX512" not in ok.detail  # the portable build CI installs
    died = llama._evaluate((sys.executable, "-c", SIGILL))
    assert not died.ok
    assert died.detail == (
        "a tiny llama.cpp evaluation (child process) was killed by SIGILL (Illegal instruction): it ran an "
        f"instruction this CPU does not execute. {llama.SIGILL_FIX}"
    )
    segv = llama._evaluate((sys.executable, "-c", SIGILL.replace("SIGILL", "SIGSEGV")))
    assert segv.detail == "a tiny llama.cpp evaluation (child process) was killed by SIGSEGV (Segmentation fault)."


def test_doctor_for_gguf_runs_llama_cpp():
    result = CliRunner().invoke(main, ["doctor", "--target", "gguf"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^ok +llama\.cpp +llama-cpp-python [\d.]+ evaluates a Q4_0 model here", result.output, re.M)


def test_ci_installs_llama_cpp_with_the_readmes_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    flags = f'CMAKE_ARGS="{llama.CMAKE_ARGS}"'
    assert f"{flags} pip install --no-cache-dir -e '.[test]' && slmkit demo" in readme
    assert f"{flags} python -m pip install --quiet --no-cache-dir -e '.[test]'" in ci
    assert f'"llama-cpp-python=={llama.VERSION}"' in (ROOT / "pyproject.toml").read_text()
    assert llama.REINSTALL in (ROOT / "docs" / "gguf.md").read_text()
