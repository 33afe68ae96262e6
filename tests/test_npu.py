"""The snapdragon target: static w4a16 graphs compiled to QNN context binaries at build time and
checked through onnxruntime-genai on onnxruntime-qnn's x86-64 HTP backend (tiny models, a 128-slot
cache and 16-token prompt windows, so that the x86 backend runs them in seconds)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import main

if importlib.util.find_spec("onnxruntime_qnn") is None and not os.environ.get("SLMKIT_REQUIRE_NPU"):
    pytest.skip(
        "onnxruntime-qnn is not installed: pip install onnxruntime-qnn==2.7.0 (Python 3.11+)", allow_module_level=True
    )

SMALL = ("--set", "optimize.context_cap=128", "--set", "npu.prompt_tokens=16")
# The tiny Llama's toy tokenizer encodes the chat template's special tokens apart from the
# reference's (its cpu bundle fails the same check): its text prompts are checked.
NO_CHAT = ("--set", "verify.chat_prompts=[]")


@pytest.fixture(scope="module")
def npu_bundle(tmp_path_factory):
    """(model folder, extra --set ...) -> a snapdragon bundle, built on first use."""
    root = tmp_path_factory.mktemp("npu")
    cache: dict[tuple, Path] = {}

    def get(model: Path, *extra: str) -> Path:
        key = (model, *extra)
        if key not in cache:
            out = root / f"b{len(cache)}"
            result = CliRunner().invoke(
                main, ["build", "-m", str(model), "-t", "snapdragon", "-o", str(out), *SMALL, *extra]
            )
            assert result.exit_code == 0, result.output
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("variant, extra", [("tiny35", ()), ("tiny3", ()), ("tiny4", ()), ("tiny_llama", NO_CHAT)])
def test_tiny_bundles_pass_their_smoke_test_on_the_x86_htp(request, npu_bundle, variant, extra):
    """Phi-3.5 (longrope), Phi-3-mini-4k, Phi-4-mini (partial rotary, grouped key/values, tied table)
    and SmolLM2 (Llama: separate projections): built, compiled, checked through onnxruntime-genai on
    the HTP."""
    bundle = npu_bundle(request.getfixturevalue(variant), *extra)
    manifest = json.loads((bundle / "manifest.json").read_text())
    host = manifest["verification"]["host"]
    assert host["provider"] == "qnn" and host["failed"] == 0
    assert host["top1_agreement"] >= host["min_top1_agreement"]
    model = bundle / "model"
    names = {p.name for p in model.iterdir()}
    parts = json.loads((model / "npu.json").read_text())["parts"]
    assert len(parts) == 2 and parts[-1]["head"]  # the layers, then the final norm and lm_head alone
    for p in range(len(parts)):  # one binary per part: its prompt and token graphs share the weights
        assert {f"part{p}_prompt_ctx.onnx", f"part{p}_token_ctx.onnx", f"part{p}_prompt_ctx_qnn.bin"} <= names
        assert f"part{p}_token_ctx_qnn.bin" not in names and f"part{p}_prompt.onnx" not in names  # no QDQ graph
    config = json.loads((model / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert config["model"]["type"] == "decoder-pipeline" and decoder["sliding_window"]["window_size"] == 16
    assert decoder["session_options"]["provider_options"] == [{"qnn": {"backend_type": "htp", "soc_model": "69"}}]
    assert [next(iter(s)) for s in decoder["pipeline"]][:2] == ["embeddings", "positions"]
    pending = manifest["verification"]["pending_on_device"]
    assert any("weight-shared context binaries" in p for p in pending) and any("8-elite" in p for p in pending)


def test_a_bundle_without_weight_sharing_checks_itself_here(npu_bundle, tiny35):
    bundle = npu_bundle(tiny35, "--set", "npu.weight_sharing=false")
    names = {p.name for p in (bundle / "model").iterdir()}
    assert {"part0_prompt_ctx_qnn.bin", "part0_token_ctx_qnn.bin"} <= names
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "PASS  agreement" in result.output


def test_a_weight_shared_bundle_is_not_loaded_on_x86(npu_bundle, tiny35):
    bundle = npu_bundle(tiny35)
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: '{bundle}' shares each part's weights between its prompt and token graphs in one context binary, "
        "which the Hexagon NPU loads and onnxruntime-qnn's x86-64 HTP backend does not ('Shared weights "
        "buffer isn't supported on this platform'). Check it on the Snapdragon device (python "
        "tests/smoke_test.py), or build with --set npu.weight_sharing=false to check it here.\n"
    )


def test_the_htp_and_onnxruntimes_cpu_run_the_same_qdq_graphs_alike(tiny4, tmp_path):
    """Each part's QDQ graph on onnxruntime's CPU provider and its context binary on the x86 HTP
    backend, fed the same prompt window: the decoder part's output within 3% (relative L2; measured
    0.5% on the tiny Phi-3.5 and 1.6% on a SmolLM2-shaped layer) and the same argmax at every position."""
    import onnx
    import onnxruntime as ort

    from toolkit.export.qnn import export_qnn
    from toolkit.export.qnn.compile import provider_options
    from toolkit.export.qnn.compiler import qnn_devices, session_options
    from toolkit.families import open_checkpoint
    from toolkit.plan.catalog import choose_recipe
    from toolkit.plan.config import resolve

    src = open_checkpoint(str(tiny4))
    recipe, target = choose_recipe(None, "snapdragon", src.architecture, src.rope_scaling, src.partial_rotary_factor)
    plan = resolve(recipe, target, ("optimize.context_cap=128", "npu.prompt_tokens=16", "npu.weight_sharing=false"))
    out = export_qnn(src, plan, tmp_path / "w", lambda _: None, "")
    qdq = tmp_path / "w" / "qdq"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    cpu_graph = lambda path: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # noqa: E731
    ids = np.arange(40, 56, dtype=np.int32)[None]
    stage = {
        "input_ids": ids,
        "past_sequence_length": np.array([[15]], np.int32),
        "total_sequence_length": np.array([128], np.int32),
    }
    positions = cpu_graph(out / "positions.onnx")
    values = dict(zip([o.name for o in positions.get_outputs()], positions.run(None, stage), strict=True))
    values["hidden_0"] = cpu_graph(out / "embeddings.onnx").run(None, {"input_ids": ids})[0]
    htp_options = session_options(qnn_devices(), provider_options(plan.npu), {"session.disable_cpu_ep_fallback": "1"})
    for part in ("part0", "part1"):
        cpu = cpu_graph(qdq / f"{part}_prompt.onnx")
        htp = ort.InferenceSession(str(out / f"{part}_prompt_ctx.onnx"), htp_options)
        zeros = {
            i.name: onnx.numpy_helper.to_array(i)
            for i in onnx.load(str(qdq / f"{part}_prompt.onnx"), load_external_data=False).graph.initializer
            if i.name.endswith("/q_zero")
        }
        feed = {
            i.name: values[i.name] if i.name in values else np.full(i.shape, zeros[f"{i.name}/q_zero"])
            for i in cpu.get_inputs()
        }
        name = cpu.get_outputs()[0].name
        a, b = cpu.run([name], feed)[0], htp.run([name], feed)[0]
        if name == "logits":
            assert (a.argmax(-1) == b.argmax(-1)).all()
        else:
            assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.03
        values[name] = a


def test_a_node_the_htp_does_not_take_fails_the_compile_naming_it(tmp_path):
    """CPU fallback is disabled: a graph with an op the QNN EP does not take (com.microsoft
    RotaryEmbedding) fails, naming the part and the op."""
    import onnx
    from onnx import TensorProto, helper

    from toolkit.errors import StageError
    from toolkit.export.qnn.compile import compile_part
    from toolkit.plan.config import NpuConfig

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], domain="com.microsoft")],
        "g",
        [
            helper.make_tensor_value_info("x", f, [1, 4, 32]),
            helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 4]),
        ],
        [helper.make_tensor_value_info("y", f, [1, 4, 32])],
        [helper.make_tensor("cos", f, [16, 16], [1.0] * 256), helper.make_tensor("sin", f, [16, 16], [0.0] * 256)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    (tmp_path / "q").mkdir()
    (tmp_path / "o").mkdir()
    onnx.save_model(model, str(tmp_path / "q" / "part0_prompt.onnx"))
    part = {"index": 0, "files": {"prompt": "part0_prompt.onnx"}}
    with pytest.raises(StageError) as e:
        compile_part(tmp_path / "q", tmp_path / "o", part, NpuConfig(), False, "part 1 of 1")
    assert str(e.value).startswith(
        "Stage 'export' failed: part 1 of 1 did not compile for the HTP: these nodes do not run on the HTP and CPU "
        "fallback is disabled: RotaryEmbedding node '' (QNN EP only supports standard ONNX RotaryEmbedding "
        "(opset 23+), not com.microsoft.RotaryEmbedding."
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "quantize.method=mixed",
            "w4a16 takes quantize.method gptq, symmetric true (the HTP's int4 has no zero point)",
        ),
        ("quantize.symmetric=false", "(this plan: gptq, symmetric false, lm_head int8)"),
        ("optimize.context_cap=8192", "optimize.context_cap 8192 beyond the original context 4096 (longrope"),
        ("npu.prompt_tokens=256", "npu.prompt_tokens 256 must be below the context cap 128"),
    ],
)
def test_what_the_npu_target_cannot_build_is_refused_before_anything_is_written(tiny35, tmp_path, setting, message):
    out = tmp_path / "b"
    args = ["build", "-m", str(tiny35), "-t", "snapdragon", "-o", str(out), *SMALL, "--set", setting]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith("Error: The snapdragon target cannot build ") and message in result.output


def test_vision_and_moe_are_refused_with_the_reason():
    from toolkit.errors import ConfigError
    from toolkit.families import FAMILIES

    for family, reason in (("phi3v", "its image encoder"), ("phimoe", "which experts a token takes")):
        arch = next(iter(FAMILIES[family].architectures))
        src = SimpleNamespace(
            architecture=arch,
            num_params=42e9,
            config={"vocab_size": 32064, "hidden_size": 4096, "num_local_experts": 16},
        )
        with pytest.raises(ConfigError) as e:
            FAMILIES[family].refuse_target(src, "snapdragon")
        assert "is not built for snapdragon" in str(e.value) and reason in str(e.value)


def test_doctor_lists_what_the_npu_target_needs(monkeypatch):
    result = CliRunner().invoke(main, ["doctor", "--target", "snapdragon"])
    assert result.exit_code == 0 and "ok    onnxruntime-qnn" in result.output
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime_qnn" else real(name, *a)
    )
    result = CliRunner().invoke(main, ["doctor", "--target", "snapdragon"])
    assert result.exit_code == 1
    assert (
        "FAIL  onnxruntime-qnn    not installed (compiles and checks NPU bundles): pip install onnxruntime-qnn==2.7.0"
        in result.output
    )


def test_lpbq_codes_are_gptqs_on_the_4bit_scale_grid():
    """LPBQ: every block's scale is an integer 1..15 times its channel's, and the HTP's signed codes
    with those scales are GPTQ's dequantized weights."""
    import torch

    from toolkit.quantize.gptq import gptq
    from toolkit.quantize.npu import lpbq_snap, quant_weight

    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((48, 128)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((256, 128)).astype(np.float32))
    packed = gptq(w, x.T @ x / 256, 32, True, snap=lpbq_snap)
    q = quant_weight(packed, lpbq=True)
    assert q.block_scales.min() >= 1 and q.block_scales.max() <= 15 and q.block == 32
    assert q.codes.min() >= -8 and q.codes.max() <= 7
    assert np.allclose(q.dequantize(), packed.dequantize(), rtol=1e-5, atol=1e-6)
    channel = quant_weight(gptq(w, x.T @ x / 256, 128, True), lpbq=False)
    assert channel.block_scales is None and channel.scale.shape == (48,)


