"""Per-target work on the exported model folder, and the read-back proof that every setting took."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StageError
from ..families import family_for
from ..families.decoder.graph import TIED_ROTATION_NODE
from ..graphs import external
from ..graphs.hadamard import ONLINE_HADAMARD
from ..graphs.ops import WASM_GRAPH
from ..plan.config import BuildPlan, OptimizeConfig
from ..quantize.choices import QUANTIZED_PRECISIONS, expected_bits

ONNX_FLOAT, ONNX_FLOAT16 = 1, 10
PROVIDER_KEYS = {"cpu": None, "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}
MB = 1 << 20


def graph_files(model_dir: Path) -> list[Path]:
    """The decoder graphs of an exported folder: model.onnx, and the web target's WASM graph."""
    return [p for p in (model_dir / "model.onnx", model_dir / WASM_GRAPH) if p.is_file()]


def read_genai_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))


def write_genai_config(model_dir: Path, config: dict[str, Any]) -> None:
    text = json.dumps(config, indent=4, sort_keys=False) + "\n"
    (model_dir / "genai_config.json").write_text(text, encoding="utf-8")


def apply_context_cap(model_dir: Path, cfg: OptimizeConfig) -> None:
    """Size the KV cache for the target: search.max_length, which the builder sets to the full
    trained context (131072 for Phi-3.5: tens of GB of cache, out of memory on a phone)."""
    config = read_genai_config(model_dir)
    config["search"]["max_length"] = cfg.context_cap
    write_genai_config(model_dir, config)


def _session_options(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The session_options of every onnxruntime session the bundle opens (decoder, vision, ...)."""
    parts = config["model"].values()
    return [part["session_options"] for part in parts if isinstance(part, dict) and "session_options" in part]


def apply_threads(model_dir: Path, cfg: OptimizeConfig) -> None:
    """intra_op_num_threads of every session; -1 leaves onnxruntime-genai's default (half of the
    hardware threads), which is one thread on a 2-core machine without SMT: 0.51x the decode speed
    of onnxruntime's own default on the 8-layer Phi-3.5-mini shape (benchmarks/decode.py)."""
    if cfg.intra_op_threads < 0:
        return
    config = read_genai_config(model_dir)
    for options in _session_options(config):
        options["intra_op_num_threads"] = cfg.intra_op_threads
    write_genai_config(model_dir, config)


def apply_cuda_graph(model_dir: Path, plan: BuildPlan) -> None:
    """enable_cuda_graph in the CUDA provider's options: onnxruntime-genai then captures the decode
    step once (its KV cache is one buffer of max_length, so every step has the same shapes) and
    replays it per token."""
    if not plan.optimize.cuda_graph:
        return
    config = read_genai_config(model_dir)
    for entry in config["model"]["decoder"]["session_options"].get("provider_options", []):
        if "cuda" in entry:
            entry["cuda"]["enable_cuda_graph"] = "1"
    config["search"]["past_present_share_buffer"] = True
    write_genai_config(model_dir, config)


ROPE_IF = "/model/rope_caches_subgraph/If"


def _rope_if(graph: Any) -> Any:
    """The If node of a longrope graph that picks the short or the long cos/sin pair; None if none."""
    return next((n for n in graph.node if n.op_type == "If" and n.name == ROPE_IF), None)


def _short_pair(node: Any) -> Any:
    """The If node's else branch: the short pair's Constant nodes."""
    return next(a.g for a in node.attribute if a.name == "else_branch")


def _short_rope_rows(node: Any) -> int:
    """Positions in the short cos/sin pair of a longrope If node."""
    return _short_pair(node).output[0].type.tensor_type.shape.dim[0].dim_value


def trim_rope_caches(model_dir: Path, cfg: OptimizeConfig) -> int:
    """A longrope graph holds two cos/sin pairs in model.onnx: the short factors' for positions up
    to the original context (4096) and the long factors' for the whole trained context (131072
    positions, 48 MB for Phi-3.5-mini), and an If node that switches to the long pair once the
    sequence outgrows the original context. With a context cap within the short pair, the long pair
    is never read: the short pair's constants replace the If node (the same values at every
    position the KV cache holds). Returns the bytes of the graphs dropped (model.onnx, and a WASM graph's)."""
    return sum(_trim_rope_caches(path, cfg) for path in graph_files(model_dir))


