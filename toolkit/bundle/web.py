"""The web bundle's browser files: the runner (runners/web/) and the JavaScript packages it imports,
pinned in runners/web/package.json, fetched once with npm into slmkit's cache and copied into each
bundle's web/vendor/ (a bundle loads nothing from a CDN)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ToolchainError
from ..plan.doctor import NO_NPM, cache_root

WEB = Path(__file__).resolve().parent / "runners" / "web"
PAGE_FILES = (
    "index.html",
    "worker.mjs",
    "slmkit.mjs",
    "selftest.mjs",
    "serve.py",
    "serve.json",
    "package.json",
    "README.md",
)
# web/vendor/<name>: node_modules/<path>. ort.min.mjs runs the WebGPU (JSEP) and WASM backends from
# one .wasm. The two LICENSE files travel with the files (onnxruntime-web ships none: MIT, package.json).
VENDOR = {
    "ort.min.mjs": "onnxruntime-web/dist/ort.min.mjs",
    "ort-wasm-simd-threaded.jsep.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.jsep.mjs",
    "ort-wasm-simd-threaded.jsep.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.jsep.wasm",
    "tokenizers.min.mjs": "@huggingface/tokenizers/dist/tokenizers.min.mjs",
    "jinja.mjs": "@huggingface/jinja/dist/index.js",
    "LICENSE.tokenizers": "@huggingface/tokenizers/LICENSE",
    "LICENSE.jinja": "@huggingface/jinja/LICENSE",
}


def packages() -> dict[str, str]:
    """The pinned npm packages and versions."""
    return json.loads((WEB / "package.json").read_text(encoding="utf-8"))["dependencies"]


def _modules() -> Path:
    digest = hashlib.sha256((WEB / "package.json").read_bytes()).hexdigest()[:12]
    return cache_root() / "web" / digest / "node_modules"


def vendored() -> bool:
    """Whether the pinned packages are in the cache (no npm needed then)."""
    return all((_modules() / path).is_file() for path in VENDOR.values())


def node_modules() -> Path:
    """The pinned packages, installed with npm into the cache the first time."""
    modules = _modules()
    if vendored():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise ToolchainError(NO_NPM)
    modules.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=modules.parent.parent))
    try:
        shutil.copy2(WEB / "package.json", tmp / "package.json")
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ToolchainError(f"npm install of {packages()} failed:\n{(proc.stdout + proc.stderr).strip()[-2000:]}")
        shutil.rmtree(modules.parent, ignore_errors=True)
        tmp.replace(modules.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return modules


def write_web(bundle: Path) -> None:
    """web/: the chat page, the runner module, the server, package.json, README and vendor/."""
    web = bundle / "web"
    (web / "vendor").mkdir(parents=True)
    for name in PAGE_FILES:
        shutil.copy2(WEB / name, web / name)
    modules = node_modules()
    for name, path in VENDOR.items():
        shutil.copy2(modules / path, web / "vendor" / name)


def add_page(bundle: Path) -> None:
    """web/, and the browser's smoke test as tests/smoke_test.py: the host runner's native smoke
    test of the same graph (which records the tokens) becomes tests/native_smoke_test.py."""
    write_web(bundle)
    tests = bundle / "tests"
    (tests / "smoke_test.py").replace(tests / "native_smoke_test.py")
    shutil.copy2(WEB / "smoke_test.py", tests / "smoke_test.py")
