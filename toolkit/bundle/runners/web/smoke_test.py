#!/usr/bin/env python3
"""Self-check of this web bundle in a real browser: headless Chromium driven by playwright.

1. Every file against manifest.json (size, then sha256): a truncated download is named as such.
2. The chat page's test mode (web/index.html?test), served from 127.0.0.1 with cross-origin
   isolation, on onnxruntime-web's WASM backend and, where the browser hands out an adapter, on
   WebGPU. The page checks tests/golden.json as tests/native_smoke_test.py does: the tokenizer and
   chat template in JS against the reference's ids, teacher-forced top-1 agreement, and greedy
   tokens against those recorded at build, where an earlier difference passes only as a tie.
3. The page then answers a chat message; a screenshot of it goes to tests/output/chat-<backend>.png.

Prints one line per check and a final 'N passed, M failed' line; exits 1 when anything failed.
    python tests/smoke_test.py [--provider bundle|wasm|webgpu|cpu] [--json result.json]
'bundle' runs WASM, and WebGPU when there is an adapter (a software one, SwiftShader, only for
model files up to $SLMKIT_WEB_SOFTWARE_MB, default 150 MB: it runs the GPU's work on the CPU);
'cpu' checks the same graph with onnxruntime-genai natively (tests/native_smoke_test.py).
$SLMKIT_WEB_TIMEOUT: seconds a page may take (default 900). Needs `pip install playwright` and Chromium
(`apt-get install chromium`, or SLMKIT_CHROMIUM=/path/to/chrome); playwright downloads no browser here.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BUNDLE / "web"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import native_smoke_test as native  # noqa: E402
from checks import Report, main  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# WebGPU in headless Chromium; without a GPU, SwiftShader (Vulkan on the CPU, mesa-vulkan-drivers) is the adapter.
FLAGS = ["--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--enable-features=Vulkan", "--use-angle=swiftshader"]
TIMEOUT_S = float(os.environ.get("SLMKIT_WEB_TIMEOUT", "900"))
# A software adapter (SwiftShader: WebGPU on the CPU) checks the kernels' results at a few seconds
# per token for SmolLM2-135M; larger models are left to --provider webgpu (or a machine with a GPU).
SOFTWARE_ADAPTER_MB = float(os.environ.get("SLMKIT_WEB_SOFTWARE_MB", "150"))
ADAPTER_JS = """async () => {
  const a = navigator.gpu && await navigator.gpu.requestAdapter();
  if (!a) return null;
  const i = a.info || {};
  return {name: [i.vendor, i.architecture, i.description].filter(Boolean).join(" "),
          software: Boolean(i.isFallbackAdapter || a.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe/i.test(i.architecture || ""))};
}"""


def find_browser() -> str | None:
    return os.environ.get("SLMKIT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)


@contextmanager
def served(bundle: Path):
    """The bundle on http://127.0.0.1:<free port> for as long as the block runs."""
    from serve import server

    httpd = server(root=bundle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@contextmanager
def chromium():
    """A headless Chromium from this machine (no download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_browser(), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def webgpu_adapter(browser, base: str) -> dict | None:
    """{name, software} of the browser's WebGPU adapter, None without one."""
    page = browser.new_page()
    page.goto(f"{base}/web/serve.py")  # any page of this origin: WebGPU needs a secure context
    found = page.evaluate(ADAPTER_JS)
    page.close()
    return found


def webgpu_skip(adapter: dict | None, mb: float, provider: str) -> str | None:
    """Why the WebGPU check does not run, or None: no adapter; or, in the default run, a software
    adapter and more than SOFTWARE_ADAPTER_MB of model."""
    if adapter is None:
        return "this browser hands out no WebGPU adapter"
    if provider == "bundle" and adapter["software"] and mb > SOFTWARE_ADAPTER_MB:
        return (
            f"the adapter is {adapter['name']}, WebGPU on the CPU: too slow for {mb:.0f} MB "
            "of model (run --provider webgpu to check it there anyway, or on a machine with a GPU)"
        )
    return None


def model_mb(bundle: Path) -> float:
    return sum(p.stat().st_size for p in (bundle / "model").glob("model.onnx*")) / 2**20


def run_page(browser, base: str, backend: str, out: Path, timeout_s: float = TIMEOUT_S) -> dict:
    """The page's test mode on one backend: its results, and its screenshot in `out`."""
    page = browser.new_page(viewport={"width": 900, "height": 760})
    lines: list[str] = []
    page.on("console", lambda m: lines.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{base}/web/index.html?test&nocache&backend={backend}")
        page.wait_for_function("window.slmkitResult !== undefined", timeout=timeout_s * 1000, polling=500)
        result = page.evaluate("window.slmkitResult")
    except Exception as e:  # a timeout or a crashed tab: report it with the page's own errors
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}", "timeout": "Timeout" in type(e).__name__}
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / f"chat-{backend}.png"))
    page.close()
    if lines and "error" in result:
        result["error"] += "\n    " + "\n    ".join(lines[-5:])
    return result


