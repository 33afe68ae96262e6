"""What a new user reaches first, given bad input or a broken install: one `Error:` line (or a
short block) with the fix, exit 1, never a traceback."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from toolkit.cli import main


def refused(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.startswith("Error: "), result.output
    return result.output


@pytest.mark.parametrize("command", ["verify", "bench", "pack"])
def test_bundle_commands_name_a_missing_bundle(command, tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nothere", tmp_path / "empty"):
        assert refused([command, str(path)]) == f"Error: '{path}' is not an slmkit bundle: it has no manifest.json.\n"


def test_eval_names_what_is_wrong(bundles, tiny35, tmp_path):
    bundle = str(bundles("cpu"))
    assert refused(["eval", bundle, "-r", str(tmp_path / "nothere")]).startswith(
        f"Error: Model folder '{tmp_path / 'nothere'}' does not exist."
    )
    assert (
        refused(["eval", bundle, "-r", str(tiny35), "--window", "5"])
        == "Error: --window 5: expected 16..8192 tokens.\n"
    )
    text = tmp_path / "text.bin"
    text.write_bytes(b"\xff\xfe\x00bad")
    assert refused(["eval", bundle, "-r", str(tiny35), "--text", str(text)]).startswith(
        f"Error: Cannot read --text {text} as UTF-8 text ("
    )


def test_bench_names_the_bad_option(bundles):
    bundle = str(bundles("cpu"))
    assert refused(["bench", bundle, "--runs", "0"]) == "Error: --runs 0: expected at least 1 timed run.\n"
    assert refused(["bench", bundle, "--new-tokens", "1"]).startswith(
        "Error: --prompt-tokens 128 + --new-tokens 1 must fit"
    )
    assert refused(["bench", str(bundles("linux-cuda")), "--emulate", "arm64"]) == (
        f"Error: Bundle '{bundles('linux-cuda')}' is not an onnxruntime CPU bundle: an emulated ARM64 CPU "
        "measures the memory of cpu, android and ios bundles.\n"
    )


def test_unpack_of_a_file_that_is_no_archive(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an archive\n")
    assert refused(["unpack", str(junk), "-o", str(tmp_path / "x")]) == (
        f"Error: {junk} is not a .tar.gz archive (nor any tar format). Pass a file written by `slmkit pack`.\n"
    )
    assert refused(["unpack", str(tmp_path / "none.tar.gz"), "-o", str(tmp_path / "x")]) == (
        f"Error: Cannot open {tmp_path / 'none.tar.gz'} (No such file or directory).\n"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "module, dist, args",
    [
        ("onnxruntime_genai", "onnxruntime-genai", ["bench", "{bundle}", "--runs", "1"]),
        ("onnxruntime_genai", "onnxruntime-genai", ["eval", "{bundle}", "-r", "{model}"]),
        ("torch", "torch", ["eval", "{bundle}", "-r", "{model}"]),
        ("onnx", "onnx", ["verify", "{bundle}"]),
    ],
)
def test_a_missing_package_is_named_with_its_install_command(bundles, tiny35, monkeypatch, module, dist, args):
    from toolkit.verify import quality

    quality.bundle_runner.cache_clear()  # the runner module imports onnxruntime_genai when loaded
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    args = [a.format(bundle=bundles("cpu"), model=tiny35) for a in args]
    try:
        out = refused(args)
    finally:
        quality.bundle_runner.cache_clear()
    assert out.startswith(f"Error: The package {dist} (") and f"pip install '{dist}>=" in out, out
    assert out.rstrip().endswith("(`slmkit doctor` checks every dependency)."), out


def test_bench_on_a_gpu_without_cuda_pytorch_says_the_roofline_was_not_measured(bundles, monkeypatch):
    """`slmkit bench` on a linux-cuda bundle with its own provider, where PyTorch has no CUDA: the
    roofline of GPU memory cannot be timed, and the table and the JSON say so. No GPU here, so the
    runner loads the same graph on the CPU provider; everything else is bench's own path."""
    import json

    from toolkit.verify import bench
    from toolkit.verify.quality import bundle_runner

    runner = bundle_runner()
    load = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda model_dir, provider: load(model_dir, "cpu"))
    assert bench.gpu_copy_bandwidth() is None  # this machine's PyTorch is a CPU build
    args = ["bench", str(bundles("linux-cuda")), "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1"]
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[-1] == (
        "roofline                 not measured: timing a copy in GPU memory needs PyTorch with CUDA"
    )
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["bandwidth_of"], data["bandwidth_gb_s"], data["roofline_fraction"]) == ("GPU memory", None, None)
    assert data["decode_tok_s"] > 0 and data["provider"] == "bundle"
