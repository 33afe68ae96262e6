"""The whole catalog is consistent, and the catalog commands work as a user types them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.errors import UnknownNameError
from toolkit.formats import format_of
from toolkit.plan.catalog import load_recipe, load_target, recipe_names, target_names
from toolkit.plan.config import resolve

RUNNERS = Path(__file__).resolve().parent.parent / "toolkit" / "bundle" / "runners"
TARGETS = ["android", "cpu", "gguf", "ios", "linux-cuda", "snapdragon", "web", "windows-dml"]
ONNX_TARGETS = [t for t in TARGETS if t not in ("gguf", "snapdragon")]
# The web runner has no image processor: phi3v refuses web (tests/test_web.py); nor has the NPU a
# static graph of its image encoder (tests/test_npu.py).
VISION_TARGETS = [t for t in ONNX_TARGETS if t != "web"]
FAMILIES = ["phi-3-mini-4k", "phi-3.5-mini", "smollm2"]
# A mixture of experts is built for the targets with the memory for it; the others refuse it with
# the bundle size (tests/test_moe.py).
MOE_TARGETS = ["cpu", "linux-cuda"]


def test_every_target_has_a_recipe_per_family_and_a_runner():
    assert target_names() == TARGETS
    expected = [f"{f}/{t}" for f in FAMILIES[:2] for t in TARGETS] + [f"phi-3.5-moe/{t}" for t in MOE_TARGETS]
    expected += [f"phi-3.5-vision/{t}" for t in VISION_TARGETS]  # tests/test_vision.py builds each
    expected += [f"phi-4-mini/{t}" for t in TARGETS]  # tests/test_phi4.py builds each, test_web.py the web one
    assert recipe_names() == expected + [f"smollm2/{t}" for t in TARGETS]
    for name in recipe_names():
        recipe = load_recipe(name)
        assert recipe.target == name.split("/")[1], name
        plan = resolve(recipe, load_target(recipe.target))
        runner, host = plan.runtime.runner, format_of(plan).host_runner
        assert (RUNNERS / host / "run.py").is_file() and (RUNNERS / host / "smoke_test.py").is_file()
        if runner != host:
            assert (RUNNERS / runner).is_dir(), f"{name}: no runner template for {runner}"


def test_every_format_has_a_target_and_a_plan_names_one_format():
    """Each target's plan resolves to one format (its engine and provider), every format is some
    target's, and a runner that cannot run what the engine writes is refused, saying why."""
    from toolkit.errors import ConfigError
    from toolkit.formats import FORMATS, format_for, format_of_target

    assert {format_of_target(t).name for t in TARGETS} == set(FORMATS)
    for f in FORMATS.values():
        assert all(format_for(e, p) is f for e in f.engines for p in f.providers)
    with pytest.raises(ConfigError) as e:
        format_of(resolve(load_recipe("smollm2/cpu"), load_target("cpu"), ("runtime.runner=llama-cpp",)))
    assert str(e.value) == (
        "export.engine 'stream' with runtime.runner 'llama-cpp': a GGUF file is run by llama.cpp (runner "
        "'llama-cpp'), an ONNX model by onnxruntime-genai. Use --target gguf for a GGUF bundle."
    )
    with pytest.raises(ConfigError, match=r"export\.engine 'gguf' writes nothing for execution provider 'cuda'"):
        format_for("gguf", "cuda")


def test_every_family_is_in_the_catalog_for_every_target_it_does_not_refuse():
    """Each family's architectures have a recipe for every target (or the family refuses that
    target, saying why), every recipe's architectures belong to a family, and each family has a
    tiny checkpoint maker (the tests build its bundles from it)."""
    from types import SimpleNamespace

    from toolkit.errors import ConfigError
    from toolkit.families import FAMILIES as REGISTERED
    from toolkit.tiny import MAKERS

    assert set(MAKERS) == set(REGISTERED)
    architectures = {arch for f in REGISTERED.values() for arch in f.architectures}
    recipes = [load_recipe(n) for n in recipe_names()]
    assert {a for r in recipes for a in r.architectures} <= architectures
    for family in REGISTERED.values():
        for arch in family.architectures:
            src = SimpleNamespace(
                architecture=arch,
                num_params=4_000_000_000,
                config={"vocab_size": 32064, "hidden_size": 3072, "num_local_experts": 16},
            )
            for target in TARGETS:
                if target == "gguf" and family.gguf is None:  # refused by plan_build (tests/test_moe.py)
                    assert not [r for r in recipes if r.target == target and arch in r.architectures]
                    continue
                try:
                    family.refuse_target(src, target)
                except ConfigError as refusal:
                    assert f"is not built for {target}" in str(refusal)
                    assert not [r for r in recipes if r.target == target and arch in r.architectures]
                    continue
                assert [r for r in recipes if r.target == target and arch in r.architectures], (arch, target)


def test_mobile_targets_cap_the_context():
    for t in ("android", "ios"):
        assert resolve(load_recipe(f"phi-3.5-mini/{t}"), load_target(t)).optimize.context_cap == 4096


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownNameError) as e:
        load_target("andriod")
    assert str(e.value) == (
        "Unknown target 'andriod'. Available: android, cpu, gguf, ios, linux-cuda, snapdragon, web, windows-dml. "
        "Did you mean 'android'?"
    )
    with pytest.raises(
        UnknownNameError, match=r"Unknown recipe 'phi-3.5-mini/andriod'\..*Did you mean 'phi-3.5-mini/android'\?"
    ):
        load_recipe("phi-3.5-mini/andriod")


def test_cli_ls_show_cp(tmp_path: Path):
    runner = CliRunner()
    out = runner.invoke(main, ["ls"]).output
    assert "  android       Android phone (arm64-v8a)" in out
    assert "  phi-3.5-mini/android" in out
    shown = runner.invoke(main, ["show", "phi-3.5-mini/ios"])
    assert shown.exit_code == 0
    assert 'runner = "ios"' in shown.output and "context_cap = 4096" in shown.output
    assert 'execution_provider = "cuda"' in runner.invoke(main, ["show", "linux-cuda"]).output
    dest = tmp_path / "mine.toml"
    copied = runner.invoke(main, ["cp", "phi-3.5-mini/android", str(dest)])
    assert copied.exit_code == 0 and dest.read_text() == load_recipe("phi-3.5-mini/android").path.read_text()
    again = runner.invoke(main, ["cp", "phi-3.5-mini/android", str(dest)])
    assert again.exit_code == 1
    assert again.output == f"Error: '{dest}' already exists; choose another path.\n"
    shown = runner.invoke(main, ["show", str(dest)])
    assert shown.exit_code == 0 and "# resolved plan" in shown.output


def test_cli_unknown_target_message():
    result = CliRunner().invoke(main, ["show", "andriod"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: Unknown target 'andriod'. Available: android, cpu, gguf, ios, linux-cuda, snapdragon, web, "
        "windows-dml. Did you mean 'android'?\n"
    )
