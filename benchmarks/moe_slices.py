"""Phi-3.5-MoE on real-shaped slices: the whole `slmkit build --target cpu` (streamed export with
int4 experts, the layer-by-layer float32 reference, bundle, smoke test) on random bf16 checkpoints
of Phi-3.5-MoE-instruct's shape (hidden 4096, 32 heads, 8 KV heads, 16 experts, expert MLP 6400,
vocab 32064, longrope, biases; about 1.3 B parameters a layer) with 1, 2 and 4 layers, next to the
onnxruntime-genai builder on the same checkpoints (its failure message is a result). Peak RSS is
the largest sum over the build's process tree (sampled every 0.1 s); decode tok/s is greedy on the
bundle; the last row extrapolates to the real 32 layers (peak, time, size and time per token
linear in the layers, from the first and last slice). Random weights: verify thresholds 0 agreement
and a 1-token prefix.

Each slice is built once per --methods entry: `recipe` (the recipe's quantize.method: slmkit's
calibrated gptq, experts calibrated on the tokens routed to them) and e.g. `default` (the
round-to-nearest fast build, --set quantize.method=default).

    python benchmarks/moe_slices.py [--layers 1,2,4] [--methods recipe,default] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from build_memory import CHILD, DECODE, reason, run_child, value, whole_build  # noqa: E402

from toolkit.plan.doctor import total_memory_bytes  # noqa: E402
from toolkit.tiny.phimoe import make_random_phimoe  # noqa: E402

LAYER_PARAMS = 1.30e9
FAST_VERIFY = ("--set", "verify.new_tokens=4")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,2,4")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-moe")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--methods", default="recipe", help="quantize.method per build ('recipe': its own)")
    args = parser.parse_args()
    layers = [int(n) for n in args.layers.split(",")]
    need = sum(n * LAYER_PARAMS * (2 + 0.65) for n in layers) + 2e9  # bf16 checkpoint + int4 bundle
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    if free < need:
        sys.exit(f"{args.work}: {free / 1e9:.1f} GB free, the slices need about {need / 1e9:.1f} GB.")
    rows = []
    methods = args.methods.split(",")
    for n in layers:
        model = args.work / f"phimoe-{n}L"
        shutil.rmtree(model, ignore_errors=True)
        params = make_random_phimoe(model, n)
        for method in methods:
            out = args.work / f"phimoe-{n}L-cpu-{method}"
            shutil.rmtree(out, ignore_errors=True)
            method_set = () if method == "recipe" else ("--set", f"quantize.method={method}")
            status, peak, wall = whole_build(model, "cpu", out, extra=FAST_VERIFY + method_set)
            size = folder_bytes(out) if status == "ok" else 0
            toks = None
            if status == "ok":
                _, _, decoded = run_child(DECODE, [str(out / "model")], None)
                toks = value(decoded, "TOKS")
            rows.append([n, params, method, status, peak, wall, size, toks, "-", 0])
            print(f"{n} layers, {method}: {status}, {peak / 1e9:.2f} GB, {wall:.0f} s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(args.work / "builder", ignore_errors=True)
        (args.work / "builder").mkdir()
        code, b_peak, b_out = run_child(
            CHILD, [str(model), str(args.work / "builder"), "builder"], int(total_memory_bytes() * 0.9)
        )
        raised = [line.split("builder raised ", 1)[1] for line in b_out.splitlines() if "builder raised " in line]
        builder = "ok" if code == 0 else f"failed: {raised[-1] if raised else reason(b_out)}"
        for row in rows[-len(methods) :]:
            row[8:] = [builder, b_peak]
        print(f"{n} layers: builder {builder}", flush=True)
        if not args.keep:
            for path in (model, args.work / "builder"):
                shutil.rmtree(path, ignore_errors=True)
    if not args.keep and not any(args.work.iterdir()):
        args.work.rmdir()
    print()
    print(
        "| layers | parameters | quantize.method | slmkit build | peak RSS | wall | bundle | decode "
        "| builder (same checkpoint) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, params, method, status, peak, wall, size, toks, builder, b_peak in rows:
        speed = f"{toks:.2f} tok/s" if toks else "-"
        print(
            f"| {n} | {params / 1e9:.2f} B | {method} | {status} | {peak / 1e9:.2f} GB | {wall:.0f} s "
            f"| {size / 1e9:.2f} GB | {speed} | {builder[:110]} (peak {b_peak / 1e9:.2f} GB) |"
        )
    for method in methods:
        ok = [r for r in rows if r[2] == method and r[3] == "ok"]
        if len(ok) < 2:
            continue
        first, last = ok[0], ok[-1]

        def at_32(col: int, value=lambda x: x, first=first, last=last) -> float:  # linear in the layers
            slope = (value(last[col]) - value(first[col])) / (last[0] - first[0])
            return value(first[col]) + slope * (32 - first[0])

        ms = at_32(7, lambda toks: 1 / toks) if first[7] and last[7] else None
        print(
            f"| 32 (extrapolated) | {32 * LAYER_PARAMS / 1e9 + 0.26:.1f} B | {method} | - | {at_32(4) / 1e9:.1f} GB "
            f"| {at_32(5):.0f} s | {at_32(6) / 1e9:.1f} GB | {f'{1 / ms:.1f} tok/s' if ms else '-'} | - |"
        )


if __name__ == "__main__":
    main()
