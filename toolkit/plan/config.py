"""Recipe, Target and BuildPlan: strict, frozen, data only.

A target file (targets/<name>.toml) holds the defaults of every plan section for one kind of device;
a recipe file (recipes/<model>/<target>.toml) says which checkpoints it is for and overrides sections;
`--set section.key=value` overrides last. `resolve()` merges the three and validates every key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError, did_you_mean

BLOCK_SIZES = (16, 32, 64, 128, 256)
# What the onnxruntime-genai builder can emit, per execution provider.
PRECISIONS_BY_PROVIDER = {
    "cpu": ("int4", "int8", "fp32"),
    "cuda": ("int4", "int8", "fp16", "fp32"),
    "dml": ("int4", "fp16"),
    # onnxruntime-web in a browser: the builder's WebGPU graph with float32 inputs and outputs
    # (use_webgpu_fp32), the CPU graph node for node, which the WASM backend runs as well.
    "webgpu": ("int4",),
    # The Hexagon NPU (onnxruntime-qnn's HTP backend): int4 weights, 16-bit activations (w4a16).
    "qnn": ("int4",),
}
RUNNERS_BY_PROVIDER = {
    "cpu": ("python", "android", "ios", "llama-cpp"),
    "cuda": ("python",),
    "dml": ("python",),
    "webgpu": ("web",),
    # onnxruntime-genai's Java API (0.18) cannot register onnxruntime-qnn's plugin EP: no Kotlin runner yet
    "qnn": ("python",),
}


def _choice(*values: Any, **kw: Any) -> Any:
    return field(metadata={"choices": values}, **kw)


def _range(lo: float, hi: float, **kw: Any) -> Any:
    return field(metadata={"range": (lo, hi)}, **kw)


@dataclass(frozen=True)
class ExportConfig:
    # "ort-genai": onnxruntime-genai's model builder (every architecture and provider it knows;
    # holds the whole model in memory, ~7-8 bytes per parameter). "stream": slmkit's streamed
    # writer of the same CPU graph (toolkit/export/stream.py), one tensor in memory at a time.
    # "gguf": a GGUF file for llama.cpp and Ollama (toolkit/export/gguf.py), one tensor at a time.
    # "qnn": static w4a16 graphs for the Hexagon NPU, compiled to QNN context binaries (toolkit/export/qnn/).
    engine: str = _choice("ort-genai", "stream", "gguf", "qnn", default="ort-genai")
    execution_provider: str = _choice(*PRECISIONS_BY_PROVIDER, default="cpu")
    precision: str = _choice("int4", "int8", "fp16", "fp32", default="int4")
    # Vision models only (Phi-3.5-vision): the image encoder's linear weights, computed in float32
    # on every target. Measured on a CLIP ViT-L/14 tower: int8 moves its features by 1.0%
    # (relative RMS) at 356 MB, int4 by 12.6% at 201 MB, float32 is 1252 MB.
    vision_precision: str = _choice("fp32", "int8", "int4", default="fp32")
    # Vision models only: the token table of the embedding graph ("float": the decoder's float
    # type; "int4": GatherBlockQuantized with the plan's block size, as the builder stores a tied
    # int4 embedding).
    embedding_precision: str = _choice("float", "int4", default="float")
    # Web only: a second graph, model-wasm.onnx, for onnxruntime-web's WASM backend ("int8": every
    # MatMul as DynamicQuantizeMatMul with per-channel uint8 weights, which WASM's SIMD integer GEMM
    # runs; its int4 MatMulNBits has no WASM kernel and dequantizes every call). "none": WASM runs
    # the WebGPU graph. The page downloads only the graph of the backend it got.
    wasm_graph: str = _choice("none", "int8", default="none")


# quantize.method values slmkit calibrates itself in its streamed export (the builder does the rest).
OWN_METHODS = ("mse", "gptq", "awq", "mixed")


@dataclass(frozen=True)
class QuantizeConfig:
    # The builder's algo_config: "default" and "rtn" are round-to-nearest, "k_quant" searches scales,
    # "k_quant_last" / "k_quant_mixed" keep the lm_head / some layers in int8. slmkit's own, calibrated
    # one decoder layer at a time in the streamed export (toolkit/quantize/sequential.py): "mse",
    # blocks whose scale (and zero point) minimise the error weighted by the inputs' mean squares;
    # "gptq", codes chosen by GPTQ's error feedback; "awq", AWQ scales folded into the layer, then
    # "mse"; "mixed", "gptq", then the matrices whose int4 error costs the most per byte in int8
    # blocks, within the bytes of the builder's default int4. The token table is int4 blocks too.
    method: str = _choice(
        "default", "rtn", "k_quant", "k_quant_last", "k_quant_mixed", "mse", "gptq", "awq", "mixed", default="default"
    )
    block_size: int = _choice(*BLOCK_SIZES, default=32)
    # MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.
    accuracy_level: int = _choice(0, 1, 2, 3, 4, default=4)
    symmetric: bool = True
    lm_head: str = _choice("int4", "int8", default="int4")
    # "hadamard": the residual stream rotated by a Hadamard matrix with random signs, folded into the
    # weights before anything is quantized (QuaRot's R1; toolkit/quantize/rotation.py).
    rotation: str = _choice("none", "hadamard", "hadamard+down", default="none")
    # method "mixed": the weights' bytes in MB (matrices, token tables, norms; the rope caches come
    # on top) that the promotions may fill, instead of the builder's default int4 (ONNX) or llama.cpp
    # Q4_K_M's (GGUF). 0: those.
    target_mb: float = _range(0.0, 1e6, default=0.0)


@dataclass(frozen=True)
class OptimizeConfig:
    # search.max_length in genai_config.json: the KV cache is allocated for this many tokens.
    context_cap: int = _range(64, 131072, default=4096)
    # intra_op_num_threads of the bundle's onnxruntime sessions. -1: onnxruntime-genai's default,
    # half of the hardware threads (at most 16): one per core where each core runs two threads, the
    # big cores of a phone, but one thread on a 2-core machine without SMT (a cloud VM, a CI runner).
    # 0: onnxruntime's default, one thread per physical core. N: N threads.
    intra_op_threads: int = _range(-1, 256, default=-1)
    # CUDA bundles: capture the decode step in a CUDA graph (the CUDA provider's enable_cuda_graph)
    # and replay it for every token, instead of launching each kernel from the CPU: a small model's
    # decode is bound by those launches (SmolLM2-135M at 1% of an H200's memory roofline).
    cuda_graph: bool = False
    # Browser bundles: model.onnx's external data in files of at most this many MB (0: one file).
    # A browser holds each fetched file in one ArrayBuffer and each cached one in one Cache Storage
    # entry; smaller files also let an interrupted download resume file by file.
    external_data_chunk_mb: int = _range(0, 2047, default=0)


@dataclass(frozen=True)
class RuntimeConfig:
    runner: str = _choice("python", "android", "ios", "llama-cpp", "web", default="python")
    package: str = "onnxruntime-genai"


# Snapdragon SoCs: (QNN soc_model, HTP architecture). A context binary runs on the HTP it was
# compiled for.
SOCS = {
    "8-gen-2": (43, 73),  # SM8550
    "8-gen-3": (57, 75),  # SM8650
    "8-elite": (69, 79),  # SM8750
    "x-elite": (60, 73),  # SC8380XP, Copilot+ PCs
}


@dataclass(frozen=True)
class NpuConfig:
    """The Hexagon NPU target (export.engine = "qnn"); other targets ignore it."""

    soc: str = _choice(*SOCS, default="8-elite")
    # Tokens the prompt processor takes per step (static shape); the token generator takes 1.
    prompt_tokens: int = _range(8, 1024, default=128)
    # int4 weights with one scale per output channel, or in blocks of quantize.block_size whose
    # 4-bit scales multiply a per-channel one (QNN's LPBQ).
    weights: str = _choice("channel", "lpbq", default="lpbq")
    # The KV cache's bits per value (uint8 or uint16, one scale per layer's keys and values).
    kv_bits: int = _choice(8, 16, default=8)
    # One context binary per part holding the prompt and token graphs over one copy of the weights
    # (half the bytes and the memory). The x86 HTP backend cannot load such a binary: the build
    # checks the same graphs compiled one per binary.
    weight_sharing: bool = True
    # The decoder's weights per part (one context binary each), at most this many MB.
    part_mb: int = _range(1, 2047, default=512)


@dataclass(frozen=True)
class AdaptersConfig:
    """LoRA adapters given with --adapter: folded into the weights before anything reads them
    ("merged"), or kept as files the runner switches between at run time over one quantized base
    ("runtime": the graph takes each adapted projection's A and B as inputs)."""

    mode: str = _choice("merged", "runtime", default="merged")


@dataclass(frozen=True)
class VerifyConfig:
    # Completed as plain text, and sent through the model's chat template, respectively.
    prompts: tuple[str, ...] = field(
        default=("The capital of France is", "def fibonacci(n):"), metadata={"nonempty": True}
    )
    chat_prompts: tuple[str, ...] = ("What is the capital of France?",)
    # Asked about the bundle's test picture (tests/image.png) through the chat template: vision
    # models only (phi3v bundles), ignored by text models.
    image_prompts: tuple[str, ...] = ("Describe the image.",)
    new_tokens: int = _range(1, 512, default=16)
    # Share of positions where the bundle's top-1 token, fed the reference's own greedy continuation,
    # equals the reference's token. 1.0 demands an exact match.
    min_top1_agreement: float = _range(0.0, 1.0, default=0.9)
    # On a device, greedy tokens must equal the ones the build host recorded for at least this
    # many leading tokens (other CPUs run other int4 kernels, so late flips are tolerated).
    min_greedy_prefix: int = _range(1, 512, default=8)
    # An earlier difference passes as a tie when the device's token was within this many logits of
    # the recorded one on the build host. Measured on SmolLM2-135M android (int4, accuracy level 4):
    # ARM KleidiAI vs x86 kernels moved the gap between a step's top token and its runner-ups by at
    # most 0.70 logits (cortex-a55 and cortex-a76 alike; logit range about 58).
    tie_logit_margin: float = _range(0.0, 100.0, default=1.0)
    # Web bundles: a software WebGPU adapter (SwiftShader, WebGPU on the CPU) runs the page's check
    # for at most this long; past it the check is skipped with the reason (a CPU's speed says nothing
    # of the kernels' results, and a hardware adapter stays pending on the device), never failed.
    software_adapter_s: float = _range(1.0, 86400.0, default=600.0)
    # The perplexity increase over float32 this recipe promises on slmkit's evaluation text
    # (`slmkit eval` reports against it).
    max_ppl_increase: float = _range(0.0, 10.0, default=0.5)


SECTIONS: dict[str, type] = {
    "export": ExportConfig,
    "quantize": QuantizeConfig,
    "optimize": OptimizeConfig,
    "runtime": RuntimeConfig,
    "npu": NpuConfig,
    "adapters": AdaptersConfig,
    "verify": VerifyConfig,
}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    sections: dict[str, dict[str, Any]]
    path: Path


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    description: str
    architectures: tuple[str, ...]
    rope_scaling: str  # "longrope", "none" or "any"
    examples: tuple[str, ...]
    sections: dict[str, dict[str, Any]]
    path: Path
    partial_rotary_factor: float = 1.0  # the checkpoint's, for a recipe of a partial-rotary model


@dataclass(frozen=True)
class BuildPlan:
    recipe: str
    target: str
    export: ExportConfig
    quantize: QuantizeConfig
    optimize: OptimizeConfig
    runtime: RuntimeConfig
    npu: NpuConfig
    adapters: AdaptersConfig
    verify: VerifyConfig

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.recipe, "target": self.target}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a list of strings")


