#!/usr/bin/env python3
"""Self-check of this GGUF bundle, needing only llama-cpp-python and numpy (not slmkit).

1. Every file against manifest.json (size, then sha256): a truncated download is named as such.
2. model.gguf loads in llama.cpp, every tensor has the type the build planned (model/gguf.json),
   and llama.cpp's tokenizer encodes each golden prompt to the reference's ids.
3. Teacher-forced top-1 agreement: fed the reference's greedy continuation, the model's argmax
   must equal the reference token at >= min_top1_agreement of the positions (tests/golden.json).
4. Greedy generation: the first min_greedy_prefix tokens must equal the ones recorded when the
   bundle was built and verified (bundle_ids); an earlier difference passes only as a tie (within
   tie_logit_margin logits on the build host, bundle_near). Any other difference is a defect.
5. LoRA adapters (model/adapters/NAME.gguf): every adapter's cases, with that adapter applied, against
   the reference with the adapter merged; all in one loaded model, switching between adapters.

Prints one line per check and a final 'N passed, M failed' line; exits 1 when anything failed.
    python tests/smoke_test.py [--json result.json]
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


def open_model(bundle: Path, golden: dict, report: Report):
    """llama.cpp with a context that holds the longest case, every position's logits kept."""
    from run import load_model

    every = golden["cases"] + [c for a in golden.get("adapters", {}).values() for c in a["cases"]]
    longest = max(len(c["prompt_ids"]) + len(c["expected_ids"]) for c in every)
    try:
        return load_model(bundle / "model", n_ctx=longest + 16, logits_all=True)
    except Exception as e:  # a damaged file or an unknown architecture: report it, do not crash
        report.add("load", False, f"{type(e).__name__}: {e}")
        return None


def tensor_types(bundle: Path) -> list[str]:
    """Tensors whose type in model.gguf is not the planned one (gguf.json)."""
    from gguf import GGUFReader

    planned = json.loads((bundle / "model" / "gguf.json").read_text(encoding="utf-8"))["tensors"]
    found = {t.name: t.tensor_type.name for t in GGUFReader(bundle / "model" / "model.gguf").tensors}
    wrong = [f"{n}: {found.get(n, 'missing')} (planned {p['type']})" for n, p in planned.items() if found.get(n) != p["type"]]
    return wrong + [f"{n}: not planned" for n in found if n not in planned]


def teacher_forced(llm, prompt_ids: list[int], expected: list[int]) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids + expected[:-1])
    begin = len(prompt_ids) - 1
    return [int(t) for t in np.asarray(llm.scores[begin : begin + len(expected)]).argmax(axis=-1)]


def stepwise(llm, prompt_ids: list[int], n: int):
    """(greedy tokens, the logits before each) decoded one token at a time, as generation does."""
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    tokens, rows = [], []
    for _ in range(n):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32).copy()  # logits_all: every row kept
        tokens.append(int(row.argmax()))
        rows.append(row)
        llm.eval([tokens[-1]])
    return tokens, rows


def case_sets(llm, bundle: Path, golden: dict, report: Report):
    """checks.case_sets with the bundle's llama.cpp LoRA files, all loaded onto the one model."""
    from run import load_adapters, use_adapter

    loaded: dict = {}

    def load() -> list[str]:
        loaded.update(load_adapters(llm, bundle / "model"))
        return list(loaded)

    return cases_with_adapters(golden, report, load, lambda name: use_adapter(llm, loaded, name))


def check_model(bundle: Path, golden: dict, provider: str, report: Report) -> dict:
    from run import tokenize

    wrong = tensor_types(bundle)
    report.add("tensor types", not wrong, "every tensor as planned" if not wrong else "; ".join(wrong[:4]))
    llm = open_model(bundle, golden, report)
    if llm is None:
        return {}
    report.add("load", True, "model.gguf loaded (llama.cpp, CPU)")
    agree = total = 0
    cases = []
    for name, label, adapter_cases in case_sets(llm, bundle, golden, report):
        for i, case in enumerate(adapter_cases, 1):
            ids = tokenize(llm, case["prompt"], case.get("chat", False))
            top1 = teacher_forced(llm, case["prompt_ids"], case["expected_ids"])
            out, _ = stepwise(llm, case["prompt_ids"], len(case["bundle_ids"]))
            hits, summary = check_case(report, f"{label}{i}", case, golden, ids, "prompt", top1, out)
            agree, total = agree + hits, total + len(case["expected_ids"])
            cases.append(summary | ({"adapter": name} if name else {}))
    import llama_cpp

    return agreement(report, golden, agree, total, cases, f"llama-cpp-python {llama_cpp.__version__}")


def record(bundle: Path, provider: str) -> int:
    """At build time: store this bundle's greedy tokens as the values other machines are compared with."""
    path = bundle / "tests" / "golden.json"
    golden = json.loads(path.read_text(encoding="utf-8"))
    llm = open_model(bundle, golden, Report())
    if llm is None:
        return 1
    report = Report()
    for _, _, cases in case_sets(llm, bundle, golden, report):
        for case in cases:
            ids, rows = stepwise(llm, case["prompt_ids"], len(case["expected_ids"]))
            case["bundle_ids"], case["bundle_near"] = ids, near_ties(rows, ids, golden["tie_logit_margin"])
    if report.failed:
        print("\n".join(f"{c['name']}: {c['detail']}" for c in report.checks if not c["ok"]), file=sys.stderr)
        return 1
    path.write_text(json.dumps(golden, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(None, __doc__, BUNDLE, ["bundle", "cpu"], check_model, record))
