"""The float32 export rewritten with slmkit's own blocks: every MatMul with a weight initializer
becomes MatMulNBits and the token embedding GatherBlockQuantized, sharing the lm_head's codes when
the embeddings are tied (as the builder shares them), so no float32 table stays in the bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import bar
from .blocks import Packed, quantize


def _int64(name: str, values: list[int]):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def quantize_model(
    model_dir: Path,
    block: int,
    accuracy_level: int,
    symmetric: bool = False,
    calibrate=None,
    log=lambda _: None,
    quantizer=None,
    finish=None,
) -> dict[str, int]:
    """Rewrite model_dir/model.onnx (a float32 builder export) in place: every MatMul with a
    weight initializer becomes MatMulNBits, the token embedding becomes GatherBlockQuantized
    (sharing the lm_head's codes when the embeddings are tied). `calibrate(weight names)` returns
    per-input-feature importance for the weights it knows; `quantizer(name, W, importance)`, when
    given, returns each MatMul weight's Packed (its own method, block size and bits) instead of
    `quantize`; `finish(packed, float32 weight by name)`, when given, may then replace any of them
    (mixed precision). Returns counts for the log."""
    import onnx
    from onnx import helper, numpy_helper

    path = model_dir / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = [
        n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]
    matmul_weights = list(dict.fromkeys(n.input[1] for n in matmuls))  # graph order, once each
    importance = calibrate(matmul_weights) if calibrate is not None else {}
    log(f"activation statistics for {len(importance)} of {len(matmul_weights)} weights")
    packed: dict[str, Packed] = {}
    new_nodes, new_inits, dropped = [], [], set()
    counts = {"matmul": 0, "embedding": 0}

    def add_packed(weight: str, p: Packed) -> tuple[str, str, str | None]:
        names = (f"{weight}_Q4", f"{weight}_scales", f"{weight}_zp" if p.zero_points is not None else None)
        new_inits.append(numpy_helper.from_array(p.codes, names[0]))
        new_inits.append(numpy_helper.from_array(p.scales, names[1]))
        if p.zero_points is not None:
            new_inits.append(numpy_helper.from_array(p.zero_points, names[2]))
        return names

    # The lm_head / MatMul weights first, so a tied embedding can reuse them.
    with bar("int4 search", len(matmul_weights), "matrices") as progress:
        for weight in matmul_weights:
            w = numpy_helper.to_array(inits[weight]).astype(np.float32)
            packed[weight] = (
                quantizer(weight, w, importance.get(weight))
                if quantizer
                else quantize(w, block, importance.get(weight), symmetric)
            )
            progress.advance()
    if finish is not None:
        packed = finish(packed, lambda weight: numpy_helper.to_array(inits[weight]).astype(np.float32))
    names = {w: add_packed(w, p) for w, p in packed.items()}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    skip: set[int] = set()
    for node in graph.node:
        if id(node) in skip:
            continue
        if node.op_type == "MatMul" and node.input[1] in packed:
            p, (q, s, z) = packed[node.input[1]], names[node.input[1]]
            inputs = [node.input[0], q, s] + ([z] if z else [])
            new_nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    inputs,
                    list(node.output),
                    name=f"{node.name}_Q4",
                    domain="com.microsoft",
                    K=p.k,
                    N=p.scales.shape[0],
                    bits=p.bits,
                    block_size=p.block,
                    accuracy_level=accuracy_level,
                )
            )
            dropped.add(node.input[1])
            counts["matmul"] += 1
            continue
        if node.op_type == "Transpose" and node.input[0] in packed:
            # Tied embeddings: Transpose(lm_head weight) -> Gather(ids). Read the lm_head's codes instead.
            gathers = consumers.get(node.output[0], [])
            if len(gathers) == 1 and gathers[0].op_type == "Gather":
                new_nodes += _embedding_nodes(gathers[0], packed[node.input[0]], names[node.input[0]], new_inits)
                skip.add(id(gathers[0]))
                dropped.add(node.input[0])
                counts["embedding"] += 1
                continue
        if (
            node.op_type == "Gather"
            and node.input[0] in inits
            and len(inits[node.input[0]].dims) == 2
            and "embed" in node.name
        ):
            table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            p = quantize(table.T, block, None, symmetric)
            new_nodes += _embedding_nodes(node, p, add_packed(node.input[0], p), new_inits)
            dropped.add(node.input[0])
            counts["embedding"] += 1
            continue
        new_nodes.append(node)
    still_used = {i for n in new_nodes for i in n.input}
    kept = [i for i in graph.initializer if not (i.name in dropped and i.name not in still_used)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = model_dir / "model.onnx.data"
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    bits = sorted({p.bits for p in packed.values()})
    log(
        f"quantized {counts['matmul']} MatMul weights and {counts['embedding']} embedding table(s) to "
        f"{' and '.join(f'int{b}' for b in bits)}"
    )
    return counts


def _embedding_nodes(gather, p: Packed, names: tuple[str, str, str | None], new_inits: list) -> list:
    """Gather(table, ids) -> Reshape(codes) + GatherBlockQuantized [+ Slice of the block padding]."""
    from onnx import helper

    n, nb, half = p.codes.shape
    base = gather.name.rsplit("/", 1)[0]
    shape_name = f"{base}/quantized_shape"
    new_inits.append(_int64(shape_name, [n, nb * half]))
    nodes = [helper.make_node("Reshape", [names[0], shape_name], [f"{base}/Reshape/output_0"], name=f"{base}/Reshape")]
    inputs = [f"{base}/Reshape/output_0", gather.input[1], names[1]] + ([names[2]] if names[2] else [])
    padded = nb * p.block != p.k
    out = f"{base}/GatherBlockQuantized/output_0" if padded else gather.output[0]
    nodes.append(
        helper.make_node(
            "GatherBlockQuantized",
            inputs,
            [out],
            name=f"{base}/GatherBlockQuantized",
            domain="com.microsoft",
            bits=p.bits,
            block_size=p.block,
            gather_axis=0,
            quantize_axis=1,
        )
    )
    if padded:
        for name, value in (("starts", 0), ("ends", p.k), ("axes", -1)):
            new_inits.append(_int64(f"{base}/slice_{name}", [value]))
        nodes.append(
            helper.make_node(
                "Slice",
                [out, f"{base}/slice_starts", f"{base}/slice_ends", f"{base}/slice_axes"],
                [gather.output[0]],
                name=f"{base}/Slice",
            )
        )
    return nodes
