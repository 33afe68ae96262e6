"""Strict plans: unknown keys, wrong types and impossible combinations are errors that say the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import ConfigError
from toolkit.plan.catalog import load_recipe, load_recipe_file, load_target, load_target_file
from toolkit.plan.config import parse_override, plan_from_dict, resolve, to_toml


def plan(*overrides: str, recipe: str = "phi-3.5-mini/android"):
    r = load_recipe(recipe)
    return resolve(r, load_target(r.target), overrides)


def test_target_defaults_then_recipe_then_set():
    p = plan()
    assert (p.export.execution_provider, p.export.precision) == ("cpu", "int4")
    assert (p.quantize.method, p.quantize.block_size, p.quantize.accuracy_level) == ("mixed", 64, 4)  # recipe
    assert (p.quantize.symmetric, p.quantize.lm_head) == (False, "int4")
    assert p.optimize.context_cap == 4096  # target
    assert p.runtime.runner == "android"
    assert p.verify.min_top1_agreement == 0.85
    p = plan("quantize.block_size=128", "optimize.context_cap=2048", 'verify.prompts=["a", "b"]')
    assert (p.quantize.block_size, p.optimize.context_cap, p.verify.prompts) == (128, 2048, ("a", "b"))


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as e:
        plan("quantize.blocksize=64")
    assert str(e.value) == (
        "plan [quantize] (from phi-3.5-mini/android + android + --set): unknown key 'blocksize'. "
        "Valid keys: accuracy_level, block_size, lm_head, method, rotation, symmetric, target_mb. "
        "Did you mean 'block_size'?"
    )


def test_wrong_type_and_value():
    with pytest.raises(ConfigError, match=r"'block_size' must be an integer, got 'big' \(str\)\."):
        plan("quantize.block_size=big")
    with pytest.raises(ConfigError, match=r"'block_size' = 48 is not allowed\. Valid values: 16, 32, 64, 128, 256\."):
        plan("quantize.block_size=48")
    with pytest.raises(ConfigError, match=r"'context_cap' = 10 is out of range \[64, 131072\]\."):
        plan("optimize.context_cap=10")
    with pytest.raises(ConfigError, match=r"'symmetric' must be true or false, got 1 \(int\)\."):
        plan("quantize.symmetric=1")


def test_set_syntax_errors():
    with pytest.raises(ConfigError) as e:
        parse_override("block_size=64")
    assert str(e.value) == (
        "--set 'block_size=64': expected section.key=value, e.g. quantize.block_size=64 or "
        "optimize.context_cap=2048. Sections: export, quantize, optimize, runtime, npu, adapters, verify."
    )
    with pytest.raises(ConfigError, match=r"unknown section 'quantise'\. .* Did you mean 'quantize'\?"):
        parse_override("quantise.block_size=64")
    assert parse_override("runtime.package=onnxruntime-genai") == ("runtime", "package", "onnxruntime-genai")


def test_impossible_combinations():
    with pytest.raises(ConfigError) as e:
        plan("export.precision=fp16")
    assert str(e.value) == (
        "Precision 'fp16' is not available for execution provider 'cpu'. Valid for cpu: int4, int8, fp32."
    )
    with pytest.raises(ConfigError, match="Runner 'android' cannot drive execution provider 'cuda'"):
        plan("export.execution_provider=cuda")


def test_bad_files(tmp_path: Path):
    bad = tmp_path / "t.toml"
    bad.write_text('[target]\ndescription = "x"\n[quantize]\nbits = 4\n')
    with pytest.raises(ConfigError, match=r"t.toml \[quantize\]: unknown key 'bits'"):
        load_target_file(bad)
    bad.write_text('[target]\ndescription = "x"\n[quantise]\n')
    with pytest.raises(ConfigError, match=r"unknown section \[quantise\]\. Valid sections: target, export, "):
        load_target_file(bad)
    bad.write_text("[target\n")
    with pytest.raises(ConfigError, match=r"t.toml: not valid TOML"):
        load_target_file(bad)
    bad.write_text('[recipe]\ntarget = "cpu"\ndescription = "x"\narchitectures = ["A"]\nexamples = []\n')
    with pytest.raises(ConfigError, match=r"\[recipe\]: missing required key 'rope_scaling'\."):
        load_recipe_file(bad)


def test_plan_round_trips_through_the_manifest_form():
    p = plan("quantize.method=default", "quantize.lm_head=int8")
    assert plan_from_dict(p.to_dict(), "manifest") == p
    assert 'lm_head = "int8"' in to_toml(p.to_dict())
