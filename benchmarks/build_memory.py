"""Peak memory and wall time of the int4 cpu export, onnxruntime-genai builder vs slmkit's streamed
engine, on Phi-3.5-mini-shaped checkpoints with random bf16 weights (hidden 3072, 32 heads,
intermediate 8192, vocab 32064, longrope; 32 layers is the real 3.8 B size), or with --shape
phi-4-mini Phi-4-mini-shaped ones (24 query and 8 key/value heads, partial rotary 0.75, a tied
200064-token table: 3.84 B at 32 layers). Each export runs in a
child process; its peak RSS comes from the kernel (wait4). The builder child runs under an
address-space limit a little below this machine's memory, so that where it needs more it fails
with an out-of-memory error (a table row) instead of waking the OOM killer. For each model both
engines built, decode speed of both outputs is measured too (same prompt, greedy).

Then the whole `slmkit build` (hashing, export, the layer-by-layer float32 reference, bundle, and
the smoke test's child process) for each of --targets, its peak the largest sum of the RSS of the
build process and its children, sampled every 0.1 s. Random weights: the verify thresholds are
set to 0 agreement and a 1-token greedy prefix (the tokens of a random model are noise). Each whole
build runs once per --methods entry: `recipe` (the recipe's quantize.method: slmkit's calibrated
int4) and e.g. `default` (--set quantize.method=default: the builder's round-to-nearest, the fast
build). With --adapter-rank R each whole build runs a second time with a random rank-R LoRA adapter
on every projection of every layer merged into it (`--adapter`), its ratios against the same build
without it. With --baseline DIR (another slmkit checkout, e.g. `git worktree add DIR <commit>`) the same
builds of that version run first, as the anchor of the ratio columns.

    python benchmarks/build_memory.py [--layers 8,32] [--targets cpu,linux-cuda] [--methods recipe,default]
                                      [--shape phi-3.5-mini|phi-4-mini] [--adapter-rank 16]
                                      [--baseline DIR] [--work DIR] [--keep] [--skip-exports]
                                      [--set quantize.rotation=hadamard+down ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from toolkit.tiny.lora import make_lora_adapter  # noqa: E402
from toolkit.tiny.phi3 import make_random_phi3, make_random_phi4  # noqa: E402

SHAPES = {"phi-3.5-mini": make_random_phi3, "phi-4-mini": make_random_phi4}
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")

CHILD = """
import sys, time
from pathlib import Path
from toolkit.plan.config import ExportConfig, QuantizeConfig
from toolkit.families import open_checkpoint
src, work, engine = open_checkpoint(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
if engine == "stream":
    from toolkit.export.stream import export_stream
    export_stream(src.path, src.weight_files, src.config, ExportConfig(precision="int4"), QuantizeConfig(), work)
else:
    from toolkit.export.builder import run_builder
    from toolkit.quantize.choices import builder_options
    run_builder(src.path, ExportConfig(precision="int4"), builder_options(QuantizeConfig(), "int4"), work)
print("WALL", time.perf_counter() - start)
"""

DECODE = """
import sys, time, statistics
import onnxruntime_genai as og
models = [og.Model(path) for path in sys.argv[1:]]
prompt = [100 + i % 500 for i in range(32)]
speeds = [[] for _ in models]
for run in range(6):  # alternate the models, so that any drift of the machine hits both alike
    for model, out in zip(models, speeds):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=32 + 64, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        start, n = time.perf_counter(), 0
        while not gen.is_done() and n < 64:
            gen.generate_next_token(); n += 1
        out.append(n / (time.perf_counter() - start))
for out in speeds:
    print("TOKS", statistics.median(out[1:]))
"""


def run_child(code: str, args: list[str], limit_bytes: int | None) -> tuple[int, float, str]:
    """(exit status, peak RSS in bytes, output) of one child process."""

    def limit() -> None:
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
        env=env,
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, output


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            pages = int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += pages * os.sysconf("SC_PAGE_SIZE")
    return total


def whole_build(
    model: Path, target: str, out: Path, root: Path = ROOT, extra: tuple[str, ...] = ()
) -> tuple[str, float, float]:
    """(result, peak RSS of the build's process tree, wall s) of one `slmkit build` of the slmkit
    checkout at `root` (`extra`: more command-line arguments)."""
    args = [
        "build",
        "-m",
        str(model),
        "-t",
        target,
        "-o",
        str(out),
        "--set",
        "verify.min_top1_agreement=0",
        "--set",
        "verify.min_greedy_prefix=1",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(root))
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(
        [sys.executable, "-c", "from toolkit.cli import main; main()", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    if proc.returncode == 0:
        return "ok", peak, wall
    stage = next((line for line in output.splitlines() if line.startswith("Error: ")), reason(output))
    return f"failed: {stage[:70]}", peak, wall


def value(output: str, key: str) -> float | None:
    for line in output.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    return None


def reason(output: str) -> str:
    text = output.replace("\r", "\n")
    for needle in ("MemoryError", "Unable to allocate", "bad_alloc", "Cannot allocate memory", "out of memory"):
        if needle in text:
            return "out of memory"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:80] if lines else "no output"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="8,32", help="comma-separated layer counts [8,32]")
    ap.add_argument("--targets", default="cpu,linux-cuda", help="whole builds: comma-separated targets ('' for none)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="phi-3.5-mini", help="the checkpoint's shape")
    ap.add_argument("--methods", default="recipe", help="whole builds: quantize.method per build ('recipe': its own)")
    ap.add_argument("--skip-exports", action="store_true", help="only the whole builds, not the export-only rows")
    ap.add_argument("--baseline", type=Path, help="another slmkit checkout whose whole builds are the anchor")
    ap.add_argument("--work", type=Path, default=ROOT / ".slmkit-cache" / "build-memory")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and exports")
    ap.add_argument("--adapter-rank", type=int, help="whole builds: again with a merged rank-R LoRA adapter")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="whole builds: a recipe override for every build, e.g. quantize.rotation=hadamard+down",
    )
    args = ap.parse_args()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    builder_limit = int(total * 0.9)
    rows, whole = [], []
    for layers in [int(x) for x in args.layers.split(",")]:
        model = args.work / f"{args.shape}-shaped-{layers}L"
        shutil.rmtree(model, ignore_errors=True)
        t0 = time.perf_counter()
        params = SHAPES[args.shape](model, layers)
        print(
            f"{layers} layers: {params / 1e9:.2f} B parameters written in {time.perf_counter() - t0:.0f} s", flush=True
        )
        adapter = None
        if args.adapter_rank:
            adapter = args.work / f"lora-r{args.adapter_rank}-{layers}L"
            shutil.rmtree(adapter, ignore_errors=True)
            make_lora_adapter(model, adapter, PROJECTIONS, args.adapter_rank, 2.0 * args.adapter_rank, 0.01)
        built = {}
        for engine in () if args.skip_exports else ("ort-genai", "stream"):
            work = args.work / f"out-{layers}L-{engine}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            t0 = time.perf_counter()
            code, peak, output = run_child(
                CHILD, [str(model), str(work), engine], builder_limit if engine == "ort-genai" else None
            )
            wall = value(output, "WALL") or time.perf_counter() - t0
            status = "ok" if code == 0 else f"failed: {reason(output)}"
            if code == 0:
                built[engine] = work / "export"
            rows.append([layers, params, engine, status, peak, wall, None])
            print(f"  {engine}: {status}, peak RSS {peak / 1e9:.2f} GB, {wall:.0f} s", flush=True)
        if built:
            code, _, output = run_child(DECODE, [str(p) for p in built.values()], None)
            speeds = [float(line.split()[1]) for line in output.splitlines() if line.startswith("TOKS ")]
            for engine, speed in zip(built, speeds if code == 0 else [], strict=False):
                next(r for r in rows if r[0] == layers and r[2] == engine)[6] = speed
        versions = ([("baseline", args.baseline)] if args.baseline else []) + [("this", ROOT)]
        for target in [t for t in args.targets.split(",") if t]:
            for version, root in versions:
                for method in args.methods.split(","):
                    for lora in (None, adapter) if adapter else (None,):
                        name = f"{method}, rank-{args.adapter_rank} adapter" if lora else method
                        out = args.work / f"bundle-{layers}L-{target}-{version}-{name.replace(', ', '-')}"
                        shutil.rmtree(out, ignore_errors=True)
                        extra = () if method == "recipe" else ("--set", f"quantize.method={method}")
                        extra += ("--adapter", str(lora)) if lora else ()
                        extra += tuple(a for o in args.overrides for a in ("--set", o))
                        status, peak, wall = whole_build(model, target, out, root, extra)
                        whole.append([layers, params, target, f"{version}, {name}", status, peak, wall])
                        print(
                            f"  whole build {target} ({version}, {name}): {status}, "
                            f"peak RSS {peak / 1e9:.2f} GB, {wall:.0f} s",
                            flush=True,
                        )
                        if not args.keep:
                            shutil.rmtree(out, ignore_errors=True)
        if adapter and not args.keep:
            shutil.rmtree(adapter, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(model, ignore_errors=True)
            for engine in ("ort-genai", "stream"):
                shutil.rmtree(args.work / f"out-{layers}L-{engine}", ignore_errors=True)
    if rows:
        print(
            f"\nint4 cpu export (block 32, symmetric, accuracy level 4); {os.cpu_count()} cores, "
            f"{total / 1e9:.1f} GB memory; builder under a {builder_limit / 1e9:.1f} GB address-space limit\n"
        )
        print(
            "| layers | params | engine | result | peak RSS GB | wall s | decode tok/s | peak vs builder "
            "| wall vs builder | decode vs builder |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for layers, params, engine, status, peak, wall, speed in rows:
            anchor = next(r for r in rows if r[0] == layers and r[2] == "ort-genai")
            ok = anchor[3] == "ok" and status == "ok"
            print(
                f"| {layers} | {params / 1e9:.2f} B | {engine} | {status} | {peak / 1e9:.2f} | {wall:.0f} | "
                f"{f'{speed:.2f}' if speed else '-'} | {f'{peak / anchor[4]:.2f}' if ok else '-'} | "
                f"{f'{wall / anchor[5]:.2f}' if ok else '-'} | "
                f"{f'{speed / anchor[6]:.2f}' if ok and speed and anchor[6] else '-'} |"
            )
    if whole:
        print("\nwhole `slmkit build` (every stage; the peak includes the smoke test's child process); the anchor")
        print("of the ratios: the same build without the adapter, else the baseline checkout's same build, else")
        sets = "".join(f"; every build --set {o}" for o in args.overrides)
        print(f"this checkout's round-to-nearest build{sets}\n")
        print(
            "| layers | params | target | slmkit, quantize.method | result | peak RSS GB | wall s | peak vs anchor "
            "| wall vs anchor |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for layers, params, target, version, status, peak, wall in whole:
            method = version.split(", ")[1]
            candidates = (version.removesuffix(f", rank-{args.adapter_rank} adapter"), f"baseline, {method}")
            anchors = [a for a in (*candidates, "this, default") if a != version]
            anchor = next(
                (r for a in anchors for r in whole if r[:4] == [layers, params, target, a] and r[4] == "ok"), None
            )
            ratio = f"{peak / anchor[5]:.2f} | {wall / anchor[6]:.2f}" if anchor else "- | -"
            print(
                f"| {layers} | {params / 1e9:.2f} B | {target} | {version} | {status} | {peak / 1e9:.2f} | "
                f"{wall:.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
