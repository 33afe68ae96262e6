"""`slmkit bench`: time to first token, prefill and decode speed, peak memory, and decode as a
fraction of the memory-bandwidth roofline of the memory the weights sit in (every weight byte is read
once per token): this machine's RAM, or the GPU's memory for a run on the CUDA provider."""

from __future__ import annotations

import json
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputModelError
from .memory_probe import PeakMemory
from .quality import model_bytes

MB = 1 << 20


@dataclass(frozen=True)
class BenchResult:
    bundle: str
    provider: str
    prompt_tokens: int
    new_tokens: int
    runs: int
    ttft_s: float
    prefill_tok_s: float
    decode_tok_s: float
    decode_tok_s_min: float
    decode_tok_s_max: float
    peak_rss_mb: float
    weight_bytes: int
    load_s: float  # opening the model (sessions, prepacking), not the runtime's import
    # Peak resident memory above what the process held before it loaded the model (the imported
    # runtime), while loading and while generating; None where the OS cannot reset a peak (not Linux).
    load_peak_mb: float | None
    run_peak_mb: float | None
    bandwidth_gb_s: float | None  # None: a GPU run where no CUDA PyTorch could time a copy
    bandwidth_of: str = "RAM"

    @property
    def roofline_tok_s(self) -> float | None:
        return self.bandwidth_gb_s * 1e9 / self.weight_bytes if self.bandwidth_gb_s else None

    @property
    def roofline_fraction(self) -> float | None:
        return self.decode_tok_s / self.roofline_tok_s if self.roofline_tok_s else None

    def to_dict(self) -> dict:
        return asdict(self) | {
            "roofline_tok_s": self.roofline_tok_s,
            "roofline_fraction": self.roofline_fraction,
            "load_peak_x_weights": of_weights(self.load_peak_mb, self.weight_bytes),
            "run_peak_x_weights": of_weights(self.run_peak_mb, self.weight_bytes),
        }

    def table(self) -> str:
        rows = [
            ("time to first token", f"{self.ttft_s * 1000:.0f} ms ({self.prompt_tokens}-token prompt)"),
            ("prefill", f"{self.prefill_tok_s:.1f} tok/s"),
            (
                "decode (median)",
                f"{self.decode_tok_s:.1f} tok/s (min {self.decode_tok_s_min:.1f}, "
                f"max {self.decode_tok_s_max:.1f}, {self.runs} runs of {self.new_tokens} tokens)",
            ),
            ("load", f"{self.load_s:.2f} s"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MB (the process, runtime included)"),
            ("  while loading", memory_line(self.load_peak_mb, self.weight_bytes)),
            ("  loading + generating", memory_line(self.run_peak_mb, self.weight_bytes)),
            ("weights read per token", f"{self.weight_bytes / 1e6:.1f} MB"),
        ]
        if self.bandwidth_gb_s:
            rows += [
                ("copy bandwidth", f"{self.bandwidth_gb_s:.1f} GB/s ({self.bandwidth_of})"),
                ("roofline", f"{self.roofline_tok_s:.1f} tok/s; decode reaches {self.roofline_fraction:.0%} of it"),
            ]
        else:
            rows.append(("roofline", f"not measured: timing a copy in {self.bandwidth_of} needs PyTorch with CUDA"))
        return "\n".join(f"{k:<24} {v}" for k, v in rows)


@dataclass(frozen=True)
class EmulatedMemory:
    """`slmkit bench --emulate arm64`: memory only. qemu translates every ARM instruction, so an
    emulated time says nothing of a phone (the SmolLM2-135M smoke test ran about 30x slower
    emulated than on this host); the memory a load and a generation take is the bundle's own."""

    bundle: str
    cpu: str
    prompt_tokens: int
    new_tokens: int
    weight_bytes: int
    load_peak_mb: float | None
    run_peak_mb: float | None

    def to_dict(self) -> dict:
        return asdict(self) | {
            "load_peak_x_weights": of_weights(self.load_peak_mb, self.weight_bytes),
            "run_peak_x_weights": of_weights(self.run_peak_mb, self.weight_bytes),
        }

    def table(self) -> str:
        rows = [
            ("emulated CPU", f"{self.cpu} (qemu-aarch64): memory only, emulated time is no device time"),
            ("peak RSS while loading", memory_line(self.load_peak_mb, self.weight_bytes)),
            ("peak RSS load + generate", memory_line(self.run_peak_mb, self.weight_bytes)),
            ("weights", f"{self.weight_bytes / 1e6:.1f} MB"),
        ]
        return "\n".join(f"{k:<26} {v}" for k, v in rows)


def of_weights(mb: float | None, weight_bytes: int) -> float | None:
    """A memory figure (MB) as a multiple of the model's weight bytes; None where not measured."""
    return None if mb is None else mb * MB / weight_bytes


def memory_line(mb: float | None, weight_bytes: int) -> str:
    if mb is None:
        return "not measured (resetting a process's peak RSS needs Linux)"
    return f"{mb:.0f} MB above the imported runtime, {of_weights(mb, weight_bytes):.2f}x the weights"


def run_emulated(bundle: Path, prompt_tokens: int, new_tokens: int, cpu: str = "cortex-a76") -> EmulatedMemory:
    """Load the bundle and generate once under qemu-aarch64 -cpu CPU, measuring memory inside the
    emulated process (memory_probe.py)."""
    from ..bundle.layout import read_manifest, require_bundle
    from .emulate import run_probe

    require_bundle(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("runtime", {}).get("execution_provider") != "cpu" or (bundle / "model" / "model.gguf").is_file():
        raise InputModelError(
            f"Bundle '{bundle}' is not an onnxruntime CPU bundle: an emulated ARM64 CPU measures the memory "
            "of cpu, android and ios bundles."
        )
    probe = Path(__file__).with_name("memory_probe.py")
    result = run_probe(
        bundle, manifest, cpu, [str(probe), str(bundle.resolve() / "model"), str(prompt_tokens), str(new_tokens)]
    )
    return EmulatedMemory(
        bundle=bundle.name,
        cpu=cpu,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        weight_bytes=model_bytes(bundle / "model"),
        load_peak_mb=result["load_mb"],
        run_peak_mb=result["run_mb"],
    )


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a large memory copy (read + write counted once each, as a STREAM copy)."""
    import numpy as np

    src = np.ones(megabytes * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def gpu_copy_bandwidth(megabytes: int = 1024, repeats: int = 10) -> float | None:
    """GB/s of a device-to-device copy on the current CUDA GPU (read + write), or None without
    a CUDA build of PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    del src, dst
    return 2 * megabytes * (1 << 20) / seconds / 1e9


def run(
    bundle: Path, prompt_tokens: int = 128, new_tokens: int = 128, runs: int = 5, provider: str = "bundle"
) -> BenchResult:
    from ..bundle.layout import read_manifest, require_bundle
    from .quality import bundle_runner

    require_bundle(bundle)
    model_dir = bundle / "model"
    gguf = (model_dir / "model.gguf").is_file()
    on_gpu = provider == "cuda" or (
        provider == "bundle" and read_manifest(bundle)["runtime"].get("execution_provider") == "cuda"
    )
    if gguf:
        from ..plan import llama

        llama.require("Timing a GGUF bundle runs it")
    runner = bundle_runner("llama-cpp") if gguf else bundle_runner()
    cap = runner.settings(model_dir)["context_cap"] if gguf else runner.genai_config(model_dir)["search"]["max_length"]
    if runs < 1:
        raise InputModelError(f"--runs {runs}: expected at least 1 timed run.")
    if prompt_tokens + new_tokens > cap or prompt_tokens < 1 or new_tokens < 2:
        raise InputModelError(
            f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} must fit the bundle's context cap "
            f"of {cap} tokens, with at least 1 prompt token and 2 new tokens."
        )
    timed = _llama_cpp_runs if gguf else _onnx_runs
    memory = PeakMemory()
    ttfts, decodes = timed(runner, model_dir, provider, prompt_tokens, new_tokens, runs + 1, memory)
    ttfts, decodes = ttfts[1:], decodes[1:]  # the first run warms up (kernel packing, allocations)
    ttft = statistics.median(ttfts)
    return BenchResult(
        bundle=bundle.name,
        provider=provider,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        runs=runs,
        ttft_s=ttft,
        prefill_tok_s=prompt_tokens / ttft,
        decode_tok_s=statistics.median(decodes),
        decode_tok_s_min=min(decodes),
        decode_tok_s_max=max(decodes),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        weight_bytes=model_bytes(model_dir),
        load_s=memory.load_s,
        load_peak_mb=memory.load_mb,
        run_peak_mb=memory.run_mb,
        bandwidth_gb_s=gpu_copy_bandwidth() if on_gpu else copy_bandwidth(),
        bandwidth_of="GPU memory" if on_gpu else "RAM",
    )


def _prompt(ids: list[int], n: int) -> list[int]:
    """The evaluation text's tokens, repeated to n."""
    return (ids * (n // len(ids) + 1))[:n]


def _onnx_runs(
    runner, model_dir: Path, provider: str, prompt_tokens: int, new_tokens: int, runs: int, memory: PeakMemory
):
    """(time to first token, decode tok/s) of each run with onnxruntime-genai."""
    import numpy as np
    import onnxruntime_genai as og

    from .quality import default_text

    memory.loading()
    model = runner.load_model(model_dir, provider)
    memory.loaded()
    prompt = np.asarray(_prompt(list(og.Tokenizer(model).encode(default_text()[1])), prompt_tokens), dtype=np.int32)
    ttfts, decodes = [], []
    for _ in range(runs):
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=prompt_tokens + new_tokens, min_length=prompt_tokens + new_tokens, do_sample=False
        )
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        first = time.perf_counter()
        produced = 1
        while not generator.is_done() and produced < new_tokens:
            generator.generate_next_token()
            produced += 1
        end = time.perf_counter()
        ttfts.append(first - start)
        decodes.append((produced - 1) / (end - first))
        del generator
    memory.generated()
    return ttfts, decodes


def _llama_cpp_runs(
    runner, model_dir: Path, _provider: str, prompt_tokens: int, new_tokens: int, runs: int, memory: PeakMemory
):
    """(time to first token, decode tok/s) of each run with llama.cpp: prefill, then greedy tokens
    one at a time (the argmax of the last position's logits)."""
    import numpy as np

    from .quality import default_text

    memory.loading()
    llm = runner.load_model(model_dir, n_ctx=prompt_tokens + new_tokens + 8)
    memory.loaded()
    prompt = _prompt(llm.tokenize(default_text()[1].encode("utf-8"), add_bos=False, special=False), prompt_tokens)
    ttfts, decodes = [], []
    for _ in range(runs):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(runner.last_logits(llm)))
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(runner.last_logits(llm)))
        end = time.perf_counter()
        ttfts.append(first - start)
        decodes.append((new_tokens - 1) / (end - first))
    memory.generated()
    return ttfts, decodes


def to_json(result: BenchResult | EmulatedMemory) -> str:
    return json.dumps(result.to_dict(), indent=2)
