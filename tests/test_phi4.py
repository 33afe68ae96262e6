"""Phi-4-mini (Phi3ForCausalLM with partial rotary 0.75, longrope, tied 200k-token embeddings): its
recipes are chosen from the checkpoint, every target's bundle builds, verifies and runs, the int8
output projection shares its codes with the embedding, answers end instead of looping, and bad
rotary settings are refused with the reason. The builder parity and the layer-by-layer reference
of the tiny Phi-4-mini are in test_stream.py and test_reference.py (variant tiny4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from toolkit.build import plan_build
from toolkit.cli import main
from toolkit.errors import ConfigError, InputModelError
from toolkit.families import open_checkpoint

TARGETS = ["cpu", "android", "ios", "linux-cuda", "windows-dml"]


@pytest.fixture(scope="module")
def phi4_bundles(tmp_path_factory, tiny4):
    """target -> (bundle folder, build output), built on first use."""
    root = tmp_path_factory.mktemp("phi4")
    cache: dict[str, tuple[Path, str]] = {}

    def get(target: str) -> tuple[Path, str]:
        if target not in cache:
            out = root / target
            result = CliRunner().invoke(main, ["build", "-m", str(tiny4), "-t", target, "-o", str(out), "-q"])
            assert result.exit_code == 0, result.output
            cache[target] = (out, result.output)
        return cache[target]

    return get


def test_recipes_are_chosen_by_the_partial_rotary_factor(tiny4, tiny35):
    phi4, phi35 = open_checkpoint(str(tiny4)), open_checkpoint(str(tiny35))
    assert phi4.architecture == phi35.architecture == "Phi3ForCausalLM"
    assert phi4.rope_scaling == phi35.rope_scaling == "longrope"
    for target in TARGETS:
        assert plan_build(phi4, None, target, ()).recipe == f"phi-4-mini/{target}"
        assert plan_build(phi35, None, target, ()).recipe == f"phi-3.5-mini/{target}"
    with pytest.raises(ConfigError) as e:
        plan_build(phi35, "phi-4-mini/cpu", None, ())
    assert str(e.value) == (
        "Recipe 'phi-4-mini/cpu' is for Phi3ForCausalLM with rope scaling: longrope, partial rotary factor "
        "0.75; this checkpoint is Phi3ForCausalLM (rope scaling: longrope)."
    )
    shown = CliRunner().invoke(main, ["show", "phi-4-mini/android"]).output
    assert "partial_rotary_factor = 0.75" in shown and 'lm_head = "int8"' in shown
    dry = CliRunner().invoke(main, ["build", "-m", str(tiny4), "-t", "cpu", "--dry-run"]).output
    assert "(Phi3ForCausalLM, rope longrope, partial rotary 0.75, " in dry and 'recipe = "phi-4-mini/cpu"' in dry


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_builds_verifies_and_runs(phi4_bundles, tiny4, target):
    out, output = phi4_bundles(target)
    assert "checks passed" in output and "Verified on this machine" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["recipe"] == f"phi-4-mini/{target}"
    assert manifest["source"]["partial_rotary_factor"] == 0.75
    stops = json.loads((tiny4 / "generation_config.json").read_text())["eos_token_id"]
    assert manifest["source"]["eos_token_id"]["stops_on"] == stops  # <|end|> and <|endoftext|>
    genai = json.loads((out / "model" / "genai_config.json").read_text())["model"]
    assert sorted(genai["eos_token_id"]) == sorted(stops)
    golden = json.loads((out / "tests" / "golden.json").read_text())
    assert any(c.get("chat") for c in golden["cases"])  # the chat template's cases are checked too


def test_the_output_projection_is_int8_and_the_embedding_reads_its_codes(phi4_bundles):
    out, _ = phi4_bundles("cpu")
    graph = onnx.load(str(out / "model" / "model.onnx"), load_external_data=False).graph
    head = next(n for n in graph.node if n.name.startswith("/lm_head/MatMul"))
    table = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in (head, table)}
    assert head.op_type == "MatMulNBits" and attrs[head.name]["bits"] == 8 and attrs[table.name]["bits"] == 8
    reshape = next(n for n in graph.node if table.input[0] in n.output)
    assert reshape.input[0] == head.input[1] and table.input[2] == head.input[2]  # the lm_head's codes and scales
    names = {t.name for t in graph.initializer}
    assert not any("embed_tokens" in n for n in names)  # no table of its own: the lm_head's codes


def test_answers_end_instead_of_looping(phi4_bundles):
    """The chat answer of the shipped defaults stops on an EOS id well before a 200-token limit."""
    import onnxruntime_genai as og

    out, _ = phi4_bundles("cpu")
    model = og.Model(str(out / "model"))
    tokenizer = og.Tokenizer(model)
    stops = set(json.loads((out / "model" / "genai_config.json").read_text())["model"]["eos_token_id"])
    prompt = tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": "What is the capital of France?"}]), add_generation_prompt=True
    )
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 200, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    new = []
    while not generator.is_done():
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
    assert new[-1] in stops and len(new) < 100, tokenizer.decode(new)
    assert "Paris" in tokenizer.decode(new)


def _copy(model: Path, tmp_path: Path, change) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(model, dest)
    config = json.loads((dest / "config.json").read_text())
    change(config)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_longrope_factors_are_checked_against_the_rotated_dims(tiny4, tmp_path):
    bad = _copy(tiny4, tmp_path, lambda c: c["rope_scaling"].update(short_factor=[1.0] * 32))
    with pytest.raises(InputModelError) as e:
        open_checkpoint(str(bad))
    assert str(e.value) == (
        f"{bad / 'config.json'}: longrope 'short_factor' must list 48/2 = 24 (the rotated dims) numbers, "
        "got 32 numbers."
    )


@pytest.mark.parametrize(
    "value, message",
    [
        (1.5, "'partial_rotary_factor' = 1.5 must be a number in (0, 1]."),
        (0.703125, "partial_rotary_factor 0.703125 of head_dim 64 rotates 45 dimensions, an odd number"),
    ],
)
def test_impossible_partial_rotary_factors_are_refused(tiny4, tmp_path, value, message):
    bad = _copy(tiny4, tmp_path, lambda c: c.update(partial_rotary_factor=value))
    with pytest.raises(InputModelError) as e:
        open_checkpoint(str(bad))
    assert message in str(e.value)
