"""llama.cpp as the peer of a benchmark, on the same weights: its own converter
(convert_hf_to_gguf.py from the source package of the installed llama-cpp-python) and its own
quantizer (llama_model_quantize, what `llama-quantize IN OUT Q4_0` runs).

A Phi-3 checkpoint goes through the converter's Phi3 vocabulary code, which reads a SentencePiece
`tokenizer.model` (only GPT2Tokenizer checkpoints are read from tokenizer.json). The random
real-shaped checkpoints (toolkit.tiny.phi3.make_random_phi3) carry a tokenizer.json only:
`sentencepiece_model` maps it to one, piece for piece (same ids, bytes as BYTE pieces, the special
tokens as control pieces, scores by merge order), so the GGUF has the checkpoint's own vocabulary.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".slmkit-cache"
FTYPES = ("Q4_0", "Q4_1", "Q4_K_M", "Q8_0")


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py from the source package of the installed llama-cpp-python
    (pip downloads the sdist once into .slmkit-cache)."""
    version = metadata.version("llama-cpp-python")
    folder = CACHE / f"llama_cpp_python-{version}"
    script = folder / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(CACHE),
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
        with tarfile.open(CACHE / f"llama_cpp_python-{version}.tar.gz") as tar:
            tar.extractall(CACHE, filter="data")
    return script


def convert(model: Path, out: Path, outtype: str = "f32") -> Path:
    """The checkpoint as one GGUF file of float weights (`outtype` f32, bf16 or f16)."""
    script = converter()
    env = dict(os.environ, PYTHONPATH=str(script.parent / "gguf-py"))
    done = subprocess.run(
        [sys.executable, str(script), str(model), "--outtype", outtype, "--outfile", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py {model.name} failed:\n{done.stderr[-2000:]}")
    return out


def quantize(src: Path, out: Path, ftype: str, allow_requantize: bool = False) -> Path:
    """llama.cpp's own quantizer on a GGUF file: `ftype` one of FTYPES (Q4_K_M: its mix of Q4_K
    and Q6_K). With allow_requantize an already quantized input is dequantized first."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"llama_model_quantize({src.name} -> {ftype}) returned {rc}")
    return out


def sentencepiece_model(folder: Path) -> Path:
    """Write folder/tokenizer.model, the SentencePiece form of the folder's byte-fallback BPE
    tokenizer.json (Llama / Phi-3 layout): every token keeps its id; <unk> is the unknown piece,
    <s>, </s> and the added special tokens control pieces, <0xNN> byte pieces; a BPE piece scores
    minus its merge rank, as SentencePiece BPE models score merges."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    data = json.loads((folder / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    specials = {t["content"] for t in data["added_tokens"] if t.get("special")}
    for t in data["added_tokens"]:
        vocab.setdefault(t["content"], t["id"])
    merges = data["model"].get("merges", [])
    rank = {"".join(m.split(" ") if isinstance(m, str) else m): i for i, m in enumerate(merges)}
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{folder / 'tokenizer.json'}: token ids are not 0..{len(ids) - 1}")
    piece = spm.ModelProto.SentencePiece
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(ids)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.escape_whitespaces = True
    unk = data["model"].get("unk_token") or "<unk>"
    for text, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        p = proto.pieces.add()
        p.piece = text
        if text == unk:
            p.type, p.score = piece.UNKNOWN, 0.0
            proto.trainer_spec.unk_id = vocab[text]
        elif text in specials:
            p.type, p.score = piece.CONTROL, 0.0
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            p.type, p.score = piece.BYTE, 0.0
        else:
            p.type, p.score = piece.NORMAL, -float(rank.get(text, 0))
    for name, attr in (("<s>", "bos_id"), ("</s>", "eos_id")):
        setattr(proto.trainer_spec, attr, vocab.get(name, -1))
    proto.trainer_spec.pad_id = -1
    out = folder / "tokenizer.model"
    out.write_bytes(proto.SerializeToString())
    return out