def _trim_rope_caches(path: Path, cfg: OptimizeConfig) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    node = _rope_if(graph)
    if node is None or cfg.context_cap > _short_rope_rows(node):
        return 0
    before = path.stat().st_size
    short = _short_pair(node)
    rename = {o.name: node.output[i] for i, o in enumerate(short.output)}
    constants = []
    for c in short.node:
        constant = onnx.NodeProto()
        constant.CopyFrom(c)
        constant.output[0] = rename[c.output[0]]
        constant.name = f"/model/rope_caches_subgraph{c.name}"
        constants.append(constant)
    nodes = list(graph.node)
    at = nodes.index(node)
    condition = node.input[0]
    nodes[at : at + 1] = constants
    if not any(condition in n.input for n in nodes) and condition not in {o.name for o in graph.output}:
        nodes = [n for n in nodes if condition not in n.output]  # the Greater that fed the If
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return before - path.stat().st_size


def split_external_data(model_dir: Path, cfg: OptimizeConfig) -> list[str]:
    """model.onnx.data in files of at most optimize.external_data_chunk_mb (a browser holds each
    in one ArrayBuffer); returns their names, [] when the plan keeps one file."""
    if cfg.external_data_chunk_mb == 0:
        return []
    graphs = [g for g in graph_files(model_dir) if g.with_name(f"{g.name}.data").is_file()]
    return [name for g in graphs for name in external.split(g, cfg.external_data_chunk_mb * MB)]


def _split_mismatches(model_dir: Path, cfg: OptimizeConfig) -> list[str]:
    """External data files that are missing, or hold more than the plan's chunk (one larger tensor
    alone in a file is allowed: a tensor is not split)."""
    used = {name: lengths for g in graph_files(model_dir) for name, lengths in external.data_files(g).items()}
    problems = [f"{name} is missing" for name in used if not (model_dir / name).is_file()]
    limit = cfg.external_data_chunk_mb * MB
    over = [name for name, lengths in used.items() if limit and len(lengths) > 1 and sum(lengths) > limit]
    return problems + [
        f"{name}: {sum(used[name]) / MB:.0f} MB of tensors, over optimize.external_data_chunk_mb = "
        f"{cfg.external_data_chunk_mb}"
        for name in over
    ]


