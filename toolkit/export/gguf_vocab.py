"""The tokenizer inside a GGUF file, from the checkpoint's tokenizer.json, so that llama.cpp (and
Ollama, LM Studio) tokenizes prompts as transformers does:

- Llama / Phi-3 style (BPE over U+2581 pieces with byte fallback): llama.cpp's `llama`
  (SentencePiece) tokenizer. It merges the pair whose joined token scores highest, so a token's
  score is minus the rank of the merge that makes it (earlier merges first, as in BPE).
- GPT-2 style (byte-level BPE: SmolLM2, Phi-4-mini): llama.cpp's `gpt2` tokenizer with the merges
  and the pre-tokenizer llama.cpp knows by name for the checkpoint's splitting rule.

Special token ids, add_bos/add_eos and the chat template come from gguf-py's SpecialVocab, which
reads tokenizer.json, tokenizer_config.json and config.json as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import InputModelError

# tokenizer.json pre_tokenizer -> llama.cpp's pre-tokenizer name (llama-vocab.cpp), the ones whose
# splitting rule is the same: GPT-2's regex, GPT-2's after single digits, GPT-4o's.
GPT2 = {"type": "ByteLevel", "use_regex": True}
GPT4O_START = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"


# llama.cpp strips the whitespace after every special token of a model whose general.name contains
# one of these (llama-vocab.cpp), as Phi-3's tokenizer.json asks with rstrip; no other key says it.
STRIP_NAMES = ("phi-3", "phi3")


def model_name(name: str, source: Path) -> str:
    """general.name for llama.cpp: the checkpoint's folder name, adjusted so that llama.cpp strips
    whitespace after special tokens exactly when the checkpoint's tokenizer does (rstrip)."""
    added = json.loads((source / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    strips = [t for t in added if t.get("special") and t.get("rstrip")]
    named = any(n in name.lower() for n in STRIP_NAMES)
    if strips and not named:
        return f"{name} (phi3 tokenizer)"
    if named and not strips:
        for n in STRIP_NAMES:  # keep it readable: "Phi-3.5-x" becomes "Phi 3.5-x"
            i = name.lower().find(n)
            while i >= 0:
                name = name[:i] + name[i : i + len(n)].replace("-", " ").replace("i3", "i 3") + name[i + len(n) :]
                i = name.lower().find(n)
    return name


def add_vocab(w: Any, source: Path, vocab_size: int) -> str:
    """Write the tokenizer keys on gguf-py's writer `w`; returns llama.cpp's tokenizer model name."""
    import gguf

    path = source / "tokenizer.json"
    if not path.is_file():
        raise InputModelError(f"{source} has no tokenizer.json: the GGUF target writes the tokenizer from it.")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InputModelError(f"{path}: a {model.get('type')} tokenizer; the GGUF target writes BPE tokenizers.")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens, types = _tokens(data, vocab_size)
    if model.get("byte_fallback"):
        kind = "llama"
        w.add_tokenizer_model(kind)
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(_scores(tokens, merges))
        w.add_token_types(types)
    else:
        kind = "gpt2"
        w.add_tokenizer_model(kind)
        w.add_tokenizer_pre(_pre_tokenizer(path, data.get("pre_tokenizer")))
        w.add_token_list(tokens)
        w.add_token_types(types)
    special = gguf.SpecialVocab(source, load_merges=kind == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)
    return kind


def _tokens(data: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's text and llama.cpp token type, padded to the model's vocabulary (the embedding
    may have more rows than the tokenizer has tokens)."""
    import gguf

    vocab: dict[str, int] = dict(data["model"]["vocab"])
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            types[i] = int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types[i] = int(gguf.TokenType.BYTE)
        else:
            types[i] = int(gguf.TokenType.NORMAL)
    return tokens, types


def _scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the merge that makes each token (0 for tokens no merge makes)."""
    index = {t: i for i, t in enumerate(tokens)}
    scores = [0.0] * len(tokens)
    for rank, merge in enumerate(merges):
        joined = merge.replace(" ", "", 1)
        i = index.get(joined)
        if i is not None and scores[i] == 0.0:
            scores[i] = -float(rank + 1)
    return scores


def _pre_tokenizer(path: Path, pre: dict[str, Any] | None) -> str:
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if len(steps) == 1 and all(steps[0].get(k) == v for k, v in GPT2.items()):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and str(steps[0].get("pattern", {}).get("Regex", "")).startswith(GPT4O_START):
        return "gpt-4o"
    raise InputModelError(
        f"{path}: a byte-level BPE tokenizer whose pre-tokenizer ({', '.join(map(str, kinds)) or 'none'}) is not "
        "one llama.cpp knows by name (GPT-2's regex, GPT-2's after single digits, GPT-4o's): a GGUF file would "
        "tokenize prompts differently from the checkpoint. Use an ONNX target (--target cpu)."
    )