def _check_value(where: str, key: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of strings, got {value!r}.")
        if not value and f.metadata.get("nonempty"):
            raise ConfigError(f"{where}: '{key}' must not be empty.")
        return tuple(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__}).")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{where}: '{key}' = {value!r} is not allowed. Valid values: {valid}.")
    lo_hi = f.metadata.get("range")
    if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
        raise ConfigError(f"{where}: '{key}' = {value!r} is out of range [{lo_hi[0]}, {lo_hi[1]}].")
    return value


def strict_section(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a section dataclass from a dict, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{key}'. Valid keys: {valid}.{did_you_mean(key, fields)}")
        values[key] = _check_value(where, key, fields[key], hints[key], value)
    return cls(**values)


def check_sections(raw: dict[str, Any], where: str, header: str) -> dict[str, dict[str, Any]]:
    """Split a parsed file into its known sections, refusing unknown ones and bad keys early."""
    sections = {}
    for name, body in raw.items():
        if name == header:
            continue
        if name not in SECTIONS:
            valid = ", ".join([header, *SECTIONS])
            raise ConfigError(
                f"{where}: unknown section [{name}]. Valid sections: {valid}.{did_you_mean(name, SECTIONS)}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{name}] must be a table of key = value lines.")
        strict_section(SECTIONS[name], body, f"{where} [{name}]")
        sections[name] = dict(body)
    return sections


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """'quantize.block_size=64' -> ('quantize', 'block_size', 64). Values are TOML literals;
    a bare word that is not a TOML literal is taken as a string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(
            f"--set '{text}': expected section.key=value, e.g. quantize.block_size=64 or "
            f"optimize.context_cap=2048. Sections: {', '.join(SECTIONS)}."
        )
    if section not in SECTIONS:
        raise ConfigError(
            f"--set '{text}': unknown section '{section}'. Valid sections: {', '.join(SECTIONS)}."
            f"{did_you_mean(section, SECTIONS)}"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


def resolve(recipe: Recipe, target: Target, overrides: tuple[str, ...] = ()) -> BuildPlan:
    if recipe.target != target.name:
        raise ConfigError(f"Recipe '{recipe.name}' is for target '{recipe.target}', not '{target.name}'.")
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for source in (target.sections, recipe.sections):
        for name, body in source.items():
            merged[name].update(body)
    for text in overrides:
        section, key, value = parse_override(text)
        merged[section][key] = value
    built = {
        name: strict_section(cls, merged[name], f"plan [{name}] (from {recipe.name} + {target.name} + --set)")
        for name, cls in SECTIONS.items()
    }
    plan = BuildPlan(recipe=recipe.name, target=target.name, **built)
    _check_combination(plan)
    return plan


def _check_combination(plan: BuildPlan) -> None:
    ep, precision = plan.export.execution_provider, plan.export.precision
    if precision not in PRECISIONS_BY_PROVIDER[ep]:
        raise ConfigError(
            f"Precision '{precision}' is not available for execution provider '{ep}'. "
            f"Valid for {ep}: {', '.join(PRECISIONS_BY_PROVIDER[ep])}."
        )
    q = plan.quantize
    if q.method in OWN_METHODS and precision == "int8":
        raise ConfigError(
            f"quantize.method '{q.method}' makes int4 weights (int8 only for the lm_head, with quantize.lm_head "
            "= int8, and where mixed chooses it), not precision 'int8'. Use precision int4, or a builder method "
            "(default, k_quant, k_quant_last, k_quant_mixed) for int8 layers."
        )
    if q.method in OWN_METHODS and plan.export.engine == "ort-genai":
        raise ConfigError(
            f"quantize.method '{q.method}' is slmkit's calibrated int4, written by its streamed export: "
            "use --set export.engine=stream, or a builder method (default, k_quant, k_quant_last, "
            "k_quant_mixed) with the onnxruntime-genai builder."
        )
    if plan.runtime.runner not in RUNNERS_BY_PROVIDER[ep]:
        raise ConfigError(
            f"Runner '{plan.runtime.runner}' cannot drive execution provider '{ep}'. "
            f"Valid runners for {ep}: {', '.join(RUNNERS_BY_PROVIDER[ep])}."
        )
    _check_web(plan)
    if plan.optimize.cuda_graph and ep != "cuda":
        raise ConfigError(
            f"optimize.cuda_graph captures the decode step of the CUDA provider; this plan runs on '{ep}'. "
            "Use --target linux-cuda, or --set optimize.cuda_graph=false."
        )


def _check_web(plan: BuildPlan) -> None:
    """What onnxruntime-web's WebGPU kernels run (1.30, checked in Chromium's WebGPU on this
    project's tiny model: tests/test_web.py)."""
    if plan.export.execution_provider != "webgpu":
        return
    q = plan.quantize
    if q.method in ("mixed", "k_quant_last", "k_quant_mixed") or q.lm_head == "int8":
        what = f"quantize.method '{q.method}'" if q.lm_head == "int4" else "quantize.lm_head 'int8'"
        raise ConfigError(
            f"{what} writes int8 MatMulNBits blocks; onnxruntime-web's WebGPU MatMulNBits runs 4-bit (and 2-bit) "
            "blocks only. Use --set quantize.method=gptq (calibrated int4) and --set quantize.lm_head=int4."
        )
    if q.block_size != 32:
        raise ConfigError(
            f"quantize.block_size {q.block_size}: onnxruntime-web 1.30's WebGPU MatMulNBits gave wrong tokens "
            "with blocks of 64 and 128 on the tiny test model (32 agrees with the CPU's kernels). "
            "Use --set quantize.block_size=32."
        )


def plan_from_dict(data: dict[str, Any], where: str) -> BuildPlan:
    """The plan stored in a manifest, validated like a freshly resolved one."""
    try:
        # a plan stored before the [npu] and [adapters] sections existed was built with their defaults
        stored = {"npu": {}, "adapters": {}} | data
        built = {name: strict_section(cls, stored[name], f"{where} [{name}]") for name, cls in SECTIONS.items()}
        return BuildPlan(recipe=data["recipe"], target=data["target"], **built)
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{where}: the stored plan is incomplete ({e}).") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(value)


def to_toml(data: dict[str, Any]) -> str:
    """Plain values first, then one [table] per dict value (one level, as plans and recipes are)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
