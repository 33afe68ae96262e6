"""End-to-end builds from the tiny checkpoints, for every target, and what a build must never do."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from toolkit.build import build, plan_build
from toolkit.cli import main
from toolkit.errors import OutputError, StageError
from toolkit.families import open_checkpoint
from toolkit.formats import onnx as onnx_format
from toolkit.quantize import choices
from toolkit.verify import golden

TARGETS = ["cpu", "android", "ios", "windows-dml", "linux-cuda"]


def _nbits(bundle: Path) -> list[dict]:
    graph = onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False).graph
    return [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} | {"name": n.name}
        for n in graph.node
        if n.op_type == "MatMulNBits"
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_builds_a_verified_bundle(bundles, target):
    bundle = bundles(target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    host = manifest["verification"]["host"]
    assert host["failed"] == 0 and host["passed"] >= 8
    assert host["top1_agreement"] >= manifest["plan"]["verify"]["min_top1_agreement"]
    for rel, entry in manifest["files"].items():
        assert (bundle / rel).stat().st_size == entry["size"], rel
    genai = json.loads((bundle / "model" / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == manifest["plan"]["optimize"]["context_cap"]
    assert set(genai["model"]["eos_token_id"]) >= {600, 601, 607}
    assert manifest["plan"]["quantize"]["method"] == "mixed"  # slmkit's calibrated int4: some int8 in its bytes
    assert 4 in {n["bits"] for n in _nbits(bundle)} <= {4, 8}
    assert {n["block_size"] for n in _nbits(bundle)} == {manifest["plan"]["quantize"]["block_size"]}
    assert (bundle / "runner" / "run.py").is_file() and (bundle / "tests" / "smoke_test.py").is_file()
    golden = json.loads((bundle / "tests" / "golden.json").read_text())
    assert [c["chat"] for c in golden["cases"]].count(True) == 1  # the chat prompt went through the template
    assert manifest["source"]["rope_scaling"] == "longrope"
    assert "path" not in manifest["source"]  # no machine-specific paths in the manifest
    # the long rope caches go where the context cap (4096, the original context) never reads them
    graph = onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "If" for n in graph.node) == (target == "linux-cuda")  # 16384: past the short pair
    threads = genai["model"]["decoder"]["session_options"].get("intra_op_num_threads")
    assert threads == (0 if target == "cpu" else None)  # phones keep onnxruntime-genai's default


def test_mobile_and_gpu_specifics(bundles):
    android, ios, cuda, dml = (bundles(t) for t in ("android", "ios", "linux-cuda", "windows-dml"))
    for bundle, runner in ((android, "android"), (ios, "ios")):
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["plan"]["optimize"]["context_cap"] == 4096  # not the checkpoint's 131072
        assert (bundle / "runner" / runner / "README.md").is_file()
        assert (
            f"the {runner} runner and its instrumented smoke test on a device"
            in manifest["verification"]["pending_on_device"]
        )
    for bundle, key in ((cuda, "cuda"), (dml, "dml")):
        genai = json.loads((bundle / "model" / "genai_config.json").read_text())
        assert [
            name for entry in genai["model"]["decoder"]["session_options"]["provider_options"] for name in entry
        ] == [key]
        # CUDA: the decode step captured once and replayed (the host's smoke test ran the same config
        # on the CPU provider); the GPU run stays pending
        graph = genai["model"]["decoder"]["session_options"]["provider_options"][0][key].get("enable_cuda_graph")
        assert graph == ("1" if key == "cuda" else None)
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["verification"]["host"]["provider"] == "cpu"  # the same graph, run on the CPU here
        assert manifest["verification"]["pending_on_device"] == [onnx_format.DEVICE_ONLY[key]]
    dml_inputs = {i.name for i in onnx.load(str(dml / "model" / "model.onnx"), load_external_data=False).graph.input}
    assert "position_ids" in dml_inputs


def test_phi3_4k_builds_without_rope_scaling(tmp_path, tiny3):
    src = open_checkpoint(str(tiny3))
    plan = plan_build(src, None, "cpu", ())
    assert plan.recipe == "phi-3-mini-4k/cpu"
    manifest = build(src, plan, tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0
    assert manifest["source"]["rope_scaling"] == "none"


def test_two_builds_of_the_same_inputs_are_identical(tmp_path, bundles, tiny35):
    src = open_checkpoint(str(tiny35))
    again = tmp_path / "again"
    build(src, plan_build(src, None, "android", ()), again, log=lambda _: None)
    first = json.loads((bundles("android") / "manifest.json").read_text())["files"]
    second = json.loads((again / "manifest.json").read_text())["files"]
    assert first == second
    assert (bundles("android") / "manifest.json").read_bytes() == (again / "manifest.json").read_bytes()


def test_set_override_reaches_the_graph(tmp_path, tiny35):
    src = open_checkpoint(str(tiny35))
    overrides = (
        "quantize.method=default",
        "quantize.symmetric=true",
        "quantize.block_size=64",
        "optimize.context_cap=2048",
        "quantize.lm_head=int8",
    )  # the builder's round-to-nearest
    plan = plan_build(src, None, "cpu", overrides)
    build(src, plan, tmp_path / "b", log=lambda _: None)
    nodes = _nbits(tmp_path / "b")
    assert {n["block_size"] for n in nodes} == {64}
    assert {n["bits"] for n in nodes if "lm_head" in n["name"]} == {8}
    assert {n["bits"] for n in nodes if "lm_head" not in n["name"]} == {4}
    assert json.loads((tmp_path / "b/model/genai_config.json").read_text())["search"]["max_length"] == 2048


def test_a_setting_the_builder_ignores_fails_the_build_naming_it(tmp_path, tiny35, monkeypatch):
    """The 0.18 builder silently ignores unknown option names (int4_block_size...): the read-back
    must catch a setting that did not take, and no bundle may appear."""
    real = choices.builder_options

    def old_names(cfg, precision):
        options = real(cfg, precision)
        options["int4_block_size"] = options.pop("block_size")
        return options

    monkeypatch.setattr(choices, "builder_options", old_names)
    src = open_checkpoint(str(tiny35))
    out = tmp_path / "b"
    with pytest.raises(StageError) as e:
        build(
            src,
            plan_build(
                src, None, "cpu", ("quantize.method=default", "quantize.block_size=64", "export.engine=ort-genai")
            ),
            out,
            log=lambda _: None,
        )
    assert "Stage 'optimize' failed: the built model does not match the plan:" in str(e.value)
    assert "block_size = 32, requested 64" in str(e.value)
    assert not out.exists()
    assert e.value.work_dir is not None and tmp_path in e.value.work_dir.parents  # kept for inspection
    assert f"The work folder is kept for inspection: {e.value.work_dir}" in str(e.value)


def test_existing_output_needs_force_and_force_only_replaces_a_bundle(tmp_path, tiny35):
    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "cpu", ())
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError) as e:
        build(src, plan, out, log=lambda _: None)
    assert str(e.value) == f"Output folder '{out}' already exists. Pass --force to replace it, or choose another -o."
    with pytest.raises(OutputError) as e:
        build(src, plan, out, force=True, log=lambda _: None)
    assert str(e.value) == (
        f"Refusing to replace '{out}' with --force: it is not an slmkit bundle (no manifest.json). "
        "Remove it yourself or choose another -o."
    )
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    build(src, plan, out, force=True, log=lambda _: None)  # an empty folder may be replaced
    build(src, plan, out, force=True, log=lambda _: None)  # and so may a bundle
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging folders left behind


def test_interrupted_build_leaves_nothing(tmp_path, tiny35, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(golden, "reference_cases", interrupt)
    src = open_checkpoint(str(tiny35))
    with pytest.raises(KeyboardInterrupt):
        build(src, plan_build(src, None, "cpu", ()), tmp_path / "b", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_build_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny35):
    out = tmp_path / "b"
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny35),
            "--target",
            "android",
            "-o",
            str(out),
            "--dry-run",
            "--set",
            "quantize.block_size=128",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"# source: {tiny35} (Phi3ForCausalLM, rope longrope, ")
    assert f"# output: {out}\n" in result.output
    assert 'recipe = "phi-3.5-mini/android"' in result.output
    assert "block_size = 128" in result.output and "context_cap = 4096" in result.output
    assert not out.exists()


def test_cli_build_prints_where_and_what(tmp_path, tiny35):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "ios", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Building phi-3.5-mini/ios from {tiny35} into {out}\n" in result.output
    assert f"Bundle written: {out} (" in result.output
    assert "Verified on this machine (cpu provider): " in result.output
    assert "Needs the device: the ios runner and its instrumented smoke test on a device" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--target", "andriod"],
            "Error: Unknown target 'andriod'. Available: android, cpu, gguf, ios, linux-cuda, snapdragon, web, "
            "windows-dml. Did you mean 'android'?",
        ),
        (["--recipe", "phi-3.5-mini/andriod"], "Error: Unknown recipe 'phi-3.5-mini/andriod'."),
        (
            ["--target", "cpu", "--set", "quantize.blocksize=64"],
            "Error: plan [quantize] (from phi-3.5-mini/cpu + cpu + --set): unknown key 'blocksize'. Valid keys: "
            "accuracy_level, block_size, lm_head, method, rotation, symmetric, target_mb. Did you mean 'block_size'?\n",
        ),
        (
            ["--target", "cpu", "--set", "optimize.context_cap=262144"],
            "Error: plan [optimize] (from phi-3.5-mini/cpu + cpu + --set): 'context_cap' = 262144 is out of range "
            "[64, 131072].\n",
        ),
        (
            ["--target", "windows-dml", "--set", "export.precision=int8"],
            "Error: Precision 'int8' is not available for execution provider 'dml'. Valid for dml: int4, fp16.\n",
        ),
    ],
)
def test_cli_build_bad_requests(tmp_path, tiny35, args, message):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-o", str(out), *args])
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cap_beyond_the_models_context(tmp_path, tiny3):
    result = CliRunner().invoke(main, ["build", "-m", str(tiny3), "-t", "cpu", "--set", "optimize.context_cap=8192"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: optimize.context_cap = 8192 exceeds the model's context (4096 tokens, max_position_embeddings). "
        "Use --set optimize.context_cap=4096.\n"
    )


def test_cli_build_missing_model_folder(tmp_path):
    result = CliRunner().invoke(main, ["build", "-m", str(tmp_path / "none"), "-t", "cpu"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: Model folder '{tmp_path / 'none'}' does not exist. Pass a local Hugging Face folder "
        "(config.json, *.safetensors, tokenizer files) or a Hub id such as microsoft/Phi-3.5-mini-instruct.\n"
    )


def test_allow_pickle_converts_without_unpickling_code(tmp_path, model_copy):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model_copy / "model.safetensors"), model_copy / "pytorch_model.bin")
    (model_copy / "model.safetensors").unlink()
    result = CliRunner().invoke(main, ["build", "-m", str(model_copy), "-t", "cpu", "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "pass --allow-pickle" in result.output
    result = CliRunner().invoke(
        main, ["build", "-m", str(model_copy), "-t", "cpu", "-o", str(tmp_path / "b"), "--allow-pickle"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "pytorch_model.bin" in manifest["source"]["files"]
    assert not (model_copy / "model.safetensors").exists()  # the source folder is left as it was


def test_eos_ids_of_config_and_generation_config_that_disagree_are_all_stop_ids(model_copy, tmp_path):
    """config.json names <|end|> (607), generation_config.json two other ids (as a fine-tune that
    re-saved only one file would); the builder's genai_config.json takes the latter and the
    tokenizer's <|endoftext|> (600). The bundle stops on every one of them, and the manifest says
    where each came from."""
    for name, value in (("config.json", 607), ("generation_config.json", [5, 3])):
        path = model_copy / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {"eos_token_id": value}))
    src = open_checkpoint(str(model_copy))
    manifest = build(src, plan_build(src, None, "cpu", ()), tmp_path / "b", log=lambda _: None)
    genai = json.loads((tmp_path / "b" / "model" / "genai_config.json").read_text())
    assert genai["model"]["eos_token_id"] == [600, 5, 3, 607]
    assert manifest["source"]["eos_token_id"] == {
        "generation_config.json": [5, 3],
        "config.json": [607],
        "stops_on": [600, 5, 3, 607],
    }
    assert manifest["verification"]["host"]["failed"] == 0
