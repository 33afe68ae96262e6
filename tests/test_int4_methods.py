"""slmkit's calibrated int4 (toolkit/quantize/): what each piece promises, on small matrices and
tiny models; whole builds of every method through the streamed export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.quantize.blocks import quantize, quantize8
from toolkit.quantize.gptq import gptq


def _correlated(k: int = 256, n: int = 96, seed: int = 0):
    """A weight [out, in] and the second moments of inputs with a few strong, correlated features."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) * (rng.random(k) ** 3)[None, :]
    x = rng.normal(size=(4096, k)) @ mix.T / 10 + rng.normal(size=(4096, k)) * 0.1
    return rng.normal(size=(n, k)).astype(np.float32) * 0.02, x.T @ x / len(x)


def _output_error(w, gram, packed) -> float:
    e = w - packed.dequantize().T
    return float(np.trace(e @ gram @ e.T))


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_lowers_the_output_error_of_the_per_block_search(symmetric):
    w, gram = _correlated()
    for block in (32, 64):
        searched = _output_error(w, gram, quantize(w.T, block, np.diag(gram).astype(np.float32), symmetric))
        assert _output_error(w, gram, gptq(w, gram, block, symmetric)) < 0.5 * searched


@pytest.mark.parametrize("symmetric", [False, True])
def test_refit_scales_lower_the_output_error_of_gptqs_codes(symmetric):
    """GPTQ's scales are chosen before its codes; refit to the codes, they lower the output error
    on the calibration states, stay positive, and a second sweep finds almost nothing left."""
    from toolkit.quantize.gptq import gptq_codes, refit_scales

    w, gram = _correlated(k=200)  # 200: the last group padded
    codes, s, z = gptq_codes(w, gram, 64, symmetric)

    def error(scales):
        d = codes - np.repeat(z.T, 64, axis=1)[:, :200]
        e = w - np.repeat(scales.T, 64, axis=1)[:, :200] * d
        return float(np.einsum("ok,kj,oj->", e, gram, e))

    once = refit_scales(w, gram, codes, s, z, 64)
    assert once.shape == s.shape and (once > 0).all()
    assert error(once) < 0.995 * error(s)
    assert error(refit_scales(w, gram, codes, once, z, 64)) > 0.995 * error(once)


def test_gptq_writes_the_matmulnbits_layout():
    w, gram = _correlated(k=128, n=40)
    p = gptq(w, gram, 64)
    assert p.codes.shape == (40, 2, 32) and p.codes.dtype == np.uint8
    assert p.scales.shape == (40, 2) and p.zero_points.shape == (40, 1) and p.bits == 4
    symmetric = gptq(w, gram, 64, symmetric=True)  # zero point 8: none stored
    assert symmetric.zero_points is None and np.abs(symmetric.dequantize().T - w).max() < np.abs(w).max()
    unweighted = gptq(w, None, 64)  # a weight that calibration never reached: blocks.quantize's search
    np.testing.assert_array_equal(unweighted.dequantize(), quantize(w.T, 64).dequantize())
    gram[5, :] = gram[:, 5] = 0.0  # an input that never fires
    for inputs in (128, 100):  # 100: the last group padded
        p = gptq(torch.from_numpy(w[:, :inputs]), torch.from_numpy(gram[:inputs, :inputs]), 64)
        assert p.dequantize().shape == (inputs, 40)
        assert np.abs(p.dequantize().T - w[:, :inputs]).max() < np.abs(w).max()


