"""The streamed export engine against the onnxruntime-genai builder: same graph, same bytes, same
tokens; refusals before anything is written; memory that does not grow with the layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from peak_memory import LAYER_BYTES, peak_growth

from toolkit.build import build, plan_build
from toolkit.cli import main
from toolkit.errors import ConfigError, InputModelError
from toolkit.export.builder import run_builder
from toolkit.export.stream import PROVIDER_OPTIONS, export_stream
from toolkit.families import open_checkpoint
from toolkit.plan.config import ExportConfig, QuantizeConfig
from toolkit.quantize.choices import builder_options


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from toolkit.tiny.phi3 import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def both_engines(model: Path, tmp: Path, precision: str, q: QuantizeConfig, ep: str = "cpu") -> tuple[Path, Path]:
    src = open_checkpoint(str(model))
    (tmp / "b").mkdir()
    (tmp / "s").mkdir()
    export = ExportConfig(precision=precision, execution_provider=ep)
    built = run_builder(src.path, export, builder_options(q, precision) | PROVIDER_OPTIONS.get(ep, {}), tmp / "b")
    streamed = export_stream(src.path, src.weight_files, src.config, export, q, tmp / "s")
    return built, streamed


def initializers(folder: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(folder / "model.onnx"))  # external data loaded
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def nodes(folder: Path) -> dict[str, str]:
    """Every node, printed with its attributes; an If node's branches as their constant values."""
    model = onnx.load(str(folder / "model.onnx"))
    out = {}
    for node in model.graph.node:
        if node.op_type == "If":
            for attr in node.attribute:
                for inner in attr.g.node:
                    value = numpy_helper.to_array(inner.attribute[0].t)
                    out[f"{attr.name}:{inner.name}"] = f"{list(inner.output)} {value.shape} {value.tobytes().hex()}"
        else:
            out[node.name] = onnx.helper.printable_node(node)
    return out


def logits(folder: Path, ids: list[int], graph: str = "model.onnx") -> np.ndarray:
    """Logits of one prefill on the CPU provider (GPU graphs too: the same ops in float16)."""
    import onnxruntime as ort

    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
    float16 = session.get_outputs()[0].type == "tensor(float16)"
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    if "position_ids" in [i.name for i in session.get_inputs()]:  # DirectML's graph
        feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    empty = np.zeros(
        (1, config["num_key_value_heads"], 0, config["head_size"]), dtype=np.float16 if float16 else np.float32
    )
    for i in range(config["num_hidden_layers"]):
        feeds[f"past_key_values.{i}.key"] = feeds[f"past_key_values.{i}.value"] = empty
    return session.run(["logits"], feeds)[0]


GRAPHS = [
    ("cpu", "int4"),
    ("cpu", "fp32"),
    ("cuda", "int4"),
    ("cuda", "fp16"),
    ("dml", "int4"),
    ("dml", "fp16"),
    ("webgpu", "int4"),  # the builder's WebGPU graph with float32 I/O (use_webgpu_fp32), as the web target asks
]


