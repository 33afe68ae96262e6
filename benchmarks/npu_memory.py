"""The snapdragon build at the real sizes: Phi-3.5-mini- and Phi-4-mini-shaped checkpoints with random
bf16 weights (32 layers: 3.8 B), built by the target's recipe as shipped (calibrated w4a16, weight
sharing, and the per-graph copies the x86 check loads), export and context binary generation in a
child process whose whole process tree (the QNN compiler's children included) is sampled every
0.1 s. Prints the peak, the wall time, the parts and each compile's time and peak. The bundle's
smoke test is not run at this size: the x86 HTP backend is a simulator (SmolLM2's 30 layers take
~16 s a token there), and the graphs are the ones the tiny and SmolLM2 builds check.

    python benchmarks/npu_memory.py [--shape phi-3.5-mini|phi-4-mini] [--layers 32] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.build_memory import SHAPES, tree_rss  # noqa: E402

CHILD = """
import sys, time
from pathlib import Path
from toolkit.build import plan_build
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
src = open_checkpoint(sys.argv[1])
plan = plan_build(src, None, "snapdragon", ())
start = time.perf_counter()
out = format_of(plan).export(src, plan, Path(sys.argv[2]), lambda m: print(m, flush=True), "")
print("export_s", time.perf_counter() - start, flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="phi-3.5-mini", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--work", type=Path, default=ROOT / ".slmkit-cache" / "npu-memory")
    args = ap.parse_args()
    model = args.work / f"{args.shape}-{args.layers}"
    if not (model / "config.json").is_file():
        print(f"making a random {args.shape}-shaped checkpoint with {args.layers} layers", flush=True)
        SHAPES[args.shape](model, args.layers)
    work = args.work / f"build-{args.shape}-{args.layers}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(model), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    lines = []
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if "LIBNATIVE" not in line and line.strip():
                print(line, end="", flush=True)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    lines += proc.stdout.read().splitlines(keepends=True)
    if proc.returncode != 0:
        print("".join(lines[-20:]))
        raise SystemExit(f"the build failed (exit {proc.returncode})")
    report = json.loads((work / "export" / "npu.json").read_text())
    bundle = sum(p.stat().st_size for p in (work / "export").iterdir())
    print()
    print(f"| {args.shape}, {args.layers} layers | wall | peak (process tree) | bundle | parts |")
    print("|---|---|---|---|---|")
    parts = len(report["parts"])
    print(f"| snapdragon recipe | {wall / 60:.1f} min | {peak / 1e9:.2f} GB | {bundle / 1e9:.2f} GB | {parts} |")
    print()
    print("| part | weights MB | compile s (shared) | compiler peak MB | x86 check copy: s, peak MB |")
    print("|---|---|---|---|---|")
    for p in report["parts"]:
        c, check = p["compile"], p["compile"].get("check", {})
        what = "lm_head" if p["head"] else f"layers {p['layers'][0]}-{p['layers'][-1]}"
        print(
            f"| {p['index']} ({what}) | {p['weight_bytes'] / 1e6:.0f} | {c['seconds']:.0f} | {c['peak_mb']} | "
            f"{check.get('seconds', 0):.0f}, {check.get('peak_mb', '-')} |"
        )


if __name__ == "__main__":
    main()
