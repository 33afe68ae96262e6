"""The runtime-independent half of this bundle's smoke test (tests/smoke_test.py imports it):
the report, the files against manifest.json, the tie rule of greedy tokens, and the command line.
Standard library only."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path


class Report:
    def __init__(self) -> None:
        self.checks: list[dict] = []

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": ok, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return ok

    @property
    def failed(self) -> int:
        return sum(not c["ok"] for c in self.checks)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def check_files(bundle: Path, report: Report) -> bool:
    try:
        files = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as e:
        return report.add("manifest", False, f"cannot read manifest.json ({e})")
    bad = 0
    for rel, want in sorted(files.items()):
        path = bundle / rel
        if not path.is_file():
            problem = "missing"
        elif path.stat().st_size < want["size"]:
            problem = f"truncated: {path.stat().st_size} of {want['size']} bytes (incomplete copy or download)"
        elif path.stat().st_size != want["size"]:
            problem = f"size {path.stat().st_size}, manifest says {want['size']}"
        elif sha256(path) != want["sha256"]:
            problem = "sha256 differs from manifest.json (the file was changed or corrupted)"
        else:
            continue
        bad += 1
        report.add(f"file {rel}", False, problem)
    return report.add("files", bad == 0, f"{len(files) - bad} of {len(files)} files match manifest.json")


def near_ties(rows, tokens: list[int], margin: float, most: int = 8) -> list[list[int]]:
    """Per step, the other tokens within `margin` logits of the chosen one (best first)."""
    near = []
    for row, token in zip(rows, tokens):
        close = [int(t) for t in row.argsort()[::-1][: most + 1] if t != token and row[token] - row[t] <= margin]
        near.append(close[:most])
    return near


def greedy_check(out: list[int], case: dict, golden: dict) -> tuple[bool, str, int | None]:
    """(passed, what happened, the step of a tie or None) for one greedy run against bundle_ids."""
    recorded = case["bundle_ids"]
    prefix = common_prefix(out, recorded)
    need = min(golden["min_greedy_prefix"], len(recorded))
    text = f"first {prefix}/{len(recorded)} tokens as recorded at build (need {need})"
    if prefix >= need:
        return True, text, None
    near = case.get("bundle_near", [])
    if prefix < len(out) and prefix < len(near) and out[prefix] in near[prefix]:
        margin = golden.get("tie_logit_margin", 0)
        return True, text + f"; token {prefix + 1} is a tie (within {margin} logits on the build host)", prefix
    if prefix < min(len(out), len(recorded)):
        text += f"; token {prefix + 1} ({out[prefix]} for {recorded[prefix]}) is no tie: a defect"
    return False, text, None


def check_case(report: Report, i: int | str, case: dict, golden: dict, ids: list[int], what: str,
               top1: list[int], out: list[int]) -> tuple[int, dict]:
    """Golden case i's checks from what the runtime made of it: the prompt's ids (`what` names the
    prompt), its argmax along the reference continuation (top1) and its greedy tokens (out).
    Returns (the top-1 hits, the case's summary)."""
    report.add(f"tokenizer {i}", ids == case["prompt_ids"],
               f"{what} encodes as the reference did" if ids == case["prompt_ids"]
               else f"got {ids[:12]}..., reference {case['prompt_ids'][:12]}...")
    expected = case["expected_ids"]
    hits = sum(a == b for a, b in zip(top1, expected))
    ok, text, tie = greedy_check(out, case, golden)
    report.add(f"greedy {i}", ok, f"{text}; top-1 vs reference {hits}/{len(expected)}; "
               f"reference greedy prefix {common_prefix(out, expected)}/{len(expected)}")
    return hits, {"prompt": case["prompt"], "top1_agreement": hits / len(expected),
                  "greedy_prefix": common_prefix(out, expected),
                  "bundle_prefix": common_prefix(out, case["bundle_ids"]), "tie": tie, "greedy_ids": out}


def case_sets(golden: dict, report: Report, load: Callable[[], list[str]], activate: Callable[[str | None], None]):
    """(adapter name or None, check label prefix, cases): the base model's cases, then each runtime
    LoRA adapter's with it active. load() loads every adapter file of the bundle once and returns
    their names; activate(name) makes one active (None: the base again, after the last)."""
    yield None, "", golden["cases"]
    if not golden.get("adapters"):
        return
    try:
        names = load()
    except Exception as e:  # a damaged or mismatched adapter file
        report.add("adapters", False, f"{type(e).__name__}: {e}")
        return
    for name, entry in golden["adapters"].items():
        if not report.add(f"adapter {name}", name in names, f"{entry['file']} loaded" if name in names
                          else f"{entry['file']} is missing (adapters found: {', '.join(names) or 'none'})"):
            continue
        activate(name)
        yield name, f"{name} ", entry["cases"]
    activate(None)


def agreement(report: Report, golden: dict, hits: int, total: int, cases: list[dict], runtime: str) -> dict:
    """The top-1 agreement over every case against the golden minimum; the smoke test's results."""
    rate = hits / total if total else 0.0
    need = golden["min_top1_agreement"]
    report.add("agreement", rate >= need, f"top-1 agreement {rate:.3f} (need >= {need}) over {total} tokens")
    return {"top1_agreement": rate, "min_top1_agreement": need, "cases": cases, "runtime": runtime}


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None, doc: str, bundle: Path, providers: list[str],
         check_model: Callable[[Path, dict, str, Report], dict], record: Callable[[Path, str], int]) -> int:
    """The smoke test's command line: `check_model(bundle, golden, provider, report)` checks the
    model with the runtime, `record(bundle, provider)` stores its greedy tokens at build time."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=bundle)
    p.add_argument("--provider", default="bundle", choices=providers,
                   help="execution provider (default: the one the bundle was built for)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # used by slmkit build
    # slmkit build: check the bundle's files, and its graphs as compiled for this machine (an NPU
    # bundle's weight-shared context binaries load on the device only)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    where = {"model_dir": args.model} if args.model else {}
    if args.record:
        return record(args.bundle, args.provider, **where)
    report = Report()
    result: dict = {}
    if check_files(args.bundle, report):
        golden = json.loads((args.bundle / "tests" / "golden.json").read_text(encoding="utf-8"))
        result = check_model(args.bundle, golden, args.provider, report, **where)
    else:
        report.add("model", False, "skipped: fix the damaged files above first")
    passed = len(report.checks) - report.failed
    print(f"{passed} passed, {report.failed} failed")
    if args.json:
        args.json.write_text(json.dumps({"checks": report.checks, "passed": passed,
                                         "failed": report.failed, "provider": args.provider, **result}, indent=2))
    return 1 if report.failed else 0
