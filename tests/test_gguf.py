"""The GGUF target: llama.cpp's block formats from slmkit's blocks, the tensors and keys llama.cpp's
converter writes for `phi3` and `llama`, the tokenizer and chat template inside, the Ollama
Modelfile against the chat template's own rendering, and whole builds that llama.cpp loads and the
bundle's smoke test verifies; what cannot be written as GGUF is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.bundle.modelfile import go_template, pieces, replay
from toolkit.cli import main
from toolkit.export.gguf import export_gguf
from toolkit.families import open_checkpoint
from toolkit.families.decoder.gguf import permuted_rows
from toolkit.plan import llama
from toolkit.plan.config import ExportConfig, QuantizeConfig
from toolkit.quantize import ggml
from toolkit.quantize.blocks import quantize
from toolkit.source.tensors import CheckpointTensors


@pytest.mark.parametrize("symmetric, kind", [(True, "Q4_0"), (False, "Q4_1")])
def test_slmkit_blocks_land_on_llama_cpps_q4_grid(symmetric, kind):
    """The same codes, the scale (and min) rounded to float16: llama.cpp's dequantizer gives the
    blocks' values within float16's rounding."""
    w = np.random.default_rng(0).standard_normal((16, 96)).astype(np.float32)
    p = quantize(w.T, 32, None, symmetric)
    data, got = ggml.q4(p)
    assert got == kind and data.shape == (16, ggml.row_bytes(96, kind))
    back = ggml.dequantize(data, kind)
    assert np.abs(back - p.dequantize().T).max() <= 2e-3 * np.abs(w).max()
    with pytest.raises(ValueError, match="GGUF Q4 blocks hold 32 weights"):
        ggml.q4(quantize(w.T, 64, None, symmetric))


def test_round_to_nearest_is_gguf_pys_own():
    w = np.random.default_rng(1).standard_normal((10, 64)).astype(np.float32)
    for kind in ("Q4_0", "Q4_1", "Q8_0", "F16"):
        expected = gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind]).view(np.uint8).reshape(10, -1)
        assert np.array_equal(ggml.reference(w, kind, chunk_rows=3), expected), kind


def test_q_and_k_rows_are_interleaved_as_llama_cpps_converter_permutes_them():
    heads, dim = 3, 8
    w = np.arange(heads * dim * 2, dtype=np.float32).reshape(heads * dim, 2)
    converter = w.reshape(heads, 2, dim // 2, 2).swapaxes(1, 2).reshape(w.shape)  # convert_hf_to_gguf's permute
    assert np.array_equal(w[permuted_rows(heads, dim)], converter)


def _export(model: Path, work: Path, **quantize_options) -> tuple[gguf.GGUFReader, dict]:
    src = open_checkpoint(str(model))
    options = {"method": "default", "block_size": 32, "symmetric": False, "lm_head": "int8", **quantize_options}
    out = export_gguf(
        src.path, src.weight_files, src.config, ExportConfig(precision="int4"), QuantizeConfig(**options), work
    )
    return gguf.GGUFReader(out / "model.gguf"), src.config


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_a_phi35_checkpoint_is_written_as_llama_cpps_phi3(tiny35, tmp_path):
    reader, config = _export(tiny35, tmp_path)
    assert _field(reader, "general.architecture") == "phi3"
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    assert _field(reader, "phi3.attention.head_count") == heads
    assert _field(reader, "phi3.rope.dimension_count") == hidden // heads
    assert _field(reader, "phi3.rope.scaling.original_context_length") == config["original_max_position_embeddings"]
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert (
        _field(reader, "tokenizer.chat_template")
        == json.loads((tiny35 / "tokenizer_config.json").read_text())["chat_template"]
    )
    tensors = {t.name: t for t in reader.tensors}
    long = np.asarray(tensors["rope_factors_long.weight"].data)
    assert np.allclose(long, config["rope_scaling"]["long_factor"])
    assert tensors["blk.0.attn_qkv.weight"].tensor_type.name == "Q4_1"
    assert "output.weight" in tensors or "token_embd.weight" in tensors
    weights = CheckpointTensors(tiny35, open_checkpoint(str(tiny35)).weight_files)
    qkv = weights.float32("model.layers.0.self_attn.qkv_proj.weight")
    back = ggml.dequantize(np.asarray(tensors["blk.0.attn_qkv.weight"].data), "Q4_1")
    assert back.shape == qkv.shape and np.abs(back - qkv).max() < 0.2 * np.abs(qkv).max()
    inter = config["intermediate_size"]
    assert tuple(reversed(tensors["blk.0.ffn_up.weight"].shape.tolist())) == (2 * inter, hidden)  # gate, then up


def test_partial_rotary_and_tied_tables_as_phi4_mini(tiny4, tmp_path):
    reader, config = _export(tiny4, tmp_path)
    head = config["hidden_size"] // config["num_attention_heads"]
    assert _field(reader, "phi3.rope.dimension_count") == int(head * config["partial_rotary_factor"])
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors and tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    assert len(tensors["rope_factors_short.weight"].data) == int(head * config["partial_rotary_factor"]) // 2


def test_a_llama_checkpoint_gets_separate_and_permuted_projections(tiny_llama, tmp_path):
    reader, config = _export(tiny_llama, tmp_path, symmetric=True)
    assert _field(reader, "general.architecture") == "llama"
    tensors = {t.name: t for t in reader.tensors}
    assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_gate.weight"} <= set(tensors)
    weights = CheckpointTensors(tiny_llama, open_checkpoint(str(tiny_llama)).weight_files)
    k = weights.float32("model.layers.0.self_attn.k_proj.weight")
    order = permuted_rows(config["num_key_value_heads"], config["head_dim"])
    expected = ggml.reference(k[order], "Q4_0")
    assert np.array_equal(np.asarray(tensors["blk.0.attn_k.weight"].data).reshape(expected.shape), expected)


def test_the_calibrated_gguf_carries_gptqs_codes(tiny35, tmp_path):
    """gptq on the GGUF target: the Q4_1 blocks are the calibration's, not llama.cpp's rounding,
    and they err less on the calibration's own measure than round-to-nearest does."""
    rtn, _ = _export(tiny35, tmp_path / "rtn")
    cal, _ = _export(tiny35, tmp_path / "gptq", method="gptq")
    a = {t.name: np.asarray(t.data) for t in rtn.tensors}
    b = {t.name: np.asarray(t.data) for t in cal.tensors}
    assert not np.array_equal(a["blk.1.ffn_down.weight"], b["blk.1.ffn_down.weight"])
    assert np.array_equal(a["blk.1.ffn_norm.weight"], b["blk.1.ffn_norm.weight"])