def add_stop_ids(model_dir: Path, eos_ids: list[int]) -> list[int]:
    """Stop on every id the checkpoint names: the builder takes generation_config.json's ids and
    the tokenizer's end-of-turn token, not config.json's when the files disagree. Returns the
    bundle's stop ids (the builder's order, then the ones added)."""
    config = read_genai_config(model_dir)
    have = config["model"]["eos_token_id"]
    have = have if isinstance(have, list) else [have]
    stops = list(dict.fromkeys([*have, *eos_ids]))
    if stops != have:
        config["model"]["eos_token_id"] = stops
        write_genai_config(model_dir, config)
    return stops


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _graph_mismatches(model_dir: Path, plan: BuildPlan, architecture: str) -> list[str]:
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    graph = model.graph
    precision, ep = plan.export.precision, plan.export.execution_provider
    problems = []
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    if precision in QUANTIZED_PRECISIONS:
        if not nbits:
            problems.append(f"precision {precision}: the graph has no MatMulNBits node")
        for node in nbits:
            attrs = _attributes(node)
            # a tied table's rotation after the final norm is int8 whatever the plan (rotation.py)
            rotation = node.name.startswith(TIED_ROTATION_NODE)
            bits = {8} if rotation else expected_bits(plan.quantize, precision, "lm_head" in node.name)
            if attrs.get("bits") not in bits:
                problems.append(
                    f"{node.name}: bits = {attrs.get('bits')}, requested {' or '.join(map(str, sorted(bits)))}"
                )
            if attrs.get("block_size") != plan.quantize.block_size:
                problems.append(
                    f"{node.name}: block_size = {attrs.get('block_size')}, requested {plan.quantize.block_size}"
                )
            if attrs.get("accuracy_level", 0) != plan.quantize.accuracy_level:
                requested = plan.quantize.accuracy_level
                problems.append(f"{node.name}: accuracy_level = {attrs.get('accuracy_level')}, requested {requested}")
            has_zp = len(node.input) > 3 and node.input[3] != ""
            if has_zp == plan.quantize.symmetric:
                problems.append(
                    f"{node.name}: {'has' if has_zp else 'no'} zero points, requested "
                    f"{'symmetric' if plan.quantize.symmetric else 'asymmetric'} quantization"
                )
        for node in (n for n in graph.node if n.op_type == "QMoE"):  # a mixture of experts' expert weights
            attrs = _attributes(node)
            if attrs.get("expert_weight_bits") not in expected_bits(plan.quantize, precision, False):
                problems.append(
                    f"{node.name}: expert_weight_bits = {attrs.get('expert_weight_bits')}, requested {precision}"
                )
            if attrs.get("block_size") != plan.quantize.block_size:
                problems.append(
                    f"{node.name}: block_size = {attrs.get('block_size')}, requested {plan.quantize.block_size}"
                )
        # an initializer that is also an input is supplied at run time (a LoRA adapter's A and B)
        weights = {i.name for i in graph.initializer} - {i.name for i in graph.input}
        # e.g. a router; the online Hadamard's small factors (quantize.rotation "hadamard+down")
        kept_float = (*family_for(architecture).float_matmuls, ONLINE_HADAMARD)
        if ep == "webgpu":  # no 8-bit WebGPU MatMulNBits: a tied table's rotation stays float
            kept_float = (*kept_float, TIED_ROTATION_NODE)
        dense = _float_matmuls(graph, weights, kept_float)
        if dense:
            problems.append(f"precision {precision}: MatMul nodes left unquantized: {', '.join(dense[:5])}")
    elif nbits:
        problems.append(f"precision {precision}: the graph has {len(nbits)} MatMulNBits nodes")
    want_io = ONNX_FLOAT if (ep in ("cpu", "webgpu") or precision == "fp32") else ONNX_FLOAT16
    logits = [o for o in graph.output if o.name == "logits"]
    got_io = logits[0].type.tensor_type.elem_type if logits else None
    if got_io != want_io:
        problems.append(f"logits element type {got_io}, expected {want_io} for {precision} on {ep}")
    rope = _rope_if(graph)
    if rope is not None and plan.optimize.context_cap <= _short_rope_rows(rope):
        cap = plan.optimize.context_cap
        problems.append(f"{ROPE_IF} still holds the long rope caches, which a context cap of {cap} never reads")
    if ep == "dml" and "position_ids" not in {i.name for i in graph.input}:
        problems.append("DirectML layout expects a position_ids input; the graph has none")
    return problems + _wasm_graph_mismatches(model_dir, plan) + _split_mismatches(model_dir, plan.optimize)


def _float_matmuls(graph: Any, weights: set[str], kept_float: tuple[str, ...]) -> list[str]:
    """The float MatMul nodes on a weight of `weights`, but those whose name has a part of `kept_float`."""
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and not any(part in n.name for part in kept_float)
    ]


def _wasm_graph_mismatches(model_dir: Path, plan: BuildPlan) -> list[str]:
    """export.wasm_graph "int8": model-wasm.onnx is there, every weight MatMul but the online
    Hadamard's factors a DynamicQuantizeMatMul."""
    import onnx

    path = model_dir / WASM_GRAPH
    if plan.export.wasm_graph == "none":
        return [f"{WASM_GRAPH} is there, but export.wasm_graph is 'none'"] if path.is_file() else []
    if not path.is_file():
        return [f"export.wasm_graph '{plan.export.wasm_graph}': {WASM_GRAPH} is missing"]
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    problems = [f"{WASM_GRAPH}: {n.name} is MatMulNBits" for n in graph.node if n.op_type == "MatMulNBits"]
    problems += [
        f"{WASM_GRAPH}: MatMul {name} left in float" for name in _float_matmuls(graph, weights, (ONLINE_HADAMARD,))
    ]
    if not any(n.op_type == "DynamicQuantizeMatMul" for n in graph.node):
        problems.append(f"{WASM_GRAPH}: no DynamicQuantizeMatMul node")
    return problems[:5]