def test_gptq_survives_a_singular_input_covariance():
    """The first layer sees fewer distinct inputs than features: X^T X summed in float32 is
    singular, with rounding below zero; the damping is raised until it factorises."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 256)).astype(np.float32)  # rank 40 of 256
    gram = torch.from_numpy(x.T @ x / 40).double()
    gram -= 1e-3 * torch.eye(256, dtype=torch.float64)  # eigenvalues below zero, as rounding leaves them
    w = rng.normal(size=(32, 256)).astype(np.float32)
    p = gptq(w, gram, 64)
    assert np.isfinite(p.dequantize()).all() and np.abs(p.dequantize().T - w).max() < np.abs(w).max()


def test_int8_blocks_round_trip_within_half_a_step():
    w, _ = _correlated(k=128, n=16)
    p = quantize8(w.T, 64)
    step = np.repeat(p.scales, 64, axis=1)  # [N, K]
    assert p.bits == 8 and p.codes.shape == (16, 2, 64)
    assert np.all(np.abs(p.dequantize().T - w) <= 0.5 * step + 1e-7)


def test_mixed_promotes_by_cost_per_byte_within_the_builder_bytes():
    from toolkit.quantize.mixed import Candidate, builder_bytes, choose_promotions, int8_bytes

    # Each matrix of K=256 inputs and N=64 outputs saves 896 bytes against the builder's layout at
    # block 64 with zero points; int8 costs 8320 more: the room of 20 matrices pays for two.
    four = 64 * (4 * (32 + 4) + 2)
    eight = int8_bytes(256, 64, 64)
    assert builder_bytes(256, 64) - four == 896 and eight - four == 8320
    candidates = [Candidate(f"m{i}", 0.1 * i, four, eight, 256, 64) for i in range(20)]
    candidates[3] = Candidate("m3", 8.0, four, eight, 256, 64)
    candidates[11] = Candidate("m11", 4.0, four, eight, 256, 64)
    chosen, used, room = choose_promotions(candidates)
    assert room == 20 * 896 and chosen == {"m3", "m11"} and used == 2 * 8320  # the costliest per byte


def test_loss_gradients_are_measured_at_every_linear_output(tiny35, tmp_path):
    """mixed's weights of each row's error (toolkit/quantize/fisher.py), from the layerwise model:
    one value per output feature of every Linear and the lm_head, layer inputs on disk meanwhile."""
    from toolkit.families import open_checkpoint
    from toolkit.quantize.fisher import output_sensitivity
    from toolkit.reference.layerwise import layer_arguments, layerwise_model

    src = open_checkpoint(str(tiny35))
    tokenizer, model = layerwise_model(src.path, src.weight_files)
    ids = torch.tensor([tokenizer("The capital of France is Paris. " * 8).input_ids[:64]] * 2)
    with torch.no_grad():
        kwargs = layer_arguments(model, model.model.embed_tokens(ids))
    sens = output_sensitivity(model, ids, kwargs, tmp_path / "g", "cpu")
    layers, hidden = src.config["num_hidden_layers"], src.config["hidden_size"]
    assert set(sens) == {"lm_head"} | {
        f"model.layers.{i}.{m}"
        for i in range(layers)
        for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    }
    assert sens["lm_head"].shape == (src.config["vocab_size"],) and sens["model.layers.0.self_attn.o_proj"].shape == (
        hidden,
    )
    assert all(np.isfinite(v).all() and (v >= 0).all() and v.sum() > 0 for v in sens.values())
    assert not list((tmp_path / "g").iterdir())  # the layer inputs kept for the backward are gone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_gradients_in_row_chunks_equal_autograd(monkeypatch, dtype):
    """The lm_head's loss gradients, computed a few vocabulary rows at a time from a table kept in
    its stored dtype, equal autograd's on the whole float32 logits (a 200k-token table never
    becomes one float32 logits tensor)."""
    import toolkit.quantize.fisher as fisher

    monkeypatch.setattr(fisher, "HEAD_ROWS", 7)  # 50 rows: 8 chunks, the last one short
    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(12, 16, generator=g), torch.randn(50, 16, generator=g).to(dtype), torch.randn(50)
    targets = torch.randint(0, 50, (12,), generator=g)
    targets[[5, 11]] = -1  # no next token there
    grad, squares = fisher.head_gradients(x, targets, weight, bias)

    leaf = x.clone().requires_grad_(True)
    logits = leaf @ weight.float().T + bias
    logits.retain_grad()
    live = targets >= 0
    torch.nn.functional.cross_entropy(logits[live], targets[live], reduction="sum").backward()
    assert torch.allclose(grad, leaf.grad, atol=1e-5)
    assert np.allclose(squares, (logits.grad**2).sum(0).double().numpy(), atol=1e-5)


@pytest.mark.parametrize("variant", ["tiny35", "tiny_llama"])
def test_awq_scales_keep_the_layer_function(variant, request):
    """Fused (Phi-3.5: qkv_proj, gate_up_proj) and separate, grouped-query (Llama) layouts: a layer
    with AWQ scales folded in computes what it did, and its inputs' X^T X become the scaled ones'."""
    from toolkit.families import open_checkpoint
    from toolkit.graphs.ops import Shape
    from toolkit.quantize.awq import fold_layer
    from toolkit.reference.layerwise import layer_arguments, layerwise_model

    src = open_checkpoint(str(request.getfixturevalue(variant)))
    tokenizer, model = layerwise_model(src.path, src.weight_files)
    ids = torch.tensor([tokenizer("Once upon a time the weather was mild. " * 6).input_ids[:48]])
    lazy = model.model.layers[1]
    layer = lazy.load()
    with torch.no_grad():
        x = model.model.embed_tokens(ids) * 3.0
        kwargs = layer_arguments(model, x)
        before = lazy.run(x, **kwargs)
        hidden = src.config["hidden_size"]
        grams = {
            n: torch.eye(m.in_features, dtype=torch.float64) * (1.0 + torch.arange(m.in_features) % 7)
            for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
        alphas = fold_layer(layer, grams, Shape.of(src.config), 32)
        after = lazy.run(x, **kwargs)
    assert len(alphas) == 4 and any(a > 0 for a in alphas.values())
    assert torch.allclose(before, after, atol=1e-4 * before.abs().max().item())
    changed = [n for n, g in grams.items() if not torch.equal(g.diagonal(), (1.0 + torch.arange(g.shape[0]) % 7))]
    assert changed and hidden in {grams[n].shape[0] for n in changed}


@pytest.mark.parametrize(
    "target, method, symmetric, block",
    [
        ("android", "gptq", False, 128),
        ("android", "gptq", True, 32),
        ("cpu", "awq", False, 32),
        ("linux-cuda", "gptq", False, 32),
    ],
)
def test_calibrated_builds_of_the_tiny_model_verify(tmp_path, tiny35, target, method, symmetric, block):
    """Hidden 64 with block 128: one padded group; symmetric blocks, as the phone recipes use; the
    float16 CUDA graph (its scales are float16) checked on the CPU provider."""
    import onnx

    from toolkit.build import build, plan_build
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    overrides = (
        f"quantize.method={method}",
        f"quantize.symmetric={str(symmetric).lower()}",
        f"quantize.block_size={block}",
    )
    manifest = build(src, plan_build(src, None, target, overrides), tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    assert manifest["verification"]["host"]["top1_agreement"] >= 0.85
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert ops >= {"MatMulNBits", "GatherBlockQuantized"} and "MatMul" not in ops
    zero_points = {len(n.input) == 4 for n in graph.node if n.op_type == "MatMulNBits"}
    assert zero_points == {not symmetric}


def test_mixed_build_of_the_tiny_model_verifies_and_stays_small(tmp_path, tiny_llama):
    """A tied table (Llama): the lm_head's blocks are the embedding's, written after the last layer."""
    import onnx

    from toolkit.build import plan_build
    from toolkit.families import open_checkpoint
    from toolkit.formats import format_of
    from toolkit.quantize.mixed import builder_bytes

    src = open_checkpoint(str(tiny_llama))
    logs: list[str] = []
    plan = plan_build(src, "smollm2/cpu", None, ("optimize.context_cap=2048", "quantize.block_size=64"))
    model_dir = format_of(plan).export(src, plan, tmp_path / "w", logs.append, "")
    assert any(line.strip().startswith("mixed precision: ") and " matrices in int8 " in line for line in logs)
    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    bits = {a.i for n in nodes for a in n.attribute if a.name == "bits"}
    assert bits == {4, 8}  # room for one int8 matrix at least, on this model
    attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
    stored = sum(
        np.prod(i.dims) * (4 if i.data_type == 1 else 1)
        for i in graph.initializer
        if any(i.name in n.input[1:] for n in nodes)
    )
    assert stored <= sum(builder_bytes(a["K"], a["N"]) for a in attrs)  # within the builder default's bytes
    referenced = {i for n in graph.node for i in n.input}
    assert all(i.name in referenced for i in graph.initializer)  # the blocks not chosen are gone
    data = model_dir / "model.onnx.data"
    assert data.stat().st_size == sum(
        int(e.value) for i in graph.initializer for e in i.external_data if e.key == "length"
    )
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    lm_head = next(n for n in nodes if n.name.startswith("/lm_head"))
    assert gather.input[2:] == lm_head.input[2:]  # the tied table reads the lm_head's blocks


def test_calibrated_methods_refuse_what_they_do_not_write(tiny35):
    from toolkit.build import plan_build
    from toolkit.errors import ConfigError
    from toolkit.families import open_checkpoint

    src = open_checkpoint(str(tiny35))
    with pytest.raises(ConfigError) as e:
        plan_build(src, None, "cpu", ("quantize.method=gptq", "export.engine=ort-genai"))
    assert str(e.value) == (
        "quantize.method 'gptq' is slmkit's calibrated int4, written by its streamed export: use "
        "--set export.engine=stream, or a builder method (default, k_quant, k_quant_last, k_quant_mixed) "
        "with the onnxruntime-genai builder."
    )
    with pytest.raises(ConfigError) as e:
        plan_build(src, None, "cpu", ("quantize.method=gptq", "export.precision=int8"))
    assert str(e.value).startswith("quantize.method 'gptq' makes int4 weights (int8 only for the lm_head")


def test_calibration_memory_stays_flat_in_layers():
    from toolkit.plan.doctor import calibration_memory_bytes, memory_check

    phi35 = {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "vocab_size": 32064,
        "num_attention_heads": 32,
    }
    assert calibration_memory_bytes(phi35) == calibration_memory_bytes(dict(phi35, num_hidden_layers=64))
    check = memory_check(3_820_000_000, phi35, "stream", "mixed")
    assert check.ok and "calibrated mixed int4 (one layer, its inputs' X^T X, the calibration states)" in check.detail


def _weight_bytes(model_dir) -> int:
    """The bytes of model.onnx's initializers but the rope caches (what quantize.target_mb counts)."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    return sum(
        int(e.value) for i in graph.initializer if "cache" not in i.name for e in i.external_data if e.key == "length"
    )