def check_model(bundle: Path, golden: dict, provider: str, report: Report) -> dict:
    if provider == "cpu":
        return native.check_model(bundle, golden, provider, report)
    try:
        import playwright  # noqa: F401
    except ImportError:
        report.add("browser", False, "playwright is not installed: pip install playwright")
        return {}
    if find_browser() is None:
        report.add("browser", False, "no Chromium found: apt-get install chromium (or set SLMKIT_CHROMIUM)")
        return {}
    backends, adapter, skipped = {}, None, {}
    with served(bundle) as base, chromium() as browser:
        for backend in ["wasm", "webgpu"] if provider == "bundle" else [provider]:
            if backend == "webgpu":
                adapter = webgpu_adapter(browser, base)
                skip = webgpu_skip(adapter, model_mb(bundle), provider)
                if skip and provider == "webgpu":
                    report.add("webgpu", False, skip)
                    continue
                if skip:
                    print(f"SKIP  webgpu: {skip}", flush=True)
                    skipped["webgpu"] = skip
                    continue
            software = backend == "webgpu" and adapter["software"] and provider == "bundle"
            bound = golden.get("software_adapter_s", TIMEOUT_S) if software else TIMEOUT_S
            result = run_page(browser, base, backend, bundle / "tests" / "output", bound)
            if software and result.get("timeout"):
                skipped["webgpu"] = (f"the adapter is {adapter['name']}, WebGPU on the CPU, and the page's check did "
                                     f"not finish within {bound:.0f} s: a CPU's speed, not the kernels' result (a "
                                     "hardware adapter checks it on the device)")
                print(f"SKIP  webgpu: {skipped['webgpu']}", flush=True)
                continue
            if "error" in result:
                report.add(f"{backend}: page", False, result["error"])
                continue
            for c in result["checks"]:
                report.add(f"{backend}: {c['name']}", c["ok"], c["detail"])
            answer = result["chat_answer"]
            print(f"      {backend}: asked {answer['question']!r}, the page answered {answer['reply']!r}", flush=True)
            backends[backend] = result
        version = browser.version
    if not backends:
        return {}
    worst = min(backends.values(), key=lambda r: r["top1_agreement"])
    return {
        "top1_agreement": worst["top1_agreement"],
        "min_top1_agreement": worst["min_top1_agreement"],
        "cases": worst["cases"],
        "runtime": f"onnxruntime-web in Chromium {version} ({', '.join(backends)})",
        "webgpu_adapter": adapter and adapter["name"],
        "skipped": skipped,
        "backends": {
            k: {
                "passed": r["passed"],
                "failed": r["failed"],
                "top1_agreement": r["top1_agreement"],
                "graph": r["graph"],
                "chat_answer": r["chat_answer"]["reply"],
                # per prompt: how far greedy followed the reference and the recorded tokens, and
                # the step where it left them at a tie (each backend's kernels break ties their way)
                "cases": [{k: c.get(k) for k in ("prompt", "greedy_prefix", "bundle_prefix", "tie")}
                          for c in r["cases"]],
            }
            for k, r in backends.items()
        },
    }


WASM_GRAPH = "model-wasm.onnx"  # the WASM backend's graph, where the bundle has one


def record(bundle: Path, provider: str) -> int:
    """At build time: the greedy tokens of onnxruntime-genai (native, CPU) on the same graphs: the
    WebGPU graph, and the WASM graph (its integer GEMM gives the same sums on every CPU) through a
    view of model/ whose genai_config.json names it, each prompt's first token in a run of its own
    as the page runs that graph."""
    rc = native.record(bundle, "cpu")
    if rc or not (bundle / "model" / WASM_GRAPH).is_file():
        return rc
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp)
        for f in (bundle / "model").iterdir():
            if f.name != "genai_config.json":
                (view / f.name).symlink_to(f.resolve())
        config = json.loads((bundle / "model" / "genai_config.json").read_text(encoding="utf-8"))
        config["model"]["decoder"]["filename"] = WASM_GRAPH
        (view / "genai_config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
        return native.record(bundle, "cpu", view, graph=WASM_GRAPH, first_alone=True)


if __name__ == "__main__":
    sys.exit(main(None, __doc__, BUNDLE, ["bundle", "wasm", "webgpu", "cpu"], check_model, record))
