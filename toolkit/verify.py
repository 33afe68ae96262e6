"""Golden tokens from the PyTorch reference, and the bundle's own smoke test run on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import VerifyConfig
from .progress import bar, waiting

# What a host check on the CPU provider cannot tell about a GPU bundle.
DEVICE_ONLY = {
    "cuda": "greedy tokens with the CUDA provider's fp16/int4 kernels (onnxruntime-genai-cuda on an NVIDIA GPU)",
    "dml": "greedy tokens with the DirectML provider (onnxruntime-genai-directml on Windows)",
}
ARM_NOTE = "the ARM64 int4 kernels of the device (this host ran the same graph on x86-64 CPU kernels)"


CONTENT = "{content}"


def prompt_format(tokenizer) -> str | None:
    """The chat template rendered for one user turn, with '{content}' where the message goes,
    for runners without a template engine (Kotlin, Objective-C). None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CONTENT}], add_generation_prompt=True, tokenize=False
    )
    return text if text.count(CONTENT) == 1 else None


def reference_cases(source: Path, weight_files: tuple[str, ...], cfg: VerifyConfig,
                    eos: list[int]) -> tuple[list[dict[str, Any]], str | None]:
    """Greedy continuations of the recipe's prompts by the float32 PyTorch model, one decoder
    layer in memory at a time (toolkit/reference.py), all prompts in one batch; and the
    single-turn prompt format. Chat prompts go through the checkpoint's chat template."""
    import torch

    from .reference import layerwise_model

    passes = _Passes()
    tokenizer, model = layerwise_model(source, weight_files, on_layer=passes)
    fmt = prompt_format(tokenizer)
    texts = [(p, False) for p in cfg.prompts] + [(fmt.replace(CONTENT, p), True) for p in cfg.chat_prompts if fmt]
    # The template already holds any BOS text; the runtime's tokenizer adds none to it either.
    prompts = [tokenizer(text, add_special_tokens=not chat).input_ids for text, chat in texts]
    width = max(len(ids) for ids in prompts)
    pad = eos[0] if eos else 0
    batch = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])  # left-padded
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    total = model.config.num_hidden_layers * cfg.new_tokens  # one pass over the layers per new token
    with torch.no_grad(), bar(f"reference ({len(prompts)} prompts)", total, "layer passes") as passes.bar:
        out = model.generate(batch, attention_mask=mask, max_new_tokens=cfg.new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad)
    cases = []
    for (text, chat), ids, row in zip(texts, prompts, out):
        cont = [int(t) for t in row[width:]]
        # generate() pads after the first EOS; keep the continuation up to and including it.
        stop = next((i for i, t in enumerate(cont) if t in eos), len(cont) - 1)
        cases.append({"prompt": text, "chat": chat, "prompt_ids": [int(t) for t in ids],
                      "expected_ids": cont[: stop + 1]})
    return cases, fmt


class _Passes:
    """Progress of the layer-by-layer reference: called after each decoder layer ran."""

    bar = None

    def __call__(self) -> None:
        if self.bar is not None:
            self.bar.advance()


def write_golden(bundle: Path, cases: list[dict[str, Any]], cfg: VerifyConfig) -> None:
    golden = {
        "schema_version": 1,
        "reference": {"engine": f"transformers {metadata.version('transformers')}", "dtype": "float32",
                      "weights": "one decoder layer at a time"},
        "min_top1_agreement": cfg.min_top1_agreement,
        "min_greedy_prefix": cfg.min_greedy_prefix,
        "tie_logit_margin": cfg.tie_logit_margin,
        "cases": cases,
    }
    (bundle / "tests" / "golden.json").write_text(json.dumps(golden, indent=2) + "\n", encoding="utf-8")


