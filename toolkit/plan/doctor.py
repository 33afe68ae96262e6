"""Is the toolchain here, and is there room? Run by `slmkit doctor` and at the start of every build."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolchainError
from .config import OWN_METHODS, BuildPlan

# (import name, distribution, minimum version, what it is for)
REQUIRED = (
    ("onnxruntime_genai", "onnxruntime-genai", "0.18", "model builder and runtime"),
    ("onnxruntime", "onnxruntime", "1.22", "graph checks and quantization"),
    ("onnx", "onnx", "1.17", "reading the built graph"),
    ("transformers", "transformers", "5.0", "reading checkpoints, the reference model"),
    ("torch", "torch", "2.4", "the reference model"),
    ("safetensors", "safetensors", "0.4", "reading weights"),
    ("numpy", "numpy", "1.26", "everything"),
)
# Peak resident memory of the onnxruntime-genai builder, measured: 8.8 GB for 1.1 B parameters,
# 15.1 GB for 2.0 B (shared/ANCHORS.md), i.e. about 8 bytes per parameter.
BUILDER_BYTES_PER_PARAM = 8.0
# The streamed engine (toolkit/export/stream.py): Python with torch and onnxruntime loaded, plus the
# largest tensor in float32 and its blocks (quantized a few thousand rows at a time).
# benchmarks/build_memory.py measured 1.68 GB for the Phi-3.5-mini shape at 8 and at 32 layers;
# this estimate gives 1.6 GB there.
STREAM_BASE_BYTES = 1.0e9
STREAM_BYTES_PER_LARGEST_PARAM = 6
# Python with torch and transformers loaded, and generation's working memory, around the weights.
REFERENCE_BASE_BYTES = 1.0e9
SMOKE_BASE_BYTES = 1.5e9
BYTES_PER_PARAM = {"int4": 0.6, "int8": 1.1, "fp16": 2.0, "fp32": 4.0}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def package_checks() -> list[Check]:
    checks = []
    for module, dist, minimum, purpose in REQUIRED:
        if importlib.util.find_spec(module) is None:
            checks.append(Check(dist, False, f"not installed ({purpose}): pip install '{dist}>={minimum}'"))
            continue
        version = importlib.metadata.version(dist)
        ok = _version_tuple(version) >= _version_tuple(minimum)
        detail = version if ok else f"{version} is older than {minimum}: pip install -U '{dist}>={minimum}'"
        checks.append(Check(dist, ok, detail))
    return checks


def estimate_bundle_bytes(num_params: int, precision: str, vocab: int, hidden: int) -> int:
    # int4/int8 graphs keep the embedding table in float32 next to the quantized weights.
    extra = vocab * hidden * 4 if precision in ("int4", "int8") else 0
    return int(num_params * BYTES_PER_PARAM[precision]) + extra


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def disk_check(out: Path, need: int) -> Check:
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1e9:.1f} GB free at {probe}, the build needs about {need / 1e9:.2f} GB"
    return Check("disk", free >= need, detail)


def export_memory_bytes(num_params: int, config: dict, engine: str) -> int:
    """Peak resident memory of the export stage. The builder holds the whole model; the streamed
    engine holds the largest tensor a few times over (read, widened, transposed, packed); the NPU
    engine too, and one float32 layer graph that onnxruntime runs on the calibration states."""
    if engine == "qnn":
        return int(STREAM_BASE_BYTES + STREAM_BYTES_PER_LARGEST_PARAM * _largest(config) + 12 * layer_params(config))
    if engine != "stream":
        return int(num_params * BUILDER_BYTES_PER_PARAM)
    return int(STREAM_BASE_BYTES + STREAM_BYTES_PER_LARGEST_PARAM * _largest(config))


def _largest(config: dict) -> int:
    hidden = config["hidden_size"]
    return max(config["vocab_size"] * hidden, 2 * config["intermediate_size"] * hidden)


# onnxruntime-qnn's compiler (a child process per part): its runtime, and about this many bytes per
# byte of weights in a part when its prompt and token graphs share them (benchmarks/npu_memory.py,
# Phi-3.5-mini's shape: 3273 MB for a 301 MB part, 2070 MB for 181 MB, 971 MB for the 99 MB lm_head).
COMPILE_BASE_BYTES = 0.2e9
COMPILE_BYTES_PER_WEIGHT_BYTE = 11


def compile_memory_bytes(part_mb: int) -> int:
    return int(COMPILE_BASE_BYTES + COMPILE_BYTES_PER_WEIGHT_BYTE * part_mb * (1 << 20))


def layer_params(config: dict) -> int:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    experts = config.get("num_local_experts") or 1  # a mixture of experts: every expert, and the router
    mlp = experts * 3 * hidden * config["intermediate_size"] + (hidden * experts if experts > 1 else 0)
    return hidden * (heads + 2 * kv) * head + heads * head * hidden + mlp


def reference_memory_bytes(config: dict) -> int:
    """The float32 reference of the verify stage (toolkit/reference/): embedding and lm_head
    loaded, one decoder layer at a time (its tensors, and their copies while they are read)."""
    tables = config["vocab_size"] * config["hidden_size"] * (1 if config.get("tie_word_embeddings") else 2)
    one_expert = dict(config, num_local_experts=1)  # a mixture's experts are read one at a time
    return int(REFERENCE_BASE_BYTES + 4 * (tables + 2 * layer_params(one_expert)))


def smoke_memory_bytes(num_params: int, config: dict, precision: str) -> int:
    """The bundle's smoke test (verify stage) loads the whole model, as a user's run does: the bundle's
    size and the runtime (benchmarks/moe_slices.py: 0.9-1.5 GB above the bundle, 1.5-3.9 GB bundles)."""
    return int(
        SMOKE_BASE_BYTES + estimate_bundle_bytes(num_params, precision, config["vocab_size"], config["hidden_size"])
    )


CALIBRATION_TOKENS = 8192  # toolkit/quantize/calibration.py


def calibration_memory_bytes(config: dict) -> int:
    """slmkit's calibrated int4 (toolkit/quantize/sequential.py), on top of the streamed export
    (whose figure counts the Python and torch runtime): the reference's float32 embedding and
    lm_head, one float32 layer (its module and the writer's copy), the X^T X of its inputs
    (float32: attention, o_proj and MLP inputs hidden^2 each, down_proj's intermediate^2), GPTQ's
    float32 working copies of the widest one, and the calibration states (in, out, a batch's
    activations). The token tables stay in the checkpoint's dtype (one when tied). Measured at
    Phi-3.5-mini's shape: 4.40 GB for a 2-layer export (this estimate with the export's: 4.4); at
    Phi-4-mini's 32-layer shape, 4.88 GB (this: 8.3)."""
    h, i = config["hidden_size"], config.get("intermediate_size") or 4 * config["hidden_size"]
    widest = max(h, i)
    stored = 2 if (config.get("torch_dtype") or config.get("dtype")) in ("bfloat16", "float16") else 4
    table = config["vocab_size"] * h * stored * (1 if config.get("tie_word_embeddings") else 2)
    one_expert = dict(config, num_local_experts=1)
    states = 3 * CALIBRATION_TOKENS * h * 4 + 2048 * 2 * i * 4
    return int(table + 2 * 4 * layer_params(one_expert) + 4 * (3 * h * h + i * i) + 3 * 4 * widest * widest + states)


def memory_check(
    num_params: int, config: dict, engine: str, method: str = "default", precision: str = "int4", part_mb: int = 0
) -> Check:
    """The build's peak: the export stage (with slmkit's calibrated int4: plus one layer's
    calibration; for the NPU, or its compiler on a part of `part_mb`), the layer-by-layer reference
    (verify stage), or the smoke test running the bundle (verify stage)."""
    export = export_memory_bytes(num_params, config, engine)
    who = {"stream": "streamed export", "qnn": "NPU export"}.get(engine, "builder")
    if method in OWN_METHODS:
        export += calibration_memory_bytes(config)
        who += f" + calibrated {method} int4 (one layer, its inputs' X^T X, the calibration states)"
    if engine == "qnn":
        export = max(export, compile_memory_bytes(part_mb))
        who += f" (or the QNN compiler on a part of {part_mb} MB)"
    reference = reference_memory_bytes(config)
    smoke = smoke_memory_bytes(num_params, config, precision)
    have = total_memory_bytes()
    detail = (
        f"{who} peak about {export / 1e9:.1f} GB, float32 layer-by-layer reference for "
        f"verification {reference / 1e9:.1f} GB, the smoke test running the bundle {smoke / 1e9:.1f} GB, "
        f"for {num_params / 1e9:.2f} B parameters; machine has {have / 1e9:.1f} GB"
    )
    return Check("memory", max(export, reference, smoke) < have, detail)


def cache_root() -> Path:
    """Where slmkit keeps what it fetched or made once: $SLMKIT_CACHE, else ~/.cache/slmkit."""
    if os.environ.get("SLMKIT_CACHE"):
        return Path(os.environ["SLMKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slmkit"


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_BROWSER = (
    "no Chromium on this machine (web bundles are checked in headless Chromium): "
    "apt-get install chromium (Debian, Ubuntu), or set SLMKIT_CHROMIUM=/path/to/chrome"
)

NO_NPM = "no npm on this machine (the web target fetches onnxruntime-web with it once): apt-get install npm"


def find_browser() -> str | None:
    """The Chromium (or Chrome) the web smoke test drives: $SLMKIT_CHROMIUM, else one on PATH."""
    return os.environ.get("SLMKIT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)


def web_checks(need_npm: bool) -> list[Check]:
    """What a web bundle's build and check need here: npm (to fetch onnxruntime-web once), and
    playwright with a Chromium for the smoke test."""
    checks = []
    if need_npm:
        npm = shutil.which("npm")
        checks.append(Check("npm", npm is not None, npm or NO_NPM))
    playwright = importlib.util.find_spec("playwright") is not None
    detail = "installed" if playwright else "playwright is not installed (it drives Chromium): pip install playwright"
    checks.append(Check("playwright", playwright, detail))
    browser = find_browser()
    checks.append(Check("chromium", browser is not None, browser or NO_BROWSER))
    return checks


def require(checks: list[Check]) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in bad)
        raise ToolchainError(f"The toolchain check failed:\n{lines}\nRun `slmkit doctor` after fixing it.")


def preflight(num_params: int, config: dict, plan: BuildPlan, out_parent: Path, skip_memory_check: bool) -> None:
    """Packages, disk beside the output, and memory for the build's peak; ToolchainError naming
    each check that failed."""
    need = estimate_bundle_bytes(num_params, plan.export.precision, config["vocab_size"], config["hidden_size"])
    if plan.quantize.method == "mixed":  # its int8 alternatives sit in the data file until the end
        need += estimate_bundle_bytes(num_params, "int8", config["vocab_size"], config["hidden_size"])
    checks = package_checks() + [disk_check(out_parent, 2 * need)]
    if not skip_memory_check:
        mem = memory_check(
            num_params, config, plan.export.engine, plan.quantize.method, plan.export.precision, plan.npu.part_mb
        )
        if not mem.ok:
            mem = Check(mem.name, False, mem.detail + " (pass --skip-memory-check to try anyway)")
        checks.append(mem)
    require(checks)
