#!/usr/bin/env python3
"""Self-check of this bundle, needing only onnxruntime-genai and numpy (not slmkit).

1. Every file against manifest.json (size, then sha256): a truncated download is named as such.
2. The model loads, and the tokenizer encodes each golden prompt to the reference's ids.
3. Teacher-forced top-1 agreement: fed the reference's greedy continuation, the bundle's argmax
   must equal the reference token at >= min_top1_agreement of the positions (tests/golden.json).
4. Greedy generation: the first min_greedy_prefix tokens must equal the ones recorded when the
   bundle was built and verified (bundle_ids); another CPU's int4 kernels may flip later tokens.
   An earlier difference passes only as a tie: the device's token was within tie_logit_margin
   logits of the recorded one on the build host (bundle_near), the size of the differences
   measured between ARM and x86 kernels. Any other difference is a defect.
5. Runtime LoRA adapters (model/adapters/): every adapter's cases, with that adapter active, against
   the reference with the adapter merged; all in one loaded model, switching between adapters.

Prints one line per check and a final 'N passed, M failed' line; exits 1 when anything failed.
    python tests/smoke_test.py [--provider cpu] [--json result.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BUNDLE / "runner"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import Report, agreement, check_case, main, near_ties  # noqa: E402
from checks import case_sets as cases_with_adapters  # noqa: E402


WINDOW = [0]  # an NPU bundle's prompt window (set by open_model): its prompt fills whole windows
ACTIVE = [None]  # (Adapters, name) of the runtime LoRA adapter the cases run with, or None
# a new sequence's first token goes through a run of its own (a web bundle's WASM graph, as its page
# runs it: one activation scale a run, which the first position's outliers would set for the prompt)
FIRST_ALONE = [False]


def start(model, prompt_ids: list[int], more: int, inputs=None):
    """A greedy generator fed the prompt (or, for a prompt with images, the processor's inputs)."""
    import onnxruntime_genai as og
    from run import append_prompt

    params = og.GeneratorParams(model)
    pad = -len(prompt_ids) % WINDOW[0] if WINDOW[0] else 0
    params.set_search_options(max_length=len(prompt_ids) + pad + more, do_sample=False)
    generator = og.Generator(model, params)
    if ACTIVE[0] is not None:
        generator.set_active_adapter(*ACTIVE[0])
    if inputs is not None:
        generator.set_inputs(inputs)
    else:
        append_prompt(generator, prompt_ids, FIRST_ALONE[0])
    return generator


def teacher_forced(model, prompt_ids: list[int], expected: list[int], inputs=None) -> list[int]:
    """The bundle's argmax at each position of the reference continuation, in one forward pass
    (with images: the prompt's pass, then one pass over the continuation)."""
    import numpy as np

    if WINDOW[0]:
        return windowed_top1(model, prompt_ids, expected)
    if inputs is None:
        seq = prompt_ids + expected[:-1]
        generator = start(model, seq, 1)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
        begin = len(prompt_ids) - 1 - (1 if FIRST_ALONE[0] and len(seq) > 1 else 0)  # the last run's rows
        return [int(t) for t in logits[begin : begin + len(expected)].argmax(axis=-1)]
    generator = start(model, prompt_ids, len(expected), inputs)
    first = np.asarray(generator.get_output("logits"), dtype=np.float32)[0, -1]
    top = [int(first.argmax())]
    if len(expected) > 1:
        generator.append_tokens(np.asarray(expected[:-1], dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
        top += [int(t) for t in logits[-(len(expected) - 1):].argmax(axis=-1)]
    return top


def windowed_top1(model, prompt_ids: list[int], expected: list[int]) -> list[int]:
    """Teacher-forced argmax for a bundle whose prompt goes through windows of WINDOW tokens (an NPU
    bundle): its logits are the last window's, and appending after a padded window shifts the
    positions, so each window of the continuation is read from its own run over the sequence up to it."""
    import numpy as np

    w, seq = WINDOW[0], prompt_ids + expected[:-1]
    wanted = range(len(prompt_ids) - 1, len(seq))
    top = {}
    for m in sorted({p // w for p in wanted}):
        end = min(len(seq), (m + 1) * w)
        generator = start(model, seq[:end], 1)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
        top.update({p: int(logits[p - m * w].argmax()) for p in wanted if m * w <= p < end})
    return [top[p] for p in wanted]


def stepwise_logits(model, prompt_ids: list[int], tokens: list[int], inputs=None):
    """The logits before each of `tokens`, decoded one token at a time as generation does (the
    same kernels as greedy; a single pass over the whole sequence takes other ones)."""
    import numpy as np

    generator = start(model, prompt_ids, len(tokens) + 1, inputs)
    if not WINDOW[0]:
        rows = []
        for token in tokens:
            rows.append(np.asarray(generator.get_output("logits"), dtype=np.float32)[0, -1])
            generator.append_tokens(np.asarray([token], dtype=np.int32))
        return rows
    # A windowed prompt's logits are its last window's (its last token at (n - 1) % window), and only
    # generation takes one token a step: it follows its own greedy tokens, which `tokens` are.
    rows = [np.asarray(generator.get_output("logits"), dtype=np.float32)[0, (len(prompt_ids) - 1) % WINDOW[0]]]
    generator.generate_next_token()
    for _ in tokens[1:]:
        generator.generate_next_token()
        rows.append(np.asarray(generator.get_output("logits"), dtype=np.float32)[0, -1])
    return rows


def open_model(model_dir: Path, provider: str, report: Report):
    import onnxruntime_genai as og
    from run import load_model, window

    try:
        WINDOW[0] = window(model_dir)
        model = load_model(model_dir, provider)
        return model, og.Tokenizer(model)
    except (Exception, SystemExit) as e:  # a broken graph or missing provider: report it, do not crash
        report.add("load", False, f"{type(e).__name__}: {e}")
        return None, None


def greedy(model, tokenizer, model_dir: Path, prompt_ids: list[int], n: int, inputs=None) -> list[int]:
    from run import generate, genai_config

    cap = genai_config(model_dir)["search"]["max_length"]
    return generate(model, tokenizer, prompt_ids, cap, [], max_new_tokens=n, inputs=inputs, window=WINDOW[0],
                    adapter=ACTIVE[0], first_alone=FIRST_ALONE[0])


def case_inputs(model, tokenizer, bundle: Path, case: dict):
    """(the prompt's ids as this runtime makes them, the processor's inputs or None): an image case
    goes through the runtime's image processor with the bundle's test picture (tests/image.png)."""
    import onnxruntime_genai as og
    from run import image_inputs

    if "image" not in case:
        return [int(t) for t in tokenizer.encode(case["prompt"])], None
    inputs = image_inputs(model, case["prompt"], og.Images.open(str(bundle / "tests" / case["image"])))
    return [int(t) for t in inputs["input_ids"].as_numpy()[0]], inputs


def check_model(bundle: Path, golden: dict, provider: str, report: Report, model_dir: Path | None = None) -> dict:
    model_dir = model_dir or bundle / "model"
    model, tokenizer = open_model(model_dir, provider, report)
    if model is None:
        return {}
    report.add("load", True, f"model loaded ({provider} provider)")
    agree = total = 0
    cases = []
    for name, label, adapter_cases in case_sets(model, model_dir, golden, report):
        for i, case in enumerate(adapter_cases, 1):
            ids, inputs = case_inputs(model, tokenizer, bundle, case)
            what = f"prompt with {case['image']} ({sum(t < 0 for t in ids)} image tokens)" if inputs is not None else "prompt"
            top1 = teacher_forced(model, case["prompt_ids"], case["expected_ids"], inputs)
            out = greedy(model, tokenizer, model_dir, case["prompt_ids"], len(case["bundle_ids"]), inputs)
            hits, summary = check_case(report, f"{label}{i}", case, golden, ids, what, top1, out)
            agree, total = agree + hits, total + len(case["expected_ids"])
            cases.append(summary | ({"adapter": name} if name else {}))
    import onnxruntime_genai as og

    return agreement(report, golden, agree, total, cases, f"{getattr(og, '__id__', 'onnxruntime-genai')} {og.__version__}")


def case_sets(model, model_dir: Path, golden: dict, report: Report):
    """checks.case_sets with onnxruntime-genai's Adapters, all loaded once; the active one (ACTIVE)
    is set on each generator."""
    from run import load_adapters

    ACTIVE[0] = None
    loaded = {}

    def load() -> list[str]:
        loaded["adapters"], names = load_adapters(model, model_dir)
        return names

    def activate(name: str | None) -> None:
        ACTIVE[0] = (loaded["adapters"], name) if name else None

    return cases_with_adapters(golden, report, load, activate)


def record(
    bundle: Path, provider: str, model_dir: Path | None = None, graph: str | None = None, first_alone: bool = False
) -> int:
    """At build time: store this bundle's greedy tokens as the values devices are compared with
    (with `graph`: under each case's "graphs" -> graph, for a second graph of the bundle; with
    `first_alone`: each prompt's first token in a run of its own, as that graph's runner does)."""
    FIRST_ALONE[0] = first_alone
    model_dir = model_dir or bundle / "model"
    path = bundle / "tests" / "golden.json"
    golden = json.loads(path.read_text(encoding="utf-8"))
    model, tokenizer = open_model(model_dir, provider, Report())
    if model is None:
        return 1
    report = Report()
    for _, _, cases in case_sets(model, model_dir, golden, report):
        for case in cases:
            _, inputs = case_inputs(model, tokenizer, bundle, case)
            ids = greedy(model, tokenizer, model_dir, case["prompt_ids"], len(case["expected_ids"]), inputs)
            rows = stepwise_logits(model, case["prompt_ids"], ids, inputs)
            near = near_ties(rows, ids, golden["tie_logit_margin"])
            if graph:
                case.setdefault("graphs", {})[graph] = {"bundle_ids": ids, "bundle_near": near}
            else:
                case["bundle_ids"], case["bundle_near"] = ids, near
    if report.failed:
        print("\n".join(f"{c['name']}: {c['detail']}" for c in report.checks if not c["ok"]), file=sys.stderr)
        return 1
    path.write_text(json.dumps(golden, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(None, __doc__, BUNDLE, ["bundle", "cpu", "cuda", "dml", "qnn"], check_model, record))
