"""Lay out the bundle a device receives, and write manifest.json (hashes, plan, versions, results)."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import VerificationError
from ..plan.config import BuildPlan
from ..source.checkpoint import SourceModel, eos_sources, sha256_file

SCHEMA_VERSION = 1
RUNNERS = Path(__file__).resolve().parent / "runners"
DEPENDENCIES = ("onnxruntime-genai", "onnxruntime", "onnx", "transformers", "torch", "tokenizers", "numpy")
MODEL_FILES_SKIPPED = {"builder-cache"}
RUN_OUTPUT = "tests/output/"  # what a smoke test run writes (the web page's screenshots): not the bundle's


def assemble(model_dir: Path, bundle: Path, plan: BuildPlan) -> None:
    """model/ from the export, runner/ and tests/ from the runner templates of the target."""
    shutil.move(str(model_dir), str(bundle / "model"))
    runner = bundle / "runner"
    runner.mkdir()
    kind = plan.runtime.runner
    host = "llama-cpp" if kind == "llama-cpp" else "python"  # the runner this machine checks the bundle with
    shutil.copy2(RUNNERS / host / "run.py", runner / "run.py")
    if kind not in ("python", "llama-cpp", "web"):
        shutil.copytree(RUNNERS / kind, runner / kind)
    tests = bundle / "tests"
    tests.mkdir()
    shutil.copy2(RUNNERS / "common" / "checks.py", tests / "checks.py")
    if kind == "web":  # checked in a browser; the native check of the same graph records the tokens
        from .web import write_web

        write_web(bundle)
        shutil.copy2(RUNNERS / "web" / "smoke_test.py", tests / "smoke_test.py")
        shutil.copy2(RUNNERS / host / "smoke_test.py", tests / "native_smoke_test.py")
    else:
        shutil.copy2(RUNNERS / host / "smoke_test.py", tests / "smoke_test.py")


def file_table(bundle: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in the bundle except manifest.json, by relative POSIX path."""
    table = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel == "manifest.json" or "__pycache__" in rel or rel.startswith(RUN_OUTPUT):
            continue
        table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def dependency_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in DEPENDENCIES}


def write_manifest(
    bundle: Path,
    plan: BuildPlan,
    source: SourceModel,
    source_files: dict[str, Any],
    verification: dict[str, Any] | None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "toolkit": {"name": "slmkit", "version": __version__},
        "dependencies": dependency_versions(),
        "source": {**source.summary(), "files": source_files},
        "plan": plan.to_dict(),
        "runtime": {
            "package": plan.runtime.package,
            "version": runtime_version(plan.runtime.package),
            "execution_provider": plan.export.execution_provider,
            "runner": plan.runtime.runner,
        },
        "files": file_table(bundle),
        "verification": verification,
        "quality": quality,
    }
    manifest["source"].pop("path")  # machine-specific; `origin` says what was built
    stops = stop_ids(bundle / "model")
    manifest["source"]["eos_token_id"] = {**eos_sources(source.path), "stops_on": stops}
    save_manifest(bundle, manifest)
    return manifest


def runtime_version(package: str) -> str:
    """The installed version of the runtime package (onnxruntime-genai's for its -cuda/-directml
    builds, which this machine checks with the CPU package)."""
    if package == "onnxruntime-web":  # the npm package in web/vendor/, pinned in web/package.json
        from .web import packages

        return packages()[package]
    name = "llama-cpp-python" if package == "llama-cpp-python" else "onnxruntime-genai"
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def stop_ids(model_dir: Path) -> list[int] | int:
    """The id(s) the bundle stops on, as its runtime's settings file has them: genai_config.json's
    eos_token_id, or a GGUF bundle's gguf.json."""
    if (model_dir / "gguf.json").is_file():
        return json.loads((model_dir / "gguf.json").read_text(encoding="utf-8"))["stop_ids"]
    return json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]


def save_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def require_bundle(path: Path) -> None:
    """Commands that take a bundle refuse any other folder the same way."""
    if not (path / "manifest.json").is_file():
        raise VerificationError(f"'{path}' is not an slmkit bundle: it has no manifest.json.")


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


_INSTALL = {
    "onnxruntime-genai": "pip install onnxruntime-genai=={v} numpy",
    "onnxruntime-genai-cuda": "pip install onnxruntime-genai-cuda=={v} numpy",
    "onnxruntime-genai-directml": "pip install onnxruntime-genai-directml=={v} numpy",
}
_DEVICE = {
    "android": "On the phone: see runner/android/README.md (Gradle dependency, `adb push` of model/, "
    "the Kotlin runner and its instrumented smoke test).",
    "ios": "On the iPhone/iPad: see runner/ios/README.md (CocoaPods dependency, adding model/ to the "
    "app, the Objective-C runner (callable from Swift) and its XCTest smoke test).",
}