def write_prompt_format(bundle: Path, fmt: str | None) -> None:
    if fmt is not None:
        data = {"single_turn": fmt, "placeholder": CONTENT}
        (bundle / "model" / "prompt_format.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def record_bundle_tokens(bundle: Path, provider: str) -> str | None:
    """Let the bundle's smoke test record its own greedy tokens into golden.json (the values a
    device run is compared with). Returns the failure output, or None."""
    with waiting("the bundle's greedy tokens (child process)"):
        proc = subprocess.run(
            [sys.executable, str(bundle / "tests" / "smoke_test.py"), "--provider", provider, "--record"],
            capture_output=True, text=True,
        )
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def host_provider(execution_provider: str) -> str:
    """The provider this machine runs the bundle with: its own when it is the CPU, else the CPU."""
    return "bundle" if execution_provider == "cpu" else "cpu"


def run_smoke_test(bundle: Path, provider: str) -> tuple[dict[str, Any], str]:
    """Run the bundle's own tests/smoke_test.py in a child process; return (results, its output)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        with waiting("smoke test (child process)"):
            proc = subprocess.run(
                [sys.executable, str(bundle / "tests" / "smoke_test.py"), "--provider", provider, "--json",
                 str(result_path)],
                capture_output=True, text=True,
            )
        output = proc.stdout + proc.stderr
        if not result_path.is_file():
            return {"passed": 0, "failed": 1, "checks": [], "error": f"smoke test crashed (exit {proc.returncode})"}, output
        return json.loads(result_path.read_text(encoding="utf-8")), output


def pending_on_device(execution_provider: str, runner: str) -> list[str]:
    pending = []
    if execution_provider in DEVICE_ONLY:
        pending.append(DEVICE_ONLY[execution_provider])
    if runner in ("android", "ios"):
        pending.append(ARM_NOTE)
        pending.append(f"the {runner} runner and its instrumented smoke test on a device")
    return pending


def summarize(result: dict[str, Any], provider: str, execution_provider: str, runner: str) -> dict[str, Any]:
    """The verification section of manifest.json."""
    ran_on = "cpu" if provider == "cpu" or execution_provider == "cpu" else execution_provider
    return {
        "host": {
            "provider": ran_on,
            "passed": result.get("passed", 0),
            "failed": result.get("failed", 1),
            "top1_agreement": result.get("top1_agreement"),
            "min_top1_agreement": result.get("min_top1_agreement"),
            "cases": [
                {k: c[k] for k in ("prompt", "top1_agreement", "greedy_prefix")} for c in result.get("cases", [])
            ],
        },
        "pending_on_device": pending_on_device(execution_provider, runner),
    }


def on_device(provider: str, execution_provider: str) -> bool:
    """Whether a run with `provider` used a GPU bundle's own provider: a check only its device makes."""
    return execution_provider in DEVICE_ONLY and provider in ("bundle", execution_provider)


def describe_device(execution_provider: str) -> str | None:
    """The GPU the provider will run on, as nvidia-smi names it (CUDA), for the manifest;
    None when no NVIDIA GPU answers."""
    if execution_provider != "cuda":
        return "a DirectML GPU"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [r.split(", ") for r in proc.stdout.splitlines() if r.count(", ") == 2]
    return "; ".join(f"{name} (driver {driver}, {mem})" for name, driver, mem in rows) or None


def require_device(path: Path, execution_provider: str, package: str, version: str) -> str:
    """Refuse a run on the bundle's GPU provider where its runtime package (the plan's) or its GPU
    is missing (it would fail for a reason that says nothing about the bundle); else the device's
    description."""
    from .errors import VerificationError

    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        raise VerificationError(
            f"Checking '{path}' with the {execution_provider} provider needs {package}, which this Python "
            f"does not have: on the GPU machine, `pip install {package}=={version} numpy` (the version "
            f"the bundle was built with), then run this again. Without the GPU, `slmkit verify {path}` runs the "
            "same graph on the CPU provider.") from None
    device = describe_device(execution_provider)
    if device is None:
        raise VerificationError(f"Checking '{path}' with the cuda provider needs an NVIDIA GPU, and nvidia-smi "
                                "found none here: run it on the GPU machine (the driver's nvidia-smi on PATH).")
    return device


def run_record(result: dict[str, Any]) -> dict[str, Any]:
    """What manifest.json keeps of one smoke-test run on a device (emulated or real): checks,
    top-1 agreement and, per prompt, the greedy prefixes and the tie if there was one."""
    return {
        "passed": result.get("passed", 0),
        "failed": result.get("failed", 1),
        "top1_agreement": result.get("top1_agreement"),
        "min_top1_agreement": result.get("min_top1_agreement"),
        "cases": [{k: c.get(k) for k in ("prompt", "top1_agreement", "greedy_prefix", "bundle_prefix", "tie")}
                  for c in result.get("cases", [])],
        **({"error": result["error"]} if "error" in result else {}),
    }


def record_device(manifest: dict[str, Any], execution_provider: str, result: dict[str, Any], device: str) -> None:
    """Keep a GPU run of the smoke test in manifest.json; when it passed, the provider's kernels
    leave the pending list as checked on that device."""
    verification = manifest.get("verification") or {}
    manifest["verification"] = verification
    run = {"device": device, "runtime": result.get("runtime"), **run_record(result)}
    verification.setdefault("device", {})[execution_provider] = run
    note = DEVICE_ONLY[execution_provider]
    pending = verification.setdefault("pending_on_device", [])
    checked = [c for c in verification.get("checked_on_device", []) if not c.startswith(note)]
    if run["failed"] == 0:
        if note in pending:
            pending.remove(note)
        checked.append(f"{note}: the smoke test passed on {device} with {run['runtime']}, "
                       f"top-1 agreement {run['top1_agreement']:.3f}")
    elif note not in pending:
        pending.append(note)
    verification["checked_on_device"] = checked


def verify_bundle(path: Path, provider: str | None = None) -> tuple[dict[str, Any], str]:
    """`slmkit verify`: the plan's settings read back from the graph, then the bundle's smoke test.
    A GPU bundle run with its own provider (on its GPU) keeps the run in its manifest.
    Returns (summary, smoke test output); raises VerificationError naming what failed."""
    from .bundle import read_manifest, require_bundle, save_manifest
    from .config import plan_from_dict
    from .errors import VerificationError
    from .optimize import setting_mismatches

    require_bundle(path)
    try:
        manifest = read_manifest(path)
        plan = plan_from_dict(manifest["plan"], f"{path}/manifest.json")
    except (ValueError, KeyError) as e:
        raise VerificationError(f"{path}/manifest.json is damaged ({type(e).__name__}: {e}).") from None
    ep = plan.export.execution_provider
    provider = provider or host_provider(ep)
    version = manifest.get("dependencies", {}).get("onnxruntime-genai", "0.18.0")
    device = require_device(path, ep, plan.runtime.package, version) if on_device(provider, ep) else None
    result, output = run_smoke_test(path, provider)
    problems = []
    if result.get("failed", 1) == 0:
        problems = setting_mismatches(path / "model", plan)
    summary = summarize(result, provider, ep, plan.runtime.runner)
    summary["host"]["settings_mismatches"] = problems
    if device:
        record_device(manifest, ep, result, device)
        save_manifest(path, manifest)
        summary["pending_on_device"] = manifest["verification"]["pending_on_device"]
        summary["checked_on_device"] = manifest["verification"]["checked_on_device"]
    if result.get("failed", 1) or problems:
        failed = [c for c in result.get("checks", []) if not c["ok"]]
        lines = [f"{c['name']}: {c['detail']}" for c in failed] + problems
        if not lines:
            lines = [result.get("error", "the smoke test failed") + "\n" + output.strip()]
        raise VerificationError(f"Bundle '{path}' failed verification:\n  - " + "\n  - ".join(lines))
    return summary, output
