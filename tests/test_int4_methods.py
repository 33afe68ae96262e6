"""Other ways to choose int4 codes (toolkit/quantize/gptq.py, awq.py): what each promises, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.quantize.blocks import quantize, quantize8
from toolkit.quantize.gptq import gptq


def _correlated(k: int = 256, n: int = 96, seed: int = 0):
    """A weight and the second moments of inputs with a few strong, correlated features."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) * (rng.random(k) ** 3)[None, :]
    x = rng.normal(size=(4096, k)) @ mix.T / 10 + rng.normal(size=(4096, k)) * 0.1
    return rng.normal(size=(k, n)).astype(np.float32) * 0.02, x.T @ x / len(x)


def _output_error(w, gram, packed) -> float:
    e = w - packed.dequantize()
    return float(np.trace(e.T @ gram @ e))


def test_gptq_lowers_the_output_error_of_the_per_block_search():
    w, gram = _correlated()
    for block in (32, 64):
        searched = _output_error(w, gram, quantize(w, block, np.diag(gram).astype(np.float32)))
        assert _output_error(w, gram, gptq(w, gram, block)) < 0.5 * searched


def test_gptq_writes_the_matmulnbits_layout():
    w, gram = _correlated(k=128, n=40)
    p = gptq(w, gram, 64)
    assert p.codes.shape == (40, 2, 32) and p.codes.dtype == np.uint8
    assert p.scales.shape == (40, 2) and p.zero_points.shape == (40, 1) and p.bits == 4
    unweighted = gptq(w, None, 64)  # a weight that calibration never reached: int4's own search
    np.testing.assert_array_equal(unweighted.dequantize(), quantize(w, 64).dequantize())
    gram[5, :] = gram[:, 5] = 0.0  # an input that never fires
    for rows in (128, 100):  # 100: the last group padded
        p = gptq(w[:rows], gram[:rows, :rows], 64)
        assert p.dequantize().shape == (rows, 40)
        assert np.abs(p.dequantize() - w[:rows]).max() < np.abs(w).max()


def test_int8_blocks_round_trip_within_half_a_step():
    w, _ = _correlated(k=128, n=16)
    p = quantize8(w, 64)
    step = np.repeat(p.scales, 64, axis=1).T  # [K, N]
    assert p.bits == 8 and p.codes.shape == (16, 2, 64)
    assert np.all(np.abs(p.dequantize() - w) <= 0.5 * step + 1e-7)


def test_gptq_build_of_the_tiny_model_verifies(tmp_path, tiny35):
    import onnx

    from toolkit.build import build, plan_build
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    plan = plan_build(
        src, None, "android", ("quantize.method=gptq", "quantize.symmetric=false", "quantize.block_size=128")
    )  # hidden 64: one padded group
    manifest = build(src, plan, tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    assert manifest["verification"]["host"]["top1_agreement"] >= 0.85
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    assert {n.op_type for n in graph.node} >= {"MatMulNBits", "GatherBlockQuantized"}
    assert "MatMul" not in {n.op_type for n in graph.node}


def test_gptq_refuses_what_it_does_not_write(tiny35):
    from toolkit.build import plan_build
    from toolkit.errors import ConfigError
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    with pytest.raises(ConfigError) as e:
        plan_build(src, None, "cpu", ("quantize.method=gptq", "quantize.symmetric=true"))
    assert str(e.value) == (
        "quantize.method 'gptq' writes asymmetric blocks (a 4-bit zero point per block): "
        "set quantize.symmetric = false, or use method 'default' for symmetric int4."
    )
    with pytest.raises(ConfigError) as e:
        plan_build(src, None, "cpu", ("quantize.method=gptq", "quantize.symmetric=false", "quantize.lm_head=int8"))
    assert str(e.value).startswith("quantize.method 'gptq' makes int4 weights only")


def test_gptq_memory_estimate_counts_every_layer_input_gram():
    from toolkit.plan.doctor import gptq_gram_bytes, memory_check

    smol = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "vocab_size": 49152,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "tie_word_embeddings": True,
    }
    assert gptq_gram_bytes(smol, "mse") == 0
    assert gptq_gram_bytes(smol, "gptq") == 8 * 30 * (3 * 576**2 + 1536**2) + 8 * 576**2
    assert "every layer input X^T X" in memory_check(134_515_008, smol, "stream", "gptq").detail


