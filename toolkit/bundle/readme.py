"""The bundle's README.md: how to run the model and check it on the device, one writer per
output format (the format's record names it)."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..graphs.ops import WASM_GRAPH
from ..plan.config import BuildPlan

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


def gguf_readme(plan: BuildPlan, origin: str, version: str) -> list[str]:
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
        f"pip install llama-cpp-python=={version} gguf numpy",
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


def web_readme(plan: BuildPlan, origin: str, version: str) -> list[str]:
    return [
        f"# {origin} for the browser",
        "",
        f"A chat page with the model: {plan.export.precision} weights run by onnxruntime-web "
        f"{version} on WebGPU, else WASM, context capped at "
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


def onnx_readme(plan: BuildPlan, origin: str, version: str) -> list[str]:
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
    return lines


def write_readme(bundle: Path, lines: list[str]) -> None:
    """README.md from the format's lines, and a section on the runtime LoRA adapters the model has."""
    folder = bundle / "model" / "adapters"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    if files:
        names = [f.stem for f in files]
        app = (
            "With llama.cpp itself: `llama-cli -m model/model.gguf --lora model/adapters/NAME.gguf`; in code, "
            "`llama_adapter_lora_init(model, path)` once and `llama_set_adapters_lora(ctx, ...)` to switch."
            if files[0].suffix == ".gguf"
            else "In an app: `adapters = og.Adapters(model)`, `adapters.load(path, name)` once, then "
            "`generator.set_active_adapter(adapters, name)` on each generator."
        )
        lines = [
            *lines,
            "",
            "## LoRA adapters",
            "The model switches between these adapters at run time, over one loaded base "
            "(model/adapters/; no adapter active: the base model):",
            "",
            *(f"- `{n}`: {f.stat().st_size / 1e6:.2f} MB" for n, f in zip(names, files, strict=True)),
            "",
            "```",
            f'python runner/run.py --adapter {names[0]} --prompt "..."',
            "python runner/run.py --chat      # a line '/adapter NAME' switches, '/adapter' alone: the base",
            "```",
            app,
            *(
                ['On Android: `runner.activeAdapter = "NAME"` on `SlmkitRunner` (null: the base model).']
                if (bundle / "runner" / "android").is_dir()
                else []
            ),
        ]
    if (bundle / "model" / WASM_GRAPH).is_file():
        lines = [*lines, *_web_graphs(bundle / "model")]
    (bundle / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _web_graphs(model: Path) -> list[str]:
    """A web bundle's two graphs and their bytes: the page downloads only the one it runs."""

    def mb(graph: str) -> str:
        return f"{sum(f.stat().st_size for f in model.glob(f'{graph}*')) / 1e6:.1f} MB"

    return [
        "",
        "## Two graphs: the page downloads one",
        f"- `model/model.onnx` (+ its .data files), {mb('model.onnx')}: int4 blocks (MatMulNBits), for WebGPU.",
        f"- `model/{WASM_GRAPH}` (+ its .data files), {mb(WASM_GRAPH)}: per-channel int8 weights with "
        "int8 activations (DynamicQuantizeMatMul), for the WASM backend, whose SIMD integer GEMM runs them "
        "(onnxruntime-web has no WASM kernel for int4 blocks). Delete it to serve WASM the int4 graph too.",
    ]


def npu_readme(plan: BuildPlan, origin: str, version: str) -> list[str]:
    from ..plan.config import SOCS

    soc, arch = SOCS[plan.npu.soc]
    return [
        f"# {origin} for the Hexagon NPU ({plan.npu.soc})",
        "",
        f"Static w4a16 graphs (int4 weights, 16-bit activations, a {plan.npu.kv_bits}-bit KV cache of "
        f"{plan.optimize.context_cap} positions) compiled to QNN context binaries for soc_model {soc} (HTP v{arch}), "
        f"run by onnxruntime-genai {version} with onnxruntime-qnn's execution provider. The prompt goes "
        f"through {plan.npu.prompt_tokens} tokens a step, generation one. Built by slmkit {__version__} "
        f"(recipe `{plan.recipe}`); manifest.json lists every file's sha256, the resolved plan and the "
        "verification results. A context binary runs on the HTP architecture it was compiled for: build "
        "again with `--set npu.soc=...` for another SoC.",
        "",
        "## Run it (Windows on Snapdragon, Linux on ARM64)",
        "```",
        f"pip install onnxruntime-genai=={version} onnxruntime-qnn numpy",
        'python runner/run.py --prompt "What is the capital of France?"',
        "```",
        "The runner registers onnxruntime-qnn's plugin execution provider with onnxruntime-genai "
        '(`og.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())`) '
        "before the model loads. An app ships the QNN libraries next to onnxruntime: libonnxruntime_providers_qnn, "
        f"libQnnHtp, libQnnHtpV{arch}Stub, libQnnHtpV{arch}Skel (the NPU side of the v{arch} HTP) and libQnnSystem "
        "(.dll on Windows), from the onnxruntime-qnn package for the device's platform or Qualcomm's QAIRT SDK. "
        "On Android, onnxruntime-genai's C API registers them "
        '(`OgaRegisterExecutionProviderLibrary("QNNExecutionProvider", path)` before the model is created); its '
        "Java API (0.18) does not, so this target has no Kotlin runner yet.",
        "",
        "## Check it on the device",
        "```",
        "python tests/smoke_test.py             # file hashes, tokenizer, tokens vs the reference",
        "```",
        "",
        "## Layout",
        "- `model/`: embeddings.onnx and positions.onnx (CPU), part*_prompt_ctx.onnx and part*_token_ctx.onnx "
        "(EPContext models) with their context binaries (*.bin), genai_config.json (decoder-pipeline), "
        "npu.json (parts, encodings' mask value, compile reports), tokenizer files",
        "- `runner/`: the generator for this target",
        "- `tests/`: golden.json (reference prompts and tokens) and smoke_test.py",
        "",
    ]
