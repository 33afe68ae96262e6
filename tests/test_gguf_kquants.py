"""GGUF with measured types (quantize.method = "mixed" on the gguf target): K-quant super-blocks and
llama.cpp's 32-weight types written from calibrated codes bit for bit as ggml reads them, the types
chosen by cost per byte within llama.cpp Q4_K_M's bytes, and llama.cpp's importance matrix beside
the file."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.quantize.kmix import choose, llama_q4_k_m, quantize_on, row_bytes
from toolkit.quantize.kquants import KTYPES, kgrid, pack

MIXED = ("--set", "quantize.method=mixed", "--set", "quantize.lm_head=int4")


@pytest.mark.parametrize("kind", sorted(KTYPES))
def test_packed_blocks_are_what_ggml_dequantizes(kind):
    """Codes on the type's grid (scales and mins snapped as kgrid snaps them) packed into blocks that
    gguf-py's port of ggml's dequantizer reads back to the same weights."""
    t, rng = KTYPES[kind], np.random.default_rng(0)
    rows, k = 3, 512
    groups = k // t.group
    s = torch.from_numpy(rng.random((groups, rows)).astype(np.float32) * 0.05 + 0.001)
    half = 1 << (t.bits - 1)
    z = torch.full((groups, rows), float(half)) if t.symmetric else torch.from_numpy(rng.random((groups, rows)) * 15)
    s, z = (a.numpy().T for a in kgrid(kind)(s, z.float()))
    codes = rng.integers(0, 1 << t.bits, size=(rows, k)).astype(np.uint8)
    expect = ((codes.reshape(rows, groups, t.group) - z[..., None]) * s[..., None]).reshape(rows, k)
    data = pack(kind, codes, s, z)
    assert data.shape == (rows, row_bytes(k, kind))
    got = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind])
    assert np.allclose(got, expect, rtol=1e-6, atol=1e-7)


def test_gptq_on_a_k_quant_grid_lands_in_the_file_as_calibrated():
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.standard_normal((16, 512)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((1024, 512)).astype(np.float32))
    gram = x.T @ x / 1024
    errors = {}
    for kind in ("Q4_K", "Q5_K", "Q6_K"):
        grid = quantize_on(kind, w, gram)
        data = pack(kind, grid.codes, grid.scales, grid.zeros)
        got = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind])
        assert np.allclose(got, grid.dequantize().T, rtol=1e-5, atol=1e-6)
        errors[kind] = grid.errors.sum()
    assert errors["Q4_K"] > errors["Q5_K"] > errors["Q6_K"]  # more bits, less output error


def test_llama_cpps_q4_k_m_rules():
    from types import SimpleNamespace as T

    layers = 32
    tensors = [T(name="token_embd.weight", k=3072, stage=-1, rows=32064)]
    for i in range(layers):
        tensors += [
            T(name=f"blk.{i}.{n}.weight", k=k, stage=i, rows=1) for n, k in (("attn_qkv", 3072), ("ffn_down", 8192))
        ]
    tensors += [T(name="output.weight", k=3072, stage=layers, rows=32064)]
    types = llama_q4_k_m(tensors, layers, tied=False)
    assert types["token_embd.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"
    assert {types[f"blk.{i}.attn_qkv.weight"] for i in range(layers)} == {"Q5_K"}
    six = [i for i in range(layers) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert six == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # first and last 8th, every third
    smol = llama_q4_k_m([T(name="token_embd.weight", k=576, stage=30, rows=1)], 30, tied=True)
    assert smol == {"token_embd.weight": "Q8_0"}  # a tied output on rows of 576: no K-quant


def test_types_are_chosen_by_cost_per_byte_within_the_budget():
    options = {
        "a": [("Q4_K", 100, 10.0), ("Q6_K", 150, 1.0)],  # 0.18 saved per byte
        "b": [("Q4_K", 100, 10.0), ("Q5_K", 120, 6.0), ("Q6_K", 150, 5.5)],  # 0.2 per byte for Q5_K
    }
    assert choose(options, 200) == ({"a": "Q4_K", "b": "Q4_K"}, 200)
    assert choose(options, 220) == ({"a": "Q4_K", "b": "Q5_K"}, 220)
    assert choose(options, 270) == ({"a": "Q6_K", "b": "Q5_K"}, 270)


def ggml_gguf(path: Path) -> dict:
    """The keys and tensors of a GGUF file as ggml's own reader (llama-cpp-python's libggml-base,
    the gguf_init_from_file that llama.cpp's imatrix loader calls) sees them."""
    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    for name, res in (
        ("gguf_get_n_tensors", ctypes.c_int64),
        ("gguf_get_tensor_name", ctypes.c_char_p),
        ("gguf_get_tensor_type", ctypes.c_int),
        ("gguf_find_key", ctypes.c_int64),
    ):
        getattr(lib, name).restype = res
    ctx = lib.gguf_init_from_file(str(path).encode(), Params(True, None))
    assert ctx, f"ggml cannot read {path}"
    c = ctypes.c_void_p(ctx)
    n = lib.gguf_get_n_tensors(c)
    tensors = {
        lib.gguf_get_tensor_name(c, ctypes.c_int64(i)).decode(): lib.gguf_get_tensor_type(c, ctypes.c_int64(i))
        for i in range(n)
    }
    keys = {
        k: lib.gguf_find_key(c, k.encode()) != -1
        for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
    }
    lib.gguf_free(c)
    return {"tensors": tensors, "keys": keys}