@pytest.mark.parametrize("variant", ["tiny35", "tiny_llama"])
def test_awq_scales_keep_the_float_function(tmp_path, variant, request):
    """Fused (Phi-3.5: qkv_proj, gate_up_proj) and separate, grouped-query (Llama) layouts."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.data import corpus
    from toolkit.quantize.awq import awq_checkpoint
    from toolkit.quantize.calibration import linear_input_stats

    src = request.getfixturevalue(variant)
    alphas = awq_checkpoint(src, tmp_path / "awq", linear_input_stats(src, [corpus()[:3000]], gram=True), 32)
    assert len(alphas) == 4 * 2 and any(a > 0 for a in alphas.values())  # 4 groups per layer, 2 layers
    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits
        after = AutoModelForCausalLM.from_pretrained(tmp_path / "awq", dtype=torch.float32)(ids).logits
    assert torch.allclose(before, after, atol=1e-4 * before.abs().max().item())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from toolkit.tiny.phi3 import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_awq_build_of_the_tiny_model_verifies(tmp_path, tiny35):
    from toolkit.build import build, plan_build
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "cpu", ("quantize.method=awq", "quantize.symmetric=false", "quantize.block_size=32"))
    lines = []
    manifest = build(src, plan, tmp_path / "b", log=lines.append)
    assert manifest["verification"]["host"]["failed"] == 0
    assert any(line.strip().startswith("AWQ scales folded into 8 groups") for line in lines)
    assert manifest["plan"]["quantize"]["method"] == "awq"
    assert not list((tmp_path / "b").rglob("*.safetensors"))  # the scaled copy stays in the work folder


def test_mixed_promotes_by_cost_per_byte_within_the_builder_bytes():
    from toolkit.quantize.gptq import gptq
    from toolkit.quantize.mixed import builder_bytes, packed_bytes, promote

    rng = np.random.default_rng(0)
    # Each 256x64 matrix saves 896 bytes against the builder's layout; int8 costs 8320 more: the
    # room of 20 matrices pays for two.
    weights = {f"m{i}": rng.normal(size=(256, 64)).astype(np.float32) for i in range(20)}
    packs = {n: gptq(w, None, 64) for n, w in weights.items()}
    cost = {n: 0.1 * i for i, n in enumerate(weights)} | {"m3": 8.0, "m11": 4.0}
    chosen, moved, used, room = promote(packs, weights.__getitem__, cost, 64)
    assert room == sum(builder_bytes(256, 64) - packed_bytes(p) for p in packs.values()) == 20 * 896
    assert moved == ["m3", "m11"] and used == 2 * 8320  # the costliest per byte first
    total = sum(packed_bytes(p) for p in chosen.values())
    assert total <= 20 * builder_bytes(256, 64)  # never more than the builder default
    assert {n for n, p in chosen.items() if p.bits == 8} == set(moved)


def test_mixed_build_of_the_tiny_model_verifies_and_stays_small(tmp_path, tiny35):
    import onnx

    from toolkit.build import build, plan_build
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    logs: list[str] = []
    plan = plan_build(src, None, "cpu", ("quantize.method=mixed", "quantize.symmetric=false", "quantize.block_size=64"))
    manifest = build(src, plan, tmp_path / "b", log=logs.append)
    assert manifest["verification"]["host"]["failed"] == 0
    assert any(line.strip().startswith("mixed precision: ") and " matrices in int8 " in line for line in logs)
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == {4, 8}  # the plan's read-back accepts both for this method


def test_mixed_refuses_large_models_and_symmetric_blocks(tiny35, monkeypatch):
    from toolkit.build import plan_build
    from toolkit.errors import ConfigError
    from toolkit.families import open_checkpoint
    from toolkit.quantize import own

    src = open_checkpoint(str(tiny35))
    with pytest.raises(ConfigError, match=r"quantize\.method 'mixed' writes asymmetric blocks"):
        plan_build(src, None, "cpu", ("quantize.method=mixed", "quantize.symmetric=true"))
    monkeypatch.setattr(own, "MIXED_MAX_PARAMS", 1000)
    with pytest.raises(
        ConfigError,
        match=r"measures each matrix on the whole float32 model in memory, once per "
        r"matrix: .*Use --set quantize.method=gptq \(or mse\) instead.",
    ):
        plan_build(src, None, "cpu", ("quantize.method=mixed", "quantize.symmetric=false"))
