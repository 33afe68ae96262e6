"""quantize.rotation = "hadamard": the residual stream rotated by a Hadamard matrix with random signs,
the norms' scales folded into the projections, before anything is quantized. Unquantized, the
rotated model must give the original's logits (ONNX graph and the layer-by-layer PyTorch model that
calibrates); quantized, its bundles pass their own checks; what it cannot be built for is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.build import plan_build
from toolkit.cli import main
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
from toolkit.quantize.rotation import hadamard, rotated, rotation
from toolkit.source.tensors import CheckpointTensors

IDS = [5, 17, 33, 99, 100, 7, 250, 12, 64, 3]


@pytest.mark.parametrize("n", [64, 128, 576, 1536, 3072, 8192])  # tiny widths, SmolLM2's, Phi-3.5's
def test_hadamard_matrices_of_the_served_widths(n):
    h = hadamard(n)
    assert h is not None and set(np.unique(h)) == {-1, 1}
    assert np.array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))
    q, what = rotation(n)
    assert what.startswith("Hadamard") and np.allclose(q @ q.T, np.eye(n), atol=1e-12)


def test_a_width_without_a_hadamard_gets_a_random_orthogonal_matrix():
    assert hadamard(100) is None
    q, what = rotation(100)
    assert what.startswith("random orthogonal") and np.allclose(q @ q.T, np.eye(100), atol=1e-12)


@pytest.mark.parametrize("variant", ["tiny35", "tiny4", "tiny_llama"])  # untied; tied with partial rotary; tied
def test_the_rotated_fp32_graph_gives_the_original_logits(request, tmp_path, variant):
    import onnxruntime_genai as og

    from toolkit.verify.quality import bundle_logits

    src = open_checkpoint(str(request.getfixturevalue(variant)))
    logits = {}
    for how in ("none", "hadamard"):
        sets = ("export.precision=fp32", f"quantize.rotation={how}", "optimize.context_cap=2048")
        plan = plan_build(src, None, "cpu", sets)
        folder = format_of(plan).export(src, plan, tmp_path / how, lambda _: None, "")
        logits[how] = bundle_logits(og.Model(str(folder)), IDS)
    assert np.abs(logits["hadamard"] - logits["none"]).max() <= 1e-4 * np.abs(logits["none"]).max()
    norms = CheckpointTensors(tmp_path / "hadamard" / "rotated", ("model.safetensors",))
    assert np.array_equal(norms.float32("model.norm.weight"), np.ones_like(norms.float32("model.norm.weight")))
    assert ("model.norm.rotation" in norms) == (variant != "tiny35")  # a tied table's MatMul after the final norm


def test_the_layer_by_layer_model_that_calibrates_reads_the_rotation(tiny_llama, tmp_path):
    """The calibration and mixed's gradients run the rotated checkpoint in PyTorch: with the tied
    table's MatMul after the final norm, it gives the original logits."""
    import torch

    from toolkit.reference.layerwise import layerwise_model

    src = open_checkpoint(str(tiny_llama))
    turned = rotated(src, tmp_path / "rotated")
    ids = torch.tensor([IDS])
    with torch.no_grad():
        out = [layerwise_model(s.path, s.weight_files)[1](ids).logits for s in (src, turned)]
    assert torch.allclose(out[0], out[1], atol=1e-4 * float(out[0].abs().max()))


@pytest.mark.parametrize(
    "variant, target, method",
    [
        ("tiny_llama", "cpu", "mixed"),
        ("tiny_llama", "cpu", "gptq"),
        ("tiny35", "gguf", None),
        ("tiny35", "snapdragon", None),
    ],
)
def test_a_rotated_int4_bundle_passes_its_own_checks(request, tmp_path, variant, target, method):
    """The ONNX cpu graph (a tied table: its int8 MatMul after the final norm, beside int4 and int8
    projections or int4 alone), llama.cpp's file, and the NPU's per-channel int4 (what the rotation is
    for there) on the x86 HTP backend."""
    model = request.getfixturevalue(variant)
    out = tmp_path / "b"
    sets = ["--set", "quantize.rotation=hadamard"]
    if method:
        sets += ["--set", f"quantize.method={method}"]
    if variant == "tiny_llama":
        sets += ["--set", "optimize.context_cap=2048", "--set", "verify.chat_prompts=[]"]
    if target == "snapdragon":
        sets += ["--set", "optimize.context_cap=128", "--set", "npu.prompt_tokens=16", "--set", "npu.weights=channel"]
    result = CliRunner().invoke(main, ["build", "-m", str(model), "-t", target, "-o", str(out), *sets])
    assert result.exit_code == 0, result.output
    assert "rotation: Hadamard 64x64 with random signs folded into the weights" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["quantize"]["rotation"] == "hadamard"
    assert manifest["verification"]["host"]["failed"] == 0


@pytest.mark.parametrize(
    "variant, target, extra, message",
    [
        ("tiny4", "gguf", (), "a tied token table on export.engine 'gguf'"),
        ("tiny_llama", "snapdragon", (), "a tied token table on export.engine 'qnn'"),
        (
            "tiny_llama",
            "cpu",
            (
                "--set",
                "export.engine=ort-genai",
                "--set",
                "quantize.method=default",
                "--set",
                "optimize.context_cap=2048",
            ),
            "a tied token table on export.engine 'ort-genai'",
        ),
        ("tiny_vision", "cpu", (), "Phi3VForCausalLM (phi3v: a rotation is written for the Phi-3/Phi-4-mini"),
        ("tiny35", "cpu", ("--set", "adapters.mode=runtime"), "runtime adapters (their A and B would need"),
    ],
)
def test_what_a_rotation_cannot_be_built_for_is_refused(request, tmp_path, variant, target, extra, message):
    out = tmp_path / "b"
    args = ["build", "-m", str(request.getfixturevalue(variant)), "-t", target, "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--set", "quantize.rotation=hadamard", *extra])
    assert result.exit_code != 0
    assert "quantize.rotation 'hadamard' cannot be built for" in result.output and message in result.output
    assert "Leave it at 'none'." in result.output and not out.exists()
