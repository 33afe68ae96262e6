"""Bad checkpoints are refused before anything is built, each with a message that says the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.families import open_checkpoint
from toolkit.source.checkpoint import eos_ids

SUPPORTED = (
    "Supported: Phi3ForCausalLM (Phi-3-mini-4k, Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini); "
    "LlamaForCausalLM (SmolLM2 and other Llama-architecture models); PhiMoEForCausalLM (Phi-3.5-MoE); "
    "PhimoeForCausalLM (Phi-3.5-MoE re-saved by transformers 5); "
    "Phi3VForCausalLM (Phi-3.5-vision, Phi-3-vision-128k)."
)


def _edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return path


def _refused(model: Path | str, **kwargs) -> str:
    from toolkit.errors import InputModelError

    with pytest.raises(InputModelError) as e:
        open_checkpoint(str(model), **kwargs)
    return str(e.value)


def test_tiny_models_are_read_as_their_real_counterparts(tiny35, tiny3):
    a, b = open_checkpoint(str(tiny35)), open_checkpoint(str(tiny3))
    assert (a.architecture, a.rope_scaling, b.rope_scaling) == ("Phi3ForCausalLM", "longrope", "none")
    assert a.config["rope_scaling"]["type"] == "longrope"  # the old-style block of the real config.json
    assert a.num_params > 0 and a.weight_files == ("model.safetensors",)
    assert eos_ids(tiny35) == [607, 601, 600]  # <|end|>, <|assistant|>, <|endoftext|>: Phi-3.5 stops on all three
    assert eos_ids(tiny35) == json.loads((tiny35 / "generation_config.json").read_text())["eos_token_id"]
    assert eos_ids(tiny3)[0] == 607


def test_missing_folder(tmp_path):
    assert _refused(tmp_path / "nope") == (
        f"Model folder '{tmp_path / 'nope'}' does not exist. Pass a local Hugging Face folder "
        "(config.json, *.safetensors, tokenizer files) or a Hub id such as microsoft/Phi-3.5-mini-instruct."
    )


def test_a_file_instead_of_a_folder(model_copy):
    weights = model_copy / "model.safetensors"
    assert _refused(weights).startswith(f"'{weights}' is a file, not a model folder.")


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    assert _refused(model_copy) == (
        f"No config.json in '{model_copy}'. Pass the folder of a Hugging Face checkpoint "
        "(the one that holds config.json and the *.safetensors weights)."
    )


def test_invalid_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    assert _refused(model_copy).startswith(f"{model_copy / 'config.json'} is not valid JSON (")
    assert _refused(model_copy).endswith("Re-download the checkpoint.")


def test_unsupported_architecture_names_the_supported_ones(model_copy):
    cfg = _edit_config(model_copy, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    assert _refused(model_copy) == f"Unsupported architecture 'GPT2LMHeadModel' in {cfg}. {SUPPORTED}"


def test_remote_code_is_refused(model_copy):
    cfg = _edit_config(
        model_copy, model_type="phi3_custom", auto_map={"AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
    )
    assert _refused(model_copy) == (
        f"{cfg} declares model_type 'phi3_custom', which transformers does not implement (expected 'phi3' "
        "for Phi3ForCausalLM): loading it would need trust_remote_code, and slmkit never runs code "
        "shipped inside a model repository."
    )


def test_pickle_only_weights_are_refused_without_the_flag(model_copy):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model_copy / "model.safetensors"), model_copy / "pytorch_model.bin")
    (model_copy / "model.safetensors").unlink()
    assert _refused(model_copy) == (
        f"'{model_copy}' has only pickle weights (pytorch_model.bin). Unpickling can run arbitrary code, "
        "so slmkit refuses it. Download the *.safetensors files of this model, or, if you trust the file, "
        "pass --allow-pickle (slmkit then converts it to safetensors with torch.load(weights_only=True))."
    )
    assert open_checkpoint(str(model_copy), allow_pickle=True).weight_files == ("pytorch_model.bin",)


def test_missing_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    assert _refused(model_copy) == (
        f"No tokenizer in '{model_copy}': expected tokenizer.json (or tokenizer.model) with "
        "tokenizer_config.json. Copy the tokenizer files of the model into the folder."
    )


def test_no_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    assert _refused(model_copy) == f"No weights in '{model_copy}': expected *.safetensors files next to config.json."


def test_truncated_safetensors(model_copy):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert _refused(model_copy) == (
        f"{weights} is truncated: {len(data) // 2} bytes on disk, its header needs {len(data)}. "
        "Re-download it (an interrupted download leaves such files)."
    )


def test_garbage_safetensors(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\xff" * 64)
    assert _refused(model_copy).startswith(f"{model_copy / 'model.safetensors'} is not a valid safetensors file (")


def test_shard_index_naming_a_missing_shard(model_copy):
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _refused(model_copy) == (
        f"{model_copy / 'model.safetensors.index.json'} lists shards that are not in the folder: "
        "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors. "
        "The download is incomplete; download the missing files."
    )


@pytest.mark.parametrize(
    "key,value",
    [("hidden_size", 10**9), ("num_hidden_layers", -1), ("vocab_size", "32064"), ("num_attention_heads", True)],
)
def test_absurd_sizes_are_refused_before_allocating(model_copy, key, value):
    cfg = _edit_config(model_copy, **{key: value})
    limit = {"hidden_size": 32768, "num_hidden_layers": 512, "vocab_size": 1048576, "num_attention_heads": 1024}[key]
    assert _refused(model_copy) == (
        f"{cfg}: '{key}' = {value!r} is not a plausible size (expected an integer in 1..{limit}). "
        "The config is corrupt or not a small language model."
    )


def test_missing_size_key(model_copy):
    cfg = _edit_config(model_copy, intermediate_size=None)
    assert _refused(model_copy) == f"{cfg} is missing 'intermediate_size'. Re-download the checkpoint."


def test_longrope_factors_must_match_the_head_size(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    scaling = dict(cfg["rope_scaling"], short_factor=[1.0, 1.0])
    path = _edit_config(model_copy, rope_scaling=scaling)
    half = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
    assert (
        _refused(model_copy) == f"{path}: longrope 'short_factor' must list head_dim/2 = {half} numbers, got 2 numbers."
    )


def test_hub_ids_are_not_fetched_when_a_local_path_is_meant(tmp_path):
    # A path-looking name that does not exist is reported as a missing folder, not sent to the Hub.
    assert _refused("./models/phi").startswith("Model folder './models/phi' does not exist.")