def test_a_byte_target_spends_what_it_is_given(tmp_path, tiny_llama):
    """quantize.target_mb instead of the builder's bytes: more bytes buy more int8 matrices, the
    weights stay within the target, and a target below the int4 weights is refused with their size."""
    from toolkit.build import plan_build
    from toolkit.errors import ConfigError
    from toolkit.families import open_checkpoint
    from toolkit.formats import format_of

    src = open_checkpoint(str(tiny_llama))
    sets = ("optimize.context_cap=2048", "quantize.block_size=64")
    sizes, logs = {}, {}
    for target in (0.0, 0.3):
        plan = plan_build(src, "smollm2/cpu", None, (*sets, f"quantize.target_mb={target}"))
        logs[target] = []
        sizes[target] = _weight_bytes(
            format_of(plan).export(src, plan, tmp_path / str(target), logs[target].append, "")
        )
    promoted = {
        t: [int(line.split("mixed precision: ")[1].split()[0]) for line in lines if " matrices in int8 (" in line]
        for t, lines in logs.items()
    }
    assert promoted[0.0][0] < promoted[0.3][0] and sizes[0.0] < sizes[0.3] <= 0.3e6
    assert any("that quantize.target_mb = 0.3 leaves over int4" in line for line in logs[0.3])
    plan = plan_build(src, "smollm2/cpu", None, (*sets, "quantize.target_mb=0.01"))
    with pytest.raises(ConfigError, match=r"quantize.target_mb = 0.01 is below the 0\.\d MB of this model's weights"):
        format_of(plan).export(src, plan, tmp_path / "small", lambda _: None, "")
    with pytest.raises(ConfigError) as e:
        plan_build(src, "smollm2/cpu", None, (*sets, "quantize.target_mb=1", "quantize.method=gptq"))
    assert str(e.value).startswith("quantize.target_mb = 1.0 is the byte budget of quantize.method 'mixed'")
