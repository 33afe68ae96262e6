"""slmkit's int4 quantizer: its packed layout is what the runtime's kernels read, it beats
round-to-nearest on the error it minimises, and a tiny model built with it verifies."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from toolkit.build import build, plan_build
from toolkit.cli import main
from toolkit.errors import ConfigError
from toolkit.families import open_checkpoint
from toolkit.quantize.blocks import quantize


def _run_matmulnbits(x: np.ndarray, p, k: int, n: int, block: int) -> np.ndarray:
    inits = [numpy_helper.from_array(p.codes, "B"), numpy_helper.from_array(p.scales, "S")]
    inputs = ["X", "B", "S"]
    if p.zero_points is not None:
        inits.append(numpy_helper.from_array(p.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node(
        "MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


def _run_gather(ids: np.ndarray, p, k: int, block: int) -> np.ndarray:
    n, nb, half = p.codes.shape
    inits = [numpy_helper.from_array(p.codes.reshape(n, nb * half), "D"), numpy_helper.from_array(p.scales, "S")]
    inputs = ["D", "I", "S"]
    if p.zero_points is not None:
        inits.append(numpy_helper.from_array(p.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node(
        "GatherBlockQuantized",
        inputs,
        ["Y"],
        domain="com.microsoft",
        bits=4,
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("I", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, nb * block])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"I": ids})[0]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k,block", [(96, 32), (80, 32), (128, 64)])  # 80: a padded last block
def test_packed_layout_is_what_the_kernels_read(symmetric, k, block):
    rng = np.random.default_rng(1)
    n = 24
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((5, k)).astype(np.float32)
    p = quantize(w, block, symmetric=symmetric)
    np.testing.assert_allclose(_run_matmulnbits(x, p, k, n, block), x @ p.dequantize(), rtol=1e-4, atol=1e-4)
    if k % block == 0:
        ids = np.array([0, 5, 23, 5], dtype=np.int64)
        np.testing.assert_allclose(_run_gather(ids, p, k, block), p.dequantize().T[ids], rtol=1e-5, atol=1e-5)


def test_search_beats_round_to_nearest_on_weighted_error():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((256, 64)) * rng.uniform(0.2, 3.0, size=(256, 1))).astype(np.float32)
    importance = rng.uniform(0.01, 10.0, size=256).astype(np.float32)

    def weighted(p):
        return float((importance[:, None] * (p.dequantize() - w) ** 2).sum())

    x = w.T.reshape(64, 8, 32)  # min/max round-to-nearest with a 4-bit zero point, for comparison
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    s = (hi - lo) / 15
    zp = np.round(-lo / s)
    rtn = (
        ((np.clip(np.round(x / s[..., None]) + zp[..., None], 0, 15) - zp[..., None]) * s[..., None]).reshape(64, 256).T
    )
    rtn_err = float((importance[:, None] * (rtn - w) ** 2).sum())
    assert weighted(quantize(w, 32, importance)) < 0.95 * rtn_err  # measured: 0.91
    assert weighted(quantize(w, 32, importance)) < weighted(quantize(w, 32, None))


def test_mse_build_of_the_tiny_model_verifies_and_is_smaller(tmp_path, tiny35, bundles):
    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "android", ("quantize.method=mse", "quantize.symmetric=false"))
    manifest = build(src, plan, tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    float_tables = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}
    assert "GatherBlockQuantized" in ops and "MatMul" not in ops
    assert not [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in float_tables]
    assert all(len(n.input) == 4 for n in graph.node if n.op_type == "MatMulNBits")  # zero points present
    ours = (tmp_path / "b/model/model.onnx.data").stat().st_size
    builder = (bundles("android") / "model/model.onnx.data").stat().st_size
    assert ours < builder  # the builder keeps this untied model's embedding table in float32
    # onnx wrote this model.onnx.data 0600: the bundle is readable by every user of the device all the same
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in (tmp_path / "b").rglob("*")}
    assert modes["b/model/model.onnx.data"] == 0o644 and modes["b/tests/smoke_test.py"] == 0o755
    assert set(modes.values()) == {0o644, 0o755} and (tmp_path / "b").stat().st_mode & 0o777 == 0o755


def test_mse_with_blocks_larger_than_the_hidden_size(tmp_path, tiny35):
    """hidden 64 < block 128: every row is one padded block, and the embedding output is sliced."""
    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "cpu", ("quantize.method=mse", "quantize.symmetric=false", "quantize.block_size=128"))
    manifest = build(src, plan, tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    assert "Slice" in {n.op_type for n in graph.node if n.name.startswith("/model/embed_tokens/")}


def test_mse_refuses_int8_layers(tiny35):
    src = open_checkpoint(str(tiny35))
    with pytest.raises(ConfigError) as e:
        plan_build(src, None, "cpu", ("quantize.method=mse", "export.precision=int8"))
    assert str(e.value).startswith(
        "quantize.method 'mse' makes int4 weights (int8 only for the lm_head, with quantize.lm_head = int8, "
        "and where mixed chooses it), not precision 'int8'."
    )


def test_calibrated_lm_head_int8_keeps_the_output_projection_in_int8(tiny35, tmp_path):
    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "cpu", ("quantize.method=gptq", "quantize.lm_head=int8"))
    build(src, plan, tmp_path / "b", log=lambda _: None)
    graph = onnx.load(str(tmp_path / "b/model/model.onnx"), load_external_data=False).graph
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"
    }
    head = next(name for name in bits if name.startswith("/lm_head/MatMul"))
    assert bits.pop(head) == 8 and set(bits.values()) == {4}


def test_eval_and_bench_cli_on_a_tiny_bundle(copy_bundle, tiny35):
    bundle = copy_bundle("cpu")
    result = CliRunner().invoke(
        main, ["eval", str(bundle), "-r", str(tiny35), "--max-tokens", "600", "--window", "128"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == [
        "variant",
        "size",
        "MB",
        "ppl",
        "vs",
        "fp32",
        "top-1",
        "KL",
        "note",
    ]
    assert "tokens of slmkit default (GNU GPL v3 text)" in result.output
    quality = json.loads((bundle / "manifest.json").read_text())["quality"]["eval"]
    # int4 moves a model trained to be confident a little: most next tokens agree, the
    # distributions differ but not by much, perplexity stays close; the table shows the manifest's figures.
    assert quality["tokens"] > 500 and quality["window"] == 128
    assert 0.8 <= quality["top1_agreement"] < 1.0 and 0.0 < quality["mean_kl"] < 0.2
    assert abs(quality["ppl_increase"]) < 0.25
    assert quality["ppl_increase"] == pytest.approx(quality["ppl_bundle"] / quality["ppl_reference"] - 1)
    row = result.output.splitlines()[2].split()
    assert row[0] == bundle.name and float(row[2]) == pytest.approx(quality["ppl_bundle"], abs=0.005)
    assert float(row[4]) == pytest.approx(quality["top1_agreement"], abs=0.0005)
    result = CliRunner().invoke(main, ["verify", str(bundle)])  # the manifest update keeps the bundle valid
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["bench", str(bundle), "--prompt-tokens", "32", "--new-tokens", "16", "--runs", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert bench["decode_tok_s"] > 0 and bench["prefill_tok_s"] > 0 and bench["roofline_fraction"] > 0
    assert bench["weight_bytes"] == sum(p.stat().st_size for p in (bundle / "model").glob("model.onnx*"))
    # load time and the memory above the imported runtime, loading and generating (Linux resets the peak)
    assert bench["load_s"] > 0 and 0 < bench["load_peak_mb"] <= bench["run_peak_mb"]
    assert bench["load_peak_x_weights"] == pytest.approx(bench["load_peak_mb"] * (1 << 20) / bench["weight_bytes"])
    bad = CliRunner().invoke(main, ["bench", str(bundle), "--prompt-tokens", "5000"])
    assert bad.exit_code == 1
    assert bad.output == (
        "Error: --prompt-tokens 5000 + --new-tokens 128 must fit the bundle's context cap of "
        "4096 tokens, with at least 1 prompt token and 2 new tokens.\n"
    )


def test_quality_budget_argument_errors(tiny35):
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "cpu", "--quality-budget", "lots"])
    assert result.exit_code == 1
    assert result.output == "Error: --quality-budget 'lots': expected a perplexity increase such as 5% or 0.05.\n"


def test_quality_budget_tries_the_smallest_first_and_keeps_the_first_within(tiny35, tmp_path, monkeypatch):
    """Order and bookkeeping of --quality-budget, on the tiny model with its scores set: the first
    candidate (gptq, block 64) over the budget is marked so, the second (mixed) is chosen and
    built; the manifest keeps both with their figures."""
    from toolkit.verify import budget
    from toolkit.verify.quality import Quality

    scores = iter([0.30, 0.04])

    class Stub:
        def __init__(self, *_args):
            self.ppl, self.tokens = 10.0, 500

    def scored(_model_dir, _ref):
        increase = next(scores)
        return Quality(500, 1, 10.0, 10.0 * (1 + increase), 0.9, 0.1, "stub text")

    monkeypatch.setattr(budget, "Reference", Stub)
    monkeypatch.setattr(budget, "evaluate", scored)
    result = CliRunner().invoke(
        main, ["build", "-m", str(tiny35), "-t", "cpu", "-o", str(tmp_path / "b"), "--quality-budget", "5%"]
    )
    assert result.exit_code == 0, result.output
    quality = json.loads((tmp_path / "b" / "manifest.json").read_text())["quality"]
    assert [c["variant"] for c in quality["candidates"]] == [
        "int4 slmkit gptq, block 64",
        "int4 slmkit mixed (int8 where it costs most), block 64",
    ]
    assert [c["within_budget"] for c in quality["candidates"]] == [False, True]
    assert quality["chosen"] == "int4 slmkit mixed (int8 where it costs most), block 64"
    rows = [line for line in result.output.splitlines() if line.startswith("int4 slmkit")]
    assert rows[0].endswith("over budget") and rows[1].endswith("chosen")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["plan"]["quantize"]["method"] == "mixed" and manifest["verification"]["host"]["failed"] == 0