def _gguf_readme(plan: BuildPlan, origin: str) -> list[str]:
    return [
        f"# {origin} for {plan.target}",
        "",
        "One GGUF file (`model/model.gguf`: weights, tokenizer and chat template) for llama.cpp, Ollama "
        f"and LM Studio, {plan.quantize.method} {plan.export.precision} weights (`model/gguf.json` lists "
        f"each tensor's type), context capped at {plan.optimize.context_cap} tokens in the Modelfile. Built "
        f"by slmkit {__version__} (recipe `{plan.recipe}`); manifest.json lists every file's sha256, the "
        "resolved plan and the verification results.",
        "",
        "## Run it",
        "```",
        "cd model && ollama create my-model -f Modelfile && ollama run my-model   # Ollama",
        "llama-cli -m model/model.gguf -cnv                                        # llama.cpp",
        f"pip install llama-cpp-python=={runtime_version(plan.runtime.package)} gguf numpy",
        'python runner/run.py --prompt "What is the capital of France?"            # greedy; --chat, --temperature',
        "```",
        "LM Studio: load `model/model.gguf`. The Modelfile decodes greedily (temperature 0) and stops at "
        "every end-of-turn token of the checkpoint.",
        "",
        "## Check it on the device",
        "```",
        "python tests/smoke_test.py             # file hashes, tensor types, tokenizer, tokens vs the reference",
        "```",
        "",
        "## Layout",
        "- `model/`: model.gguf, Modelfile (Ollama), gguf.json (tensor types, context cap, stop ids)",
        "- `runner/`: a generator on llama-cpp-python",
        "- `tests/`: golden.json (reference prompts and tokens), smoke_test.py and checks.py",
        "",
    ]


def _web_readme(plan: BuildPlan, origin: str) -> list[str]:
    return [
        f"# {origin} for the browser",
        "",
        f"A chat page with the model: {plan.export.precision} weights run by onnxruntime-web "
        f"{runtime_version(plan.runtime.package)} on WebGPU, else WASM, context capped at "
        f"{plan.optimize.context_cap} tokens. Built by slmkit {__version__} (recipe `{plan.recipe}`); "
        "manifest.json lists every file's sha256, the resolved plan and the verification results.",
        "",
        "## Run it",
        "```",
        "python web/serve.py                     # then open http://127.0.0.1:8000/web/",
        "```",
        "web/README.md: other servers, the page's options, and the ES module to embed in a site.",
        "",
        "## Check it",
        "```",
        "pip install playwright                  # and a Chromium: apt-get install chromium",
        "python tests/smoke_test.py              # the page's self-test in headless Chromium (WASM, WebGPU)",
        "```",
        "",
        "## Layout",
        "- `web/`: index.html (the chat page), slmkit.mjs (the runner), vendor/ (onnxruntime-web, tokenizer, "
        "jinja), serve.py",
        "- `model/`: model.onnx and its weights in files of at most "
        f"{plan.optimize.external_data_chunk_mb or 'any'} MB, genai_config.json, tokenizer files",
        "- `tests/`: golden.json, smoke_test.py (browser), native_smoke_test.py (onnxruntime-genai: "
        "`--provider cpu`); screenshots of a run go to tests/output/",
        "- `runner/run.py`: the same model with onnxruntime-genai, outside a browser",
        "",
    ]


def write_readme(bundle: Path, plan: BuildPlan, origin: str) -> None:
    own = {"llama-cpp": _gguf_readme, "web": _web_readme}.get(plan.runtime.runner)
    if own is not None:
        (bundle / "README.md").write_text("\n".join(own(plan, origin)), encoding="utf-8")
        return
    version = metadata.version("onnxruntime-genai")
    install = _INSTALL.get(plan.runtime.package, "pip install onnxruntime-genai=={v} numpy").format(v=version)
    lines = [
        f"# {origin} for {plan.target}",
        "",
        f"{plan.export.precision} weights for the {plan.export.execution_provider} execution provider, "
        f"context capped at {plan.optimize.context_cap} tokens. Built by slmkit {__version__} "
        f"(recipe `{plan.recipe}`); manifest.json lists every file's sha256, the resolved plan and the "
        "verification results.",
        "",
        "## Run it",
        "```",
        install,
        'python runner/run.py --prompt "What is the capital of France?"',
        "python runner/run.py --chat            # multi-turn; sampling: --temperature 0.7 --top-p 0.9",
        "```",
        "",
        "## Check it on the device",
        "```",
        "python tests/smoke_test.py             # file hashes, tokenizer, tokens vs the reference",
        "```",
    ]
    if plan.export.execution_provider != "cpu":
        lines += ["", "Without the GPU, `--provider cpu` runs the same graph on the CPU (slower, same tokens)."]
    if plan.runtime.runner in _DEVICE:
        lines += ["", _DEVICE[plan.runtime.runner]]
    lines += [
        "",
        "## Layout",
        "- `model/`: model.onnx, model.onnx.data, genai_config.json, tokenizer files",
        "- `runner/`: the generator for this target",
        "- `tests/`: golden.json (reference prompts and tokens) and smoke_test.py",
        "",
    ]
    (bundle / "README.md").write_text("\n".join(lines), encoding="utf-8")
