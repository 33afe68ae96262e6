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


@pytest.mark.parametrize("variant", ["tiny35", "tiny3", "tiny_llama", "tiny4"])
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


def test_calibration_sees_the_first_layer_as_the_whole_model_does(tiny35, tmp_path):
    """The calibrated int4 pass runs one layer at a time over its own calling of the layers: the
    X^T X of the first layer's inputs equals the whole model's, on the same calibration tokens (later
    layers see the quantized layers before them, as GPTQ intends)."""
    from toolkit.families import open_checkpoint
    from toolkit.plan.config import QuantizeConfig
    from toolkit.quantize.sequential import Calibration
    from toolkit.source.tensors import CheckpointTensors

    src = open_checkpoint(str(tiny35))
    weights = CheckpointTensors(src.path, src.weight_files)
    q = QuantizeConfig(method="gptq", symmetric=False)
    calibration = Calibration(src.path, src.weight_files, src.config, q, weights, tmp_path)
    lazy = calibration.inner.layers[0]
    lazy.load()
    got = calibration._grams(lazy)
    ids = torch.cat(list(calibration._chunks()))  # the embedded windows
    _, whole = load_reference(tiny35)
    sums: dict = {}

    def record(name):
        def hook(_module, inputs, _output):
            x = inputs[0].double().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.T @ x

        return hook

    layer = whole.model.layers[0]
    hooks = [m.register_forward_hook(record(n)) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        whole.model(inputs_embeds=ids)
    for h in hooks:
        h.remove()
    assert (
        sorted(got) == sorted(sums) == ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"]
    )
    tokens = ids.shape[0] * ids.shape[1]
    for name, total in sums.items():
        expected = (total / tokens).numpy()
        assert np.allclose(got[name].numpy(), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max()), name
