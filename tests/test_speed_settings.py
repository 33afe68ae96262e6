"""What the optimize stage does for speed and size, each read back: the long rope caches dropped
where the context cap never reaches them, and the onnxruntime threads the target asks for."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_stream import logits

from toolkit.export import optimize
from toolkit.export.stream import export_stream
from toolkit.families import open_checkpoint
from toolkit.plan.config import ExportConfig, OptimizeConfig, QuantizeConfig


@pytest.fixture(scope="module")
def exported(tiny35, tmp_path_factory) -> Path:
    """The tiny Phi-3.5 model's int4 cpu graph as the export writes it (both longrope cache pairs)."""
    src = open_checkpoint(str(tiny35))
    work = tmp_path_factory.mktemp("export")
    return export_stream(src.path, src.weight_files, src.config, ExportConfig(precision="int4"), QuantizeConfig(), work)


def _rope_if(folder: Path) -> list[onnx.NodeProto]:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return [n for n in graph.node if n.op_type == "If"]


def test_long_rope_caches_go_where_the_cap_never_reads_them(exported, tmp_path):
    trimmed = shutil.copytree(exported, tmp_path / "trimmed")
    before = (trimmed / "model.onnx").stat().st_size
    assert optimize.trim_rope_caches(trimmed, OptimizeConfig(context_cap=8192)) == 0  # past the short pair
    assert len(_rope_if(trimmed)) == 1
    dropped = optimize.trim_rope_caches(trimmed, OptimizeConfig(context_cap=4096))
    assert dropped > 0 and (trimmed / "model.onnx").stat().st_size == before - dropped
    assert _rope_if(trimmed) == []
    graph = onnx.load(str(trimmed / "model.onnx"), load_external_data=False).graph
    assert not [n for n in graph.node if n.op_type == "Greater" and "rope_caches" in n.name]  # its condition too
    ids = list(range(3, 40))
    np.testing.assert_array_equal(logits(trimmed, ids), logits(exported, ids))


def test_read_back_names_what_did_not_take(exported, tiny35, tmp_path):
    from toolkit.build import plan_build

    src = open_checkpoint(str(tiny35))
    plan = plan_build(src, None, "cpu", ())
    plan = replace(plan, quantize=QuantizeConfig(), optimize=replace(plan.optimize, intra_op_threads=0))
    folder = shutil.copytree(exported, tmp_path / "m")
    optimize.apply_context_cap(folder, plan.optimize)
    problems = optimize.setting_mismatches(folder, plan, src.config["architectures"][0])
    assert any("still holds the long rope caches, which a context cap of 4096 never reads" in p for p in problems)
    assert "session_options.intra_op_num_threads = unset, requested 0" in problems
    optimize.trim_rope_caches(folder, plan.optimize)
    optimize.apply_threads(folder, plan.optimize)
    assert optimize.setting_mismatches(folder, plan, src.config["architectures"][0]) == []
    genai = json.loads((folder / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 0


def test_thread_default_is_left_to_onnxruntime_genai(exported, tmp_path):
    folder = shutil.copytree(exported, tmp_path / "m")
    before = (folder / "genai_config.json").read_bytes()
    optimize.apply_threads(folder, OptimizeConfig())  # -1: the phones' setting
    assert (folder / "genai_config.json").read_bytes() == before


def test_cuda_graph_is_refused_off_the_cuda_provider(tiny35):
    from click.testing import CliRunner

    from toolkit.cli import main

    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "cpu", "--set", "optimize.cuda_graph=true"])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert (
        "Error: optimize.cuda_graph captures the decode step of the CUDA provider; this plan runs on 'cpu'. "
        "Use --target linux-cuda, or --set optimize.cuda_graph=false." in result.output
    )