@pytest.fixture(scope="module")
def wide_phi3(tmp_path_factory) -> Path:
    """A 2-layer Phi-3.5-shaped checkpoint 256 wide (random weights): matrices of whole super-blocks."""
    from toolkit.tiny.phi3 import make_random_phi3

    out = tmp_path_factory.mktemp("models") / "phi3-256"
    make_random_phi3(out, 2, hidden=256, heads=4, intermediate=512, vocab=1024)
    return out


@pytest.mark.parametrize("variant", ["wide_phi3", "tiny_llama"])
def test_a_mixed_gguf_bundle_fits_q4_k_m_and_passes_in_llama_cpp(request, variant, tmp_path):
    """K-quants where rows are whole super-blocks (the 256-wide Phi-3.5 shape), 32-weight types
    where not (the tiny Llama's 64): the file stays within llama.cpp Q4_K_M's bytes for the same
    tensors, passes its smoke test in llama.cpp, and its importance matrix reads as llama.cpp reads one."""
    model = request.getfixturevalue(variant)
    out = tmp_path / "b"
    extra = (
        ["--set", "verify.min_top1_agreement=0", "--set", "verify.min_greedy_prefix=1"]
        if variant == "wide_phi3"
        else []
    )
    extra += (
        ["--set", "optimize.context_cap=2048", "--set", "verify.chat_prompts=[]"] if variant == "tiny_llama" else []
    )
    result = CliRunner().invoke(main, ["build", "-m", str(model), "-t", "gguf", "-o", str(out), *MIXED, *extra])
    assert result.exit_code == 0, result.output
    assert "types by measured cost per byte" in result.output
    planned = json.loads((out / "model" / "gguf.json").read_text())["tensors"]
    matrices = {n: t for n, t in planned.items() if len(t["shape"]) == 2}
    kinds = {t["type"] for t in matrices.values()}
    assert kinds <= ({"Q4_K", "Q5_K", "Q6_K", "Q8_0"} if variant == "wide_phi3" else {"Q4_0", "Q5_0", "Q8_0"})
    from types import SimpleNamespace as T

    listed = [
        T(name=n, k=t["shape"][1], rows=t["shape"][0], stage=int(n.split(".")[1]) if n.startswith("blk.") else 99)
        for n, t in matrices.items()
    ]
    llama = llama_q4_k_m(listed, 2, tied="output.weight" not in planned)
    used = sum(t.rows * row_bytes(t.k, matrices[t.name]["type"]) for t in listed)
    assert used <= sum(t.rows * row_bytes(t.k, llama[t.name]) for t in listed)
    host = json.loads((out / "manifest.json").read_text())["verification"]["host"]
    assert host["failed"] == 0
    imatrix = ggml_gguf(out / "model" / "model.imatrix.gguf")
    assert all(imatrix["keys"].values())
    stats = {n.rsplit(".", 1)[0] for n in imatrix["tensors"]}
    with_stats = {n for n in matrices if n != "token_embd.weight" or "output.weight" not in planned}
    assert stats == with_stats
    assert set(imatrix["tensors"].values()) == {0}  # every one F32


def test_a_byte_target_buys_wider_gguf_types(tiny_llama, tmp_path):
    """quantize.target_mb instead of Q4_K_M's bytes: a larger target gives more 8-bit matrices and a
    file within it; one below the smallest types is refused with their size."""
    from toolkit.build import plan_build
    from toolkit.errors import ConfigError
    from toolkit.families import open_checkpoint
    from toolkit.formats import format_of

    src = open_checkpoint(str(tiny_llama))
    sets = ("optimize.context_cap=2048", "quantize.method=mixed", "quantize.lm_head=int4")
    eights, sizes = {}, {}
    for target in (0.0, 0.3):
        plan = plan_build(src, "smollm2/gguf", None, (*sets, f"quantize.target_mb={target}"))
        folder = format_of(plan).export(src, plan, tmp_path / str(target), lambda _: None, "")
        planned = json.loads((folder / "gguf.json").read_text())["tensors"]
        eights[target] = sum(t["type"] == "Q8_0" for t in planned.values())
        sizes[target] = (folder / "model.gguf").stat().st_size
    assert eights[0.0] < eights[0.3] and sizes[0.0] < sizes[0.3]
    plan = plan_build(src, "smollm2/gguf", None, (*sets, "quantize.target_mb=0.01"))
    with pytest.raises(ConfigError, match=r"quantize.target_mb = 0.01 is below the 0\.\d MB of this model in its"):
        format_of(plan).export(src, plan, tmp_path / "small", lambda _: None, "")
