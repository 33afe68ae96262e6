"""Fine-tuned models: a PEFT LoRA adapter (made here by hand: adapter_config.json and the A/B tensors)
merged into the weights before anything reads them, so that the export, the calibration and the
float32 reference (the golden tokens) all see the adapted model; runtime adapters kept as
.onnx_adapter files over one quantized base, switched in one loaded model; and the adapters slmkit
refuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_emulator
from safetensors.numpy import load_file, save_file

from toolkit.cli import main
from toolkit.tiny.lora import make_lora_adapter

PHI3 = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
LLAMA = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
LLAMA_SETS = ("--set", "optimize.context_cap=2048", "--set", "verify.chat_prompts=[]")


def build(model: Path, adapter: Path | None, out: Path, *extra: str):
    args = ["build", "-m", str(model), "-t", "cpu", "-o", str(out), *extra]
    return CliRunner().invoke(main, args + (["--adapter", str(adapter)] if adapter else []))


@pytest.mark.parametrize(
    "variant, modules, extra",
    [
        ("tiny35", PHI3, ()),
        ("tiny4", PHI3, ()),
        ("tiny_llama", LLAMA, LLAMA_SETS),
    ],
)
def test_a_merged_adapter_is_what_the_bundle_runs(request, tmp_path, variant, modules, extra):
    """The bundle passes its smoke test against the float32 reference of the adapted model, whose
    greedy tokens are not the base model's; the manifest names the adapter, its hashes and its base."""
    model = request.getfixturevalue(variant)
    adapter = make_lora_adapter(model, tmp_path / "lora", modules)
    result = build(model, adapter, tmp_path / "adapted", *extra)
    assert result.exit_code == 0, result.output
    assert "merging the LoRA adapter lora (rank 4," in result.output
    manifest = json.loads((tmp_path / "adapted" / "manifest.json").read_text())
    host = manifest["verification"]["host"]
    assert host["failed"] == 0 and host["top1_agreement"] >= host["min_top1_agreement"]
    (entry,) = manifest["adapters"]
    assert entry["base_model"] == str(model) and entry["rank"] == 4
    assert set(entry["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    if variant == "tiny35":  # the base model's cpu bundle, built once for the session
        base = request.getfixturevalue("bundles")("cpu")
        golden = [json.loads((b / "tests" / "golden.json").read_text())["cases"] for b in (tmp_path / "adapted", base)]
        assert [c["expected_ids"] for c in golden[0]] != [c["expected_ids"] for c in golden[1]]


def test_the_merge_is_w_plus_scaled_b_a(tiny35, tmp_path):
    from toolkit.families import open_checkpoint
    from toolkit.source.adapter import merged, read_adapter
    from toolkit.source.tensors import CheckpointTensors

    adapter_dir = make_lora_adapter(tiny35, tmp_path / "lora", PHI3, rank=4, alpha=16.0, use_rslora=True)
    src = open_checkpoint(str(tiny35))
    adapter = read_adapter(adapter_dir)
    out = merged(src, adapter, tmp_path / "merged")
    base, got = CheckpointTensors(src.path, src.weight_files), CheckpointTensors(out.path, out.weight_files)
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = "model.layers.1.mlp.down_proj"
    b, a = lora[f"base_model.model.{key}.lora_B.weight"], lora[f"base_model.model.{key}.lora_A.weight"]
    assert np.allclose(
        got.float32(f"{key}.weight"), base.float32(f"{key}.weight") + 16.0 / np.sqrt(4) * (b @ a), atol=1e-6
    )
    assert np.array_equal(got.float32("model.embed_tokens.weight"), base.float32("model.embed_tokens.weight"))
    assert set(got.entries) == set(base.entries)


@pytest.mark.parametrize(
    "modules, config, message",
    [
        (("self_attn.q_proj",), {}, "targets modules that Phi3ForCausalLM does not have: q_proj"),
        (PHI3[:1], {"use_dora": True}, "cannot be merged: use_dora (DoRA rescales each column"),
        (PHI3[:1], {"modules_to_save": ["lm_head"]}, "cannot be merged: modules_to_save ['lm_head']"),
        (PHI3[:1], {"peft_type": "IA3"}, "cannot be merged: peft_type 'IA3' (slmkit merges LoRA adapters)"),
    ],
)
def test_an_adapter_that_does_not_fit_is_refused_before_anything_is_written(tiny35, tmp_path, modules, config, message):
    if modules == ("self_attn.q_proj",):  # trained on a layout with separate q/k/v: Phi-3 fuses them
        adapter = tmp_path / "lora"
        adapter.mkdir()
        lora = {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 64), np.float32),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 4), np.float32),
        }
        save_file(lora, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    else:
        adapter = make_lora_adapter(tiny35, tmp_path / "lora", modules, **config)
    out = tmp_path / "b"
    result = build(tiny35, adapter, out)
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith("Error: --adapter ") and message in result.output


def test_a_pickled_adapter_and_a_wrong_shape_are_refused(tiny35, tiny4, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"not opened")
    result = build(tiny35, pickled, tmp_path / "b")
    assert result.exit_code == 1
    assert "it has pickle weights (adapter_model.bin), which slmkit does not unpickle" in result.output
    other = make_lora_adapter(tiny4, tmp_path / "phi4-lora", PHI3[:1])  # Phi-4-mini's qkv is another size
    result = build(tiny35, other, tmp_path / "c")
    assert result.exit_code == 1 and "the adapter belongs to another base model" in result.output


@pytest.mark.parametrize("target", ["android", "gguf"])
def test_the_merged_adapter_reaches_the_phone_and_llama_cpp_bundles(tiny35, tmp_path, target):
    adapter = make_lora_adapter(tiny35, tmp_path / "lora", PHI3)
    out = tmp_path / target
    args = ["build", "-m", str(tiny35), "-t", target, "-o", str(out), "--adapter", str(adapter)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["host"]["failed"] == 0 and manifest["adapters"][0]["rank"] == 4


def runtime_build(model: Path, out: Path, adapters: dict[str, Path], *extra: str, target: str = "cpu"):
    args = ["build", "-m", str(model), "-t", target, "-o", str(out), "--set", "adapters.mode=runtime", *extra]
    for name, folder in adapters.items():
        args += ["--adapter", f"{name}={folder}"]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "variant, target, first, second, extra",
    [
        ("tiny35", "cpu", PHI3, ("self_attn.qkv_proj", "mlp.down_proj"), ()),
        # q and v but not k: the graph's one qkv MatMul gets zero columns for k
        ("tiny_llama", "cpu", LLAMA, ("self_attn.q_proj", "self_attn.v_proj"), LLAMA_SETS),
        # llama.cpp's fused attn_qkv and ffn_up (gate then up rows) ...
        ("tiny35", "gguf", PHI3, ("self_attn.qkv_proj", "mlp.gate_up_proj"), ()),
        # ... and its llama q (and k, in LLAMA) rows interleaved per head
        ("tiny_llama", "gguf", LLAMA, ("self_attn.q_proj", "self_attn.v_proj"), LLAMA_SETS),
        # the phone's bundle: the same graph, checked here with the Python runner (the Kotlin one: JVM tests)
        ("tiny35", "android", PHI3, ("self_attn.qkv_proj", "mlp.down_proj"), ()),
    ],
)
def test_runtime_adapters_switch_over_one_base(request, tmp_path, variant, target, first, second, extra):
    """Two adapters of other modules and ranks become two adapter files over one quantized base
    (.onnx_adapter for the ONNX graph's LoRA inputs, llama.cpp LoRA GGUF); the smoke test runs the
    base's cases with no adapter and each adapter's cases against the reference with that adapter
    merged, in one loaded model. The runner answers with each adapter by name."""
    model = request.getfixturevalue(variant)
    adapters = {
        "one": make_lora_adapter(model, tmp_path / "one", first),
        "two": make_lora_adapter(model, tmp_path / "two", second, rank=8),
    }
    out = tmp_path / "runtime"
    result = runtime_build(model, out, adapters, *extra, target=target)
    assert result.exit_code == 0, result.output
    assert "2 runtime LoRA adapter(s)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    host = manifest["verification"]["host"]
    assert host["failed"] == 0 and host["top1_agreement"] >= host["min_top1_agreement"]
    entries = {e["name"]: e for e in manifest["adapters"]}
    assert set(entries) == {"one", "two"} and entries["two"]["rank"] == 8
    assert "python runner/run.py --adapter one" in (out / "README.md").read_text()
    suffix = ".gguf" if target == "gguf" else ".onnx_adapter"
    for name, entry in entries.items():
        assert entry["mode"] == "runtime" and entry["file"] == f"model/adapters/{name}{suffix}"
        assert entry["file"] in manifest["files"]
    golden = json.loads((out / "tests" / "golden.json").read_text())
    expected = [
        [c["expected_ids"] for c in cases]
        for cases in (golden["cases"], golden["adapters"]["one"]["cases"], golden["adapters"]["two"]["cases"])
    ]
    assert expected[0] != expected[1] and expected[0] != expected[2] and expected[1] != expected[2]
    checked = [c.get("adapter") for c in host["cases"]]
    assert checked == [None] * len(expected[0]) + ["one"] * len(expected[1]) + ["two"] * len(expected[2])
    if (variant, target) == ("tiny35", "gguf"):  # llama.cpp's runner switches in one loaded model
        sys.path.insert(0, str(out / "runner"))
        try:
            import run as gguf_run
        finally:
            sys.path.pop(0)
            sys.modules.pop("run", None)
        llm = gguf_run.load_model(out / "model")
        handles = gguf_run.load_adapters(llm, out / "model")
        for name, cases in (("two", golden["adapters"]["two"]["cases"]), (None, golden["cases"])):
            gguf_run.use_adapter(llm, handles, name)
            got = gguf_run.generate(llm, cases[0]["prompt_ids"], [], max_new_tokens=len(cases[0]["bundle_ids"]))
            assert got == cases[0]["bundle_ids"]
        with pytest.raises(SystemExit, match="this bundle's adapters are one, two"):
            gguf_run.use_adapter(llm, handles, "three")
    if (variant, target) == ("tiny35", "cpu"):  # no adapter active: the base model's tokens, as its bundle gives them
        base = request.getfixturevalue("bundles")("cpu")
        plain = json.loads((base / "tests" / "golden.json").read_text())["cases"]
        assert [c["bundle_ids"] for c in golden["cases"]] == [c["bundle_ids"] for c in plain]
        import onnxruntime_genai as og

        sys.path.insert(0, str(out / "runner"))
        try:
            import run
        finally:
            sys.path.pop(0)
            sys.modules.pop("run", None)
        model_dir = out / "model"
        loaded = og.Model(str(model_dir))
        tokenizer = og.Tokenizer(loaded)
        handle, names = run.load_adapters(loaded, model_dir)
        assert names == ["one", "two"]
        case = golden["adapters"]["two"]["cases"][0]
        cap = run.genai_config(model_dir)["search"]["max_length"]
        got = run.generate(
            loaded,
            tokenizer,
            case["prompt_ids"],
            cap,
            [],
            max_new_tokens=len(case["bundle_ids"]),
            adapter=run.pick_adapter(handle, names, "two"),
        )
        assert got == case["bundle_ids"]
        with pytest.raises(SystemExit, match="this bundle's adapters are one, two"):
            run.pick_adapter(handle, names, "three")


@needs_emulator
def test_runtime_adapters_switch_on_emulated_phone_cpus(tiny35, tmp_path):
    """The android bundle's adapters on aarch64 onnxruntime-genai under qemu (KleidiAI's int4 base,
    the LoRA branches' float MatMuls): the base's and each adapter's cases in one loaded model."""
    adapters = {
        "one": make_lora_adapter(tiny35, tmp_path / "one", PHI3),
        "two": make_lora_adapter(tiny35, tmp_path / "two", ("self_attn.qkv_proj", "mlp.down_proj"), rank=8),
    }
    out = tmp_path / "runtime"
    assert runtime_build(tiny35, out, adapters, target="android").exit_code == 0
    result = CliRunner().invoke(main, ["verify", str(out), "--emulate", "arm64"])
    assert result.exit_code == 0, result.output
    for name in adapters:
        assert f"PASS  adapter {name}: model/adapters/{name}.onnx_adapter loaded" in result.output
    runs = json.loads((out / "manifest.json").read_text())["verification"]["emulated"]["arm64"]
    assert [r["cpu"] for r in runs] == ["cortex-a55", "cortex-a76"]
    assert all(r["failed"] == 0 and r["top1_agreement"] >= r["min_top1_agreement"] for r in runs)


@pytest.mark.parametrize(
    "how, message",
    [
        ("ios", "(target gguf); onnxruntime-genai's Objective-C API (ort_genai_objc.h) has no adapter calls. Merge"),
        ("twice", "the name 'x' is given twice"),
        ("merged-two", "2 adapters given: the merged mode folds one adapter into the weights"),
        ("none", "adapters.mode=runtime needs at least one --adapter NAME=FOLDER."),
    ],
)
def test_runtime_adapters_that_cannot_be_built_are_refused(tiny35, tmp_path, how, message):
    adapter = make_lora_adapter(tiny35, tmp_path / "lora", PHI3[:1])
    out = tmp_path / "b"
    if how == "ios":
        result = runtime_build(tiny35, out, {"x": adapter}, target="ios")
    elif how == "twice":
        args = ["build", "-m", str(tiny35), "-t", "cpu", "-o", str(out), "--set", "adapters.mode=runtime"]
        result = CliRunner().invoke(main, args + ["--adapter", f"x={adapter}", "--adapter", f"x={adapter}"])
    elif how == "merged-two":
        args = [
            "build",
            "-m",
            str(tiny35),
            "-t",
            "cpu",
            "-o",
            str(out),
            "--adapter",
            f"a={adapter}",
            "--adapter",
            f"b={adapter}",
        ]
        result = CliRunner().invoke(main, args)
    else:
        result = runtime_build(tiny35, out, {})
    assert result.exit_code == 1 and not out.exists()
    assert message in result.output