def test_a_model_in_several_parts_with_its_lm_head_split_runs_as_one(tiny4, tmp_path, monkeypatch):
    """Parts closed at npu.part_mb (here in KB, so that the tiny model has several): each a context
    binary of its own, the cache flowing through all of them; an lm_head larger than a part in
    several parts whose logits the CPU puts side by side (logits.onnx, as Phi-4-mini's 614 MB int8
    head needs)."""
    from toolkit.export.qnn import decoder

    monkeypatch.setattr(decoder, "MB", 1 << 10)
    out = tmp_path / "b"
    args = ["build", "-m", str(tiny4), "-t", "snapdragon", "-o", str(out), *SMALL, "--set", "npu.part_mb=60"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    parts = json.loads((out / "model" / "npu.json").read_text())["parts"]
    layers = [p for p in parts if not p["head"]]
    heads = [p for p in parts if p["head"]]
    assert len(layers) == 2 and [p["layers"] for p in layers] == [[0], [1]]
    assert [p["outputs"][0] for p in heads] == ["logits_0", "logits_1"] and (out / "model" / "logits.onnx").is_file()
    host = json.loads((out / "manifest.json").read_text())["verification"]["host"]
    assert host["failed"] == 0 and host["top1_agreement"] >= host["min_top1_agreement"]


@pytest.fixture(scope="module")
def smollm2_slice(smollm2, tmp_path_factory) -> Path:
    """SmolLM2-135M's first 4 decoder layers, its final norm and its (tied) table: a real model's
    weights at a depth whose smoke test the x86 HTP backend runs in minutes (30 layers: ~16 s a token)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("models") / "smollm2-4-layers"
    out.mkdir(exist_ok=True)
    config = json.loads((smollm2 / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 4}))
    tensors = load_file(str(smollm2 / "model.safetensors"))
    keep = {k: v for k, v in tensors.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < 4}
    save_file(keep, str(out / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (smollm2 / name).is_file():
            (out / name).write_bytes((smollm2 / name).read_bytes())
    return out


@pytest.mark.slow
def test_smollm2_layers_pass_their_smoke_test_on_the_x86_htp(smollm2_slice, tmp_path):
    """The recipe as shipped (LPBQ blocks of 32, 8-bit KV cache, 128-token prompt processor) on real
    weights, with a 512-position cache: built, compiled with weight sharing, and checked with the
    per-graph binaries through onnxruntime-genai on the HTP."""
    out = tmp_path / "b"
    args = ["build", "-m", str(smollm2_slice), "-t", "snapdragon", "-o", str(out), "--set", "optimize.context_cap=512"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    host = json.loads((out / "manifest.json").read_text())["verification"]["host"]
    assert host["failed"] == 0 and host["top1_agreement"] >= host["min_top1_agreement"]
