"""The layer-by-layer float32 reference (toolkit/reference/) against the whole model loaded by
transformers: the same logits and tokens, with the memory of one decoder layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peak_memory import LAYER_BYTES, peak_growth

from toolkit.families import open_checkpoint
from toolkit.plan.config import VerifyConfig
from toolkit.reference.layerwise import layerwise_model
from toolkit.source.checkpoint import eos_ids
from toolkit.verify.golden import reference_cases
from toolkit.verify.quality import Reference


def load_reference(path: Path):
    """The whole float32 model, as transformers loads it: what the layer-by-layer one must equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(path), model.eval()


TEXTS = ["The capital of France is", "Once upon a time there was", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from toolkit.tiny.phi3 import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.mark.parametrize("variant", ["tiny35", "tiny3", "tiny_llama"])
def test_layerwise_logits_equal_the_whole_model(request, variant):
    model_dir = request.getfixturevalue(variant)
    src = open_checkpoint(str(model_dir))
    tokenizer, whole = load_reference(src.path)
    _, lazy = layerwise_model(src.path, src.weight_files)
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text).input_ids])
            assert torch.allclose(lazy(ids).logits, whole(ids).logits, atol=1e-5, rtol=0), text


def test_golden_tokens_in_one_batch_equal_the_whole_model_one_prompt_at_a_time(tiny35):
    src = open_checkpoint(str(tiny35))
    eos = eos_ids(tiny35)
    cfg = VerifyConfig(prompts=TEXTS, chat_prompts=["What is the capital of France?"], new_tokens=12)
    cases, fmt = reference_cases(src.path, src.weight_files, cfg, eos)
    _, whole = load_reference(src.path)
    assert [c["prompt"] for c in cases] == TEXTS + [fmt.replace("{content}", "What is the capital of France?")]
    for case in cases:
        ids = torch.tensor([case["prompt_ids"]])
        out = whole.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
        expected = [int(t) for t in out[0, ids.shape[1] :]]
        assert case["expected_ids"] == expected[: len(case["expected_ids"])], case["prompt"]
        assert len(case["expected_ids"]) == 12 or case["expected_ids"][-1] in eos


def test_eval_reference_windows_in_batches_equal_one_at_a_time(tiny35):
    from toolkit.data import corpus

    ref = Reference(tiny35, corpus(), "corpus", window=64, max_tokens=600)
    assert len(ref.windows) >= 9 and len(ref.windows[-1]) < 64  # batches of 4 and a shorter last window
    _, whole = load_reference(tiny35)
    with torch.no_grad():
        for win, logprobs in zip(ref.windows, ref.logprobs, strict=True):
            expected = torch.log_softmax(whole(torch.tensor([win])).logits[0, :-1], -1).numpy()
            assert np.allclose(logprobs.astype(np.float32), expected, atol=2e-2), win[:4]  # stored as float16


PEAK = """
import resource, sys, torch
from pathlib import Path
from toolkit.reference.layerwise import layerwise_model
from toolkit.families import open_checkpoint
src = open_checkpoint(sys.argv[1])
tokenizer, model = layerwise_model(src.path, src.weight_files)
with torch.no_grad():
    model.generate(torch.tensor([[1, 5, 9, 30, 44]]), max_new_tokens=3, do_sample=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_reference_memory_does_not_grow_with_layers(tmp_path):
    growth, peaks = peak_growth(PEAK, tmp_path)
    assert growth < LAYER_BYTES, peaks  # eight more layers (134 MB of float32) move the peak by less than one


def test_a_layer_tensor_of_the_wrong_shape_is_named(model_copy):
    from safetensors.torch import load_file, save_file

    from toolkit.errors import InputModelError

    weights = load_file(str(model_copy / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"] = weights["model.layers.1.self_attn.o_proj.weight"][
        :, :32
    ].contiguous()
    save_file(weights, str(model_copy / "model.safetensors"))
    src = open_checkpoint(str(model_copy))
    _, model = layerwise_model(src.path, src.weight_files)
    with pytest.raises(
        InputModelError,
        match=r"tensor 'model.layers.1.self_attn.o_proj.weight' has shape \[64, 32\] "
        r"\(BF16, 4096 bytes\); the model's config.json asks for \[64, 64\]",
    ):
        model(torch.tensor([[1, 2, 3]]))


def test_calibration_statistics_equal_the_whole_models(tiny35):
    """slmkit's mse calibration (mean squared input of every Linear) runs layer by layer too."""
    from toolkit.quantize.calibration import activation_importance, calibration_texts

    hf_name = {
        "attn.qkv_proj": "self_attn.qkv_proj",
        "attn.o_proj": "self_attn.o_proj",
        "mlp.gate_proj": "mlp.gate_up_proj",
        "mlp.up_proj": "mlp.gate_up_proj",
        "mlp.down_proj": "mlp.down_proj",
    }
    weights = {
        f"model.layers.{i}.{w}.MatMul.weight": f"model.layers.{i}.{h}" for i in range(2) for w, h in hf_name.items()
    }
    weights["lm_head.MatMul.weight"] = "lm_head"
    texts = calibration_texts()[:2]
    got = activation_importance(tiny35, texts, list(weights), max_tokens=600)

    tokenizer, whole = load_reference(tiny35)
    sums, counts = {}, {}

    def record(name):
        def hook(_module, inputs, _output):
            x = inputs[0].double().reshape(-1, inputs[0].shape[-1])
            sums[name], counts[name] = sums.get(name, 0) + (x * x).sum(0), counts.get(name, 0) + x.shape[0]

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in whole.named_modules() if isinstance(m, torch.nn.Linear)]
    used = 0
    with torch.no_grad():
        for text in texts:  # the same windows as activation_importance
            ids = tokenizer(text).input_ids[: max(0, 600 - used)]
            for start in range(0, len(ids), 512):
                if len(ids[start : start + 512]) > 1:
                    whole(torch.tensor([ids[start : start + 512]]))
            used += len(ids)
    for h in hooks:
        h.remove()
    assert sorted(got) == sorted(weights)
    for weight, name in weights.items():
        assert np.allclose(got[weight], (sums[name] / counts[name]).float().numpy(), rtol=1e-5, atol=1e-7), weight