def test_the_modelfile_template_replays_the_chat_template(tiny35, smollm2_tokenizer):
    from transformers import AutoTokenizer

    conversations = [
        [("user", "What is 2+2?")],
        [("system", "Answer in one word."), ("user", "Capital of France?")],
        [("user", "hi"), ("assistant", "hello"), ("user", "how are you?")],
    ]
    for tokenizer in (AutoTokenizer.from_pretrained(tiny35), smollm2_tokenizer):
        p = pieces(tokenizer)
        assert p is not None
        template = go_template(p)
        for role in ("system", "user", "assistant"):
            assert p[f"{role}_prefix"] + "{{ .Content }}" + p[f"{role}_suffix"] in template
        for messages in conversations:
            turns = [{"role": r, "content": c} for r, c in messages]
            assert replay(p, messages) == tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """A ChatML template with a default system message, as SmolLM2's."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<|im_start|>")
    tok.chat_template = template
    return tok


def test_the_gguf_bundle_builds_verifies_and_runs_in_llama_cpp(tiny35, tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "gguf", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["recipe"] == "phi-3.5-mini/gguf" and manifest["verification"]["host"]["failed"] == 0
    assert manifest["runtime"]["package"] == "llama-cpp-python"
    modelfile = (out / "model" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|end|>"' in modelfile
    assert "PARAMETER num_ctx 4096" in modelfile and 'TEMPLATE """{{ range $i' in modelfile
    verified = CliRunner().invoke(main, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output


def test_eval_bench_and_pack_take_a_gguf_bundle(tiny35, tmp_path):
    """The bundle commands on a GGUF bundle: eval scores it through llama.cpp against the float32
    reference, bench times llama.cpp, pack and unpack keep every file and its hash."""
    out = tmp_path / "b"
    assert CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "gguf", "-o", str(out), "-q"]).exit_code == 0
    scored = CliRunner().invoke(main, ["eval", str(out), "-r", str(tiny35), "--max-tokens", "600", "--window", "128"])
    assert scored.exit_code == 0, scored.output
    quality = json.loads((out / "manifest.json").read_text())["quality"]["eval"]
    assert 0.8 <= quality["top1_agreement"] <= 1.0 and abs(quality["ppl_increase"]) < 0.25
    timed = CliRunner().invoke(
        main, ["bench", str(out), "--prompt-tokens", "16", "--new-tokens", "8", "--runs", "1", "--json"]
    )
    assert timed.exit_code == 0, timed.output
    result = json.loads(timed.output)
    assert result["decode_tok_s"] > 0 and result["weight_bytes"] == (out / "model" / "model.gguf").stat().st_size
    archive = tmp_path / "b.tar.gz"
    assert CliRunner().invoke(main, ["pack", str(out), "-o", str(archive)]).exit_code == 0
    unpacked = CliRunner().invoke(main, ["unpack", str(archive), "-o", str(tmp_path / "u")])
    assert unpacked.exit_code == 0, unpacked.output
    assert (tmp_path / "u" / "b" / "model" / "Modelfile").read_text() == (out / "model" / "Modelfile").read_text()


@pytest.mark.parametrize(
    "variant, extra",
    [
        ("tiny3", ()),
        ("tiny4", ()),
        ("tiny_llama", ("--set", "optimize.context_cap=2048", "--set", "verify.chat_prompts=[]")),
    ],
)
def test_every_decoder_shape_runs_in_llama_cpp_as_the_reference(request, variant, extra, tmp_path):
    """Phi-3-4k (no rope scaling, a sliding window), Phi-4-mini (partial rotary, tied table) and
    Llama (q and k rows permuted): the bundle's smoke test in llama.cpp passes (tokenizer, top-1
    against the float32 reference, greedy tokens). The tiny Llama's tokenizer is saved with
    legacy=false: transformers then puts no U+2581 after a special token, llama.cpp always does, so
    its chat prompt would fail the tokenizer check (docs/gguf.md); its plain prompts are checked."""
    out = tmp_path / "b"
    result = CliRunner().invoke(
        main, ["build", "-m", str(request.getfixturevalue(variant)), "-t", "gguf", "-o", str(out), "-q", *extra]
    )
    assert result.exit_code == 0, result.output
    host = json.loads((out / "manifest.json").read_text())["verification"]["host"]
    assert host["failed"] == 0 and host["top1_agreement"] >= host["min_top1_agreement"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "quantize.method=k_quant"], "quantize.method 'k_quant' (it writes default, mse, gptq, awq, mixed)"),
        (["--set", "quantize.lm_head=int8"], "quantize.lm_head 'int8' with mixed (whose measured types include the"),
        (
            ["--set", "quantize.method=gptq", "--set", "quantize.block_size=64"],
            "quantize.block_size 64 (llama.cpp's Q4_0/Q4_1 blocks hold 32 weights)",
        ),
    ],
)
def test_what_gguf_cannot_hold_is_refused_before_anything_is_written(tiny35, tmp_path, extra, message):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "gguf", "-o", str(out), *extra])
    assert result.exit_code != 0 and "The GGUF target cannot build " + message in result.output
    assert not out.exists()


def test_a_machine_without_llama_cpp_is_told_how_to_get_it(tiny35, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "gguf", "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert result.output == (
        "Error: The GGUF target verifies its bundle with llama.cpp, and llama-cpp-python is not installed: "
        f"{llama.INSTALL} (it compiles llama.cpp for any AVX2 CPU, a few minutes)\n"
    )


def test_the_ci_workflow_smoke_tests_a_gguf_bundle_with_llama_cpp(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["ci", "init", "--model", "x/y", "--targets", "cpu,gguf", "--install", "pip install slmkit"]
    )
    assert result.exit_code == 0, result.output
    workflow = yaml.safe_load((tmp_path / ".github/workflows/slmkit.yml").read_text())
    include = {i["target"]: i for i in workflow["jobs"]["smoke"]["strategy"]["matrix"]["include"]}
    assert (include["gguf"]["runtime"], include["gguf"]["more"], include["gguf"]["smoke_provider"]) == (
        "llama-cpp-python",
        "gguf",
        "bundle",
    )
    assert (include["cpu"]["runtime"], include["cpu"]["more"]) == ("onnxruntime-genai", "")