@pytest.mark.parametrize(
    "variant, ep, precision",
    # a partial rotary on the web takes the DirectML attention layout on purpose (next test)
    [
        (v, ep, p)
        for v in ("tiny35", "tiny3", "tiny_llama", "tiny4")
        for ep, p in GRAPHS
        if (v, ep) != ("tiny4", "webgpu")
    ],
)
def test_stream_writes_the_builders_model(request, tmp_path, variant, ep, precision):
    built, streamed = both_engines(request.getfixturevalue(variant), tmp_path, precision, QuantizeConfig(), ep)
    expected, got = initializers(built), initializers(streamed)
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), f"{name} differs"
    assert nodes(streamed) == nodes(built)
    for name in ("genai_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (streamed / name).read_bytes() == (built / name).read_bytes(), name
    ids = [1, 50, 60, 70, 80, 90, 100, 5, 7, 300, 310]
    assert np.array_equal(logits(streamed, ids), logits(built, ids))


def test_a_partial_rotary_web_graph_is_the_builders_model_in_the_directml_layout(tiny4, tmp_path):
    """Phi-4-mini on the web: q, k and v apart, RotaryEmbedding nodes with the rotated width, a
    position_ids input (onnxruntime-web's WebGPU GroupQueryAttention cut the heads at the cos cache's
    width); the same codes as the builder's graph, and its logits within float32 rounding."""
    built, streamed = both_engines(tiny4, tmp_path, "int4", QuantizeConfig(), "webgpu")
    ops = [n.op_type for n in onnx.load(str(streamed / "model.onnx"), load_external_data=False).graph.node]
    assert (
        "RotaryEmbedding" in ops
        and "position_ids" in json.loads((streamed / "genai_config.json").read_text())["model"]["decoder"]["inputs"]
    )
    ids = [1, 50, 60, 70, 80, 90, 100, 5, 7, 300, 310]
    want, got = logits(built, ids), logits(streamed, ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize(
    "ep, precision, q",
    [
        ("cpu", "int8", QuantizeConfig()),
        ("cpu", "int4", QuantizeConfig(symmetric=False)),
        ("cpu", "int4", QuantizeConfig(lm_head="int8")),
        ("cpu", "int4", QuantizeConfig(block_size=64, accuracy_level=0)),
        ("cuda", "int8", QuantizeConfig()),
        ("cuda", "int4", QuantizeConfig(symmetric=False, block_size=128)),
        ("dml", "int4", QuantizeConfig(symmetric=False, block_size=64, lm_head="int8")),
    ],
    ids=["int8", "asymmetric", "lm_head-int8", "block64-acc0", "cuda-int8", "cuda-asym-block128", "dml-asym-block64"],
)
def test_stream_quantizes_like_the_builder(tiny35, tmp_path, ep, precision, q):
    built, streamed = both_engines(tiny35, tmp_path, precision, q, ep)
    expected, got = initializers(built), initializers(streamed)
    assert sorted(got) == sorted(expected)
    assert all(got[n].tobytes() == a.tobytes() for n, a in expected.items())
    assert nodes(streamed) == nodes(built)


def test_stream_bundle_gives_the_builders_tokens(tiny35, tmp_path):
    src = open_checkpoint(str(tiny35))
    rtn = ("quantize.method=default", "quantize.symmetric=true", "quantize.block_size=32")  # the builder's int4
    streamed, out = tmp_path / "streamed-bundle", tmp_path / "builder-bundle"
    build(src, plan_build(src, None, "cpu", rtn), streamed, log=lambda _: None)
    assert json.loads((streamed / "manifest.json").read_text())["plan"]["export"]["engine"] == "stream"
    build(src, plan_build(src, None, "cpu", (*rtn, "export.engine=ort-genai")), out, log=lambda _: None)
    golden = [json.loads((b / "tests" / "golden.json").read_text()) for b in (streamed, out)]
    assert [c["bundle_ids"] for c in golden[0]["cases"]] == [c["bundle_ids"] for c in golden[1]["cases"]]
    assert (streamed / "model" / "genai_config.json").read_bytes() == (out / "model" / "genai_config.json").read_bytes()


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            ("--target", "linux-cuda", "--set", "export.engine=stream", "--set", "export.precision=fp32"),
            "precision 'fp32' for cuda (it writes int4, int8, fp16)",
        ),
        (
            ("--target", "cpu", "--set", "quantize.method=k_quant"),
            "quantize.method 'k_quant' (it quantizes with default",
        ),
    ],
)
def test_stream_refuses_what_it_does_not_write(tiny35, tmp_path, setting, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--model", str(tiny35), *setting, "-o", str(out)])
    assert result.exit_code != 0
    assert message in result.output
    assert "Add --set export.engine=ort-genai to use the onnxruntime-genai builder." in result.output
    assert not out.exists()


def test_stream_refuses_rope_scaling_it_does_not_write(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    (model_copy / "config.json").write_text(json.dumps(config))
    src = open_checkpoint(str(model_copy))
    with pytest.raises(ConfigError, match="rope scaling 'llama3' \\(it writes longrope or none\\)"):
        plan_build(src, None, "cpu", ("export.engine=stream",))


def refuses_checkpoint(model: Path, out: Path, change, message: str) -> None:
    """`change` edits the checkpoint's tensors; the build must refuse with `message`, writing nothing."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    change(weights)
    save_file(weights, str(model / "model.safetensors"))
    src = open_checkpoint(str(model))
    with pytest.raises(InputModelError, match=message):
        build(src, plan_build(src, None, "cpu", ()), out, log=lambda _: None)
    assert not out.exists()


def test_stream_refuses_tensors_it_would_drop(model_copy, tmp_path):
    refuses_checkpoint(
        model_copy,
        tmp_path / "out",
        lambda w: w.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, dtype=np.float32)}),
        "tensors the graphs do not use \\(model.layers.0.self_attn.o_proj.bias\\)",
    )


PEAK = """
import resource, sys
from pathlib import Path
from toolkit.plan.config import ExportConfig, QuantizeConfig
from toolkit.families import open_checkpoint
from toolkit.export.stream import PROVIDER_OPTIONS, export_stream
src = open_checkpoint(sys.argv[1])
export_stream(src.path, src.weight_files, src.config, ExportConfig(precision="int4"), QuantizeConfig(),
              Path(sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_stream_memory_does_not_grow_with_layers(tmp_path):
    growth, peaks = peak_growth(PEAK, tmp_path)
    assert growth < LAYER_BYTES, peaks  # eight more layers (134 MB of float32) move the peak by less than one


def test_stream_refuses_tied_int8_embeddings(tiny_llama):
    src = open_checkpoint(str(tiny_llama))
    cap = "optimize.context_cap=2048"
    with pytest.raises(ConfigError, match="tied embeddings with int8 or asymmetric weights"):
        plan_build(src, None, "cpu", ("export.precision=int8", "quantize.method=default", cap))
    # SmolLM2's recipe (mse on a float32 export) streams.
    assert plan_build(src, None, "cpu", (cap,)).export.engine == "stream"


def test_stream_refuses_tensor_types_it_does_not_read(model_copy, tmp_path):
    refuses_checkpoint(
        model_copy,
        tmp_path / "out",
        lambda w: w.update({"model.norm.weight": w["model.norm.weight"].view(np.int16).astype(np.int8)}),
        "tensor 'model.norm.weight' is I8; the streamed export reads BF16, F16, F32",
    )
