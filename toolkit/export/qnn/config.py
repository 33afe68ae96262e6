"""genai_config.json of an NPU bundle: onnxruntime-genai's `decoder-pipeline` model. Two CPU stages
run at every step (embeddings, positions), then each part's prompt graph (on the prompt, N tokens a
window: the `sliding_window` pads the last one on the right) or its token graph (one token a
step), on the QNN execution provider; the last part gives the logits. The KV cache is one fixed
buffer per layer [1, Hkv, context, head] that each part reads and writes back (genai binds the same
buffer as past and present)."""

from __future__ import annotations

from typing import Any

from ...graphs.ops import Shape
from ...plan.config import BuildPlan
from .compile import context_name, provider_options

CPU = {"provider_options": []}


def _stage(filename: str, inputs: list[str], outputs: list[str], **flags: Any) -> dict[str, Any]:
    return {"filename": filename, "inputs": inputs, "outputs": outputs, **flags}


def pipeline_config(base: dict[str, Any], shape: Shape, plan: BuildPlan, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The builder's CPU genai_config (its ids, tokens and search) turned into the NPU pipeline."""
    model = base["model"]
    positions = ["cos", "sin", "kv_index", "attention_keep", "attention_bias"]
    stages = [
        {"embeddings": _stage("embeddings.onnx", ["input_ids"], ["hidden_0"], session_options=CPU)},
        {
            "positions": _stage(
                "positions.onnx",
                ["input_ids", "past_sequence_length", "total_sequence_length"],
                positions,
                session_options=CPU,
            )
        },
    ]
    for part in parts:
        for kind in ("prompt", "token"):
            flags = {"run_on_prompt": kind == "prompt", "run_on_token_gen": kind == "token"}
            if part["head"]:  # skipped on every prompt window but the last
                flags["is_lm_head"] = True
            name = f"part{part['index']}_{kind}"
            stages.append({name: _stage(context_name(part["files"][kind]), part["inputs"], part["outputs"], **flags)})
    pieces = [p["outputs"][0] for p in parts if p["head"]]
    if pieces != ["logits"]:  # an lm_head in several parts: the CPU puts their logits side by side
        stages.append({"logits": _stage("logits.onnx", pieces, ["logits"], session_options=CPU, is_lm_head=True)})
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": [{"qnn": provider_options(plan.npu)}]},
        "head_size": shape.head,
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
            "past_sequence_length": "past_sequence_length",
            "total_sequence_length": "total_sequence_length",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "sliding_window": {
            "window_size": plan.npu.prompt_tokens,
            "pad_value": model.get("pad_token_id") or 0,
            "alignment": "left",
            "slide_key_value_cache": False,
            "slide_inputs": True,
        },
        "pipeline": stages,
    }
    out = {k: v for k, v in model.items() if k not in ("decoder", "type")}
    out = {"type": "decoder-pipeline", **out, "context_length": plan.optimize.context_cap, "decoder": decoder}
    search = dict(base["search"], max_length=plan.optimize.context_cap, past_present_share_buffer=True)
    return {"model": out, "search": search}
