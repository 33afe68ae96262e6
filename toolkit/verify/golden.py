"""Golden cases from the float32 PyTorch reference (tests/golden.json): greedy continuations of the
recipe's prompts, plain and through the chat template, and the family's extra cases (an image);
and the single-turn prompt format the mobile runners fill in."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ..families import family_of
from ..plan.config import VerifyConfig
from ..progress import bar
from ..reference.layerwise import LayerPasses, layerwise_model
from ..source.checkpoint import read_config

CONTENT = "{content}"


def prompt_format(tokenizer) -> str | None:
    """The chat template rendered for one user turn, with '{content}' where the message goes,
    for runners without a template engine (Kotlin, Objective-C). None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CONTENT}], add_generation_prompt=True, tokenize=False
    )
    return text if text.count(CONTENT) == 1 else None


def reference_cases(
    source: Path, weight_files: tuple[str, ...], cfg: VerifyConfig, eos: list[int], bundle: Path | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Greedy continuations of the recipe's prompts by the float32 PyTorch model, one decoder
    layer in memory at a time (toolkit/reference/), all prompts in one batch; and the
    single-turn prompt format. Chat prompts go through the checkpoint's chat template. With the
    `bundle` being built, the family's extra cases follow (they run the bundle's own processor)."""
    import torch

    family = family_of(read_config(source))
    passes = LayerPasses()
    tokenizer, model = layerwise_model(source, weight_files, on_layer=passes)
    fmt = prompt_format(tokenizer)
    texts = [(p, False) for p in cfg.prompts] + [(fmt.replace(CONTENT, p), True) for p in cfg.chat_prompts if fmt]
    # The template already holds any BOS text; the runtime's tokenizer adds none to it either.
    prompts = [tokenizer(text, add_special_tokens=not chat).input_ids for text, chat in texts]
    width = max(len(ids) for ids in prompts)
    pad = eos[0] if eos else 0
    batch = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])  # left-padded
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    total = model.config.num_hidden_layers * cfg.new_tokens  # one pass over the layers per new token
    with torch.no_grad(), bar(f"reference ({len(prompts)} prompts)", total, "layer passes") as passes.bar:
        out = model.generate(
            batch,
            attention_mask=mask,
            max_new_tokens=cfg.new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    cases = []
    for (text, chat), ids, row in zip(texts, prompts, out, strict=True):
        cont = [int(t) for t in row[width:]]
        # generate() pads after the first EOS; keep the continuation up to and including it.
        stop = next((i for i, t in enumerate(cont) if t in eos), len(cont) - 1)
        cases.append(
            {"prompt": text, "chat": chat, "prompt_ids": [int(t) for t in ids], "expected_ids": cont[: stop + 1]}
        )
    if bundle is not None and family.extra_cases is not None:
        wrap = (lambda content: fmt.replace(CONTENT, content)) if fmt else None
        cases += family.extra_cases(bundle, source, weight_files, model, passes, cfg, eos, wrap)
    return cases, fmt


def write_golden(
    bundle: Path, cases: list[dict[str, Any]], cfg: VerifyConfig, adapters: dict[str, Any] | None = None
) -> None:
    """tests/golden.json: the base model's cases and, for runtime adapters, each adapter's file and
    cases (the reference with that adapter merged)."""
    golden = {
        "schema_version": 1,
        "reference": {
            "engine": f"transformers {metadata.version('transformers')}",
            "dtype": "float32",
            "weights": "one decoder layer at a time",
        },
        "min_top1_agreement": cfg.min_top1_agreement,
        "min_greedy_prefix": cfg.min_greedy_prefix,
        "tie_logit_margin": cfg.tie_logit_margin,
        "software_adapter_s": cfg.software_adapter_s,
        "cases": cases,
        **({"adapters": adapters} if adapters else {}),
    }
    (bundle / "tests" / "golden.json").write_text(json.dumps(golden, indent=2) + "\n", encoding="utf-8")


def write_prompt_format(bundle: Path, fmt: str | None) -> None:
    if fmt is not None:
        data = {"single_turn": fmt, "placeholder": CONTENT}
        (bundle / "model" / "prompt_format.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
