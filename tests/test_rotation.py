"""quantize.rotation = "hadamard": the residual stream rotated by a Hadamard matrix with random signs,
the norms' scales folded into the projections, before anything is quantized; "hadamard+down" also
rotates every down_proj input online (the graph's small Kronecker-factor MatMuls). Unquantized, the
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
from toolkit.graphs import hadamard as online
from toolkit.quantize.rotation import hadamard, rotated, rotation
from toolkit.source.tensors import CheckpointTensors

IDS = [5, 17, 33, 99, 100, 7, 250, 12, 64, 3]


@pytest.mark.parametrize("n", [64, 128, 576, 1536, 3072, 8192])  # tiny widths, SmolLM2's, Phi-3.5's
def test_hadamard_matrices_of_the_served_widths(n):
    h = hadamard(n)
    assert h is not None and set(np.unique(h)) == {-1, 1}
    f = h.astype(np.float64)  # BLAS; exact for these integer sums (numpy's int64 matmul takes minutes at 8192)
    assert np.array_equal(f @ f.T, n * np.eye(n))
    q, what = rotation(n)
    assert what.startswith("Hadamard") and np.allclose(q @ q.T, np.eye(n), atol=1e-12)


@pytest.mark.parametrize(
    "n, orders",
    [(128, [128]), (256, [16, 16]), (1536, [128, 12]), (2560, [128, 20]), (3072, [16, 16, 12]), (96, [8, 12])],
)
def test_the_online_hadamard_is_the_matrix_in_small_factors(n, orders):
    """SmolLM2's MLP width 1536 = 128 x 12 (a Paley core), Phi-3.5's 8192 = 128 x 64: the online
    product in factors is x @ hadamard(n) / sqrt(n), in numpy as in the graph's MatMuls."""
    assert online.factor_orders(n) == orders and online.factor_orders(8192) == [128, 64]
    x = np.random.default_rng(0).standard_normal((3, n)).astype(np.float32)
    want = x @ (hadamard(n) / np.sqrt(n))
    assert np.abs(online.apply(x, online.factors(orders), np) - want).max() < 1e-5
    assert online.factor_orders(100) is None


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
    for how in ("none", "hadamard", "hadamard+down"):
        sets = ("export.precision=fp32", f"quantize.rotation={how}", "optimize.context_cap=2048")
        plan = plan_build(src, None, "cpu", sets)
        folder = format_of(plan).export(src, plan, tmp_path / how, lambda _: None, "")
        logits[how] = bundle_logits(og.Model(str(folder)), IDS)
    for how in ("hadamard", "hadamard+down"):
        assert np.abs(logits[how] - logits["none"]).max() <= 1e-4 * np.abs(logits["none"]).max()
    norms = CheckpointTensors(tmp_path / "hadamard" / "rotated", ("model.safetensors",))
    assert np.array_equal(norms.float32("model.norm.weight"), np.ones_like(norms.float32("model.norm.weight")))
    assert ("model.norm.rotation" in norms) == (variant != "tiny35")  # a tied table's MatMul after the final norm


def test_the_layer_by_layer_model_that_calibrates_reads_the_rotation(tiny_llama, tmp_path):
    """The calibration and mixed's gradients run the rotated checkpoint in PyTorch: with the tied
    table's MatMul after the final norm, it gives the original logits."""
    import torch

    from toolkit.reference.layerwise import layerwise_model

    src = open_checkpoint(str(tiny_llama))
    turned = [rotated(src, tmp_path / "rotated"), rotated(src, tmp_path / "online", down=True)]
    ids = torch.tensor([IDS])
    with torch.no_grad():
        out = [layerwise_model(s.path, s.weight_files)[1](ids).logits for s in (src, *turned)]
    for logits in out[1:]:
        assert torch.allclose(out[0], logits, atol=1e-4 * float(out[0].abs().max()))


@pytest.mark.parametrize(
    "variant, target, method, how",
    [
        ("tiny_llama", "cpu", "mixed", "hadamard"),
        ("tiny_llama", "cpu", "gptq", "hadamard"),
        ("tiny_llama", "cpu", "mixed", "hadamard+down"),
        ("tiny35", "android", "gptq", "hadamard+down"),
        ("tiny35", "gguf", None, "hadamard"),
        ("tiny35", "snapdragon", None, "hadamard"),
    ],
)
def test_a_rotated_int4_bundle_passes_its_own_checks(request, tmp_path, variant, target, method, how):
    """The ONNX cpu graph (a tied table: its int8 MatMul after the final norm, beside int4 and int8
    projections or int4 alone; the online Hadamard before down_proj), llama.cpp's file, and the NPU's
    per-channel int4 (what the rotation is for there) on the x86 HTP backend."""
    model = request.getfixturevalue(variant)
    out = tmp_path / "b"
    sets = ["--set", f"quantize.rotation={how}"]
    if method:
        sets += ["--set", f"quantize.method={method}"]
    if variant == "tiny_llama":
        sets += ["--set", "optimize.context_cap=2048", "--set", "verify.chat_prompts=[]"]
    if target == "snapdragon":
        sets += ["--set", "optimize.context_cap=128", "--set", "npu.prompt_tokens=16", "--set", "npu.weights=channel"]
    result = CliRunner().invoke(main, ["build", "-m", str(model), "-t", target, "-o", str(out), *sets])
    assert result.exit_code == 0, result.output
    assert "rotation: Hadamard 64x64 with random signs folded into the weights" in result.output
    assert ("rotation: online Hadamard 128 on every down_proj input" in result.output) == (how == "hadamard+down")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["quantize"]["rotation"] == how
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
        (
            "tiny35",
            "gguf",
            ("--set", "quantize.rotation=hadamard+down"),
            "export.engine 'gguf' with an online Hadamard on the down_proj input (only slmkit's streamed",
        ),
        (
            "tiny35",
            "cpu",
            ("--set", "quantize.rotation=hadamard+down", "--set", "quantize.method=awq"),
            "quantize.method 'awq' with an online Hadamard (awq folds down_proj's scales into up_proj)",
        ),
    ],
)
def test_what_a_rotation_cannot_be_built_for_is_refused(request, tmp_path, variant, target, extra, message):
    out = tmp_path / "b"
    args = ["build", "-m", str(request.getfixturevalue(variant)), "-t", target, "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--set", "quantize.rotation=hadamard", *extra])
    assert result.exit_code != 0
    how = "hadamard+down" if "quantize.rotation=hadamard+down" in extra else "hadamard"
    assert f"quantize.rotation '{how}' cannot be built for" in result.output and message in result.output
    # without the online product, both llama.cpp's file and awq can have the rotation
    advice = "Use 'hadamard' (no online product) or 'none'." if how == "hadamard+down" else ""
    assert (advice or "Leave it at 'none'.") in result.output and not out.exists()