def _config_mismatches(
    model_dir: Path, plan: BuildPlan, source_config: dict[str, Any] | None, eos_ids: list[int] | None
) -> list[str]:
    config = read_genai_config(model_dir)
    problems = []
    search, model = config["search"], config["model"]
    if search.get("max_length") != plan.optimize.context_cap:
        problems.append(f"search.max_length = {search.get('max_length')}, requested {plan.optimize.context_cap}")
    if search["max_length"] > model.get("context_length", 0):
        problems.append(
            f"search.max_length {search['max_length']} exceeds model.context_length {model.get('context_length')}"
        )
    threads = plan.optimize.intra_op_threads
    for options in _session_options(config):
        if options.get("intra_op_num_threads", -1) != threads:
            problems.append(
                f"session_options.intra_op_num_threads = {options.get('intra_op_num_threads', 'unset')}, "
                f"requested {threads if threads >= 0 else 'unset'}"
            )
    options = model["decoder"]["session_options"].get("provider_options", [])
    names = [name for entry in options for name in entry]
    key = PROVIDER_KEYS[plan.export.execution_provider]
    if (key is None and names) or (key is not None and names != [key]):
        problems.append(f"provider_options name {names or 'no provider'}, expected {key or 'none (CPU)'}")
    cuda = [entry["cuda"] for entry in options if "cuda" in entry]
    captured = [c.get("enable_cuda_graph") == "1" for c in cuda]
    if plan.optimize.cuda_graph and not (captured == [True] and search.get("past_present_share_buffer")):
        problems.append(
            "optimize.cuda_graph: the CUDA provider's enable_cuda_graph (with one shared KV buffer) is not set"
        )
    if any(captured) and not plan.optimize.cuda_graph:
        problems.append("enable_cuda_graph is set, the plan has optimize.cuda_graph = false")
    if source_config is None or eos_ids is None:  # checking a bundle without its source
        return problems
    got_eos = model.get("eos_token_id")
    got_eos = set(got_eos if isinstance(got_eos, list) else [got_eos])
    if not set(eos_ids) <= got_eos:
        problems.append(f"eos_token_id {sorted(got_eos)} misses {sorted(set(eos_ids) - got_eos)} from the checkpoint")
    decoder = model["decoder"]
    for key, src_key in (("num_hidden_layers", "num_hidden_layers"), ("hidden_size", "hidden_size")):
        if decoder.get(key) != source_config.get(src_key):
            problems.append(f"decoder.{key} = {decoder.get(key)}, checkpoint has {source_config.get(src_key)}")
    return problems


def setting_mismatches(
    model_dir: Path,
    plan: BuildPlan,
    architecture: str,
    source_config: dict[str, Any] | None = None,
    eos_ids: list[int] | None = None,
) -> list[str]:
    """What in the graph and genai_config.json differs from the plan (`architecture`: the
    checkpoint's, which names its family); with the source's config and stop ids, also those."""
    return _graph_mismatches(model_dir, plan, architecture) + _config_mismatches(
        model_dir, plan, source_config, eos_ids
    )


def check_settings(model_dir: Path, plan: BuildPlan, source_config: dict[str, Any], eos_ids: list[int]) -> None:
    """Read the graph and genai_config.json back; a requested setting that did not take fails."""
    problems = setting_mismatches(model_dir, plan, source_config["architectures"][0], source_config, eos_ids)
    if problems:
        raise StageError(
            "optimize",
            "the built model does not match the plan:\n  - " + "\n  - ".join(problems),
            model_dir.parent,
        )
