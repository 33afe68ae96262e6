"""What the tiny test checkpoints share (toolkit/tiny/): a Llama-style byte-fallback BPE tokenizer
with Phi-3's special tokens and chat template, trained on slmkit's own text; a few seconds of
training so that greedy outputs are confident; random bf16 safetensors written one tensor at a
time for the real-shaped benchmark checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..data import chat_pairs, corpus

# Phi-3's added tokens, in Phi-3's order (32000 <|endoftext|> ... 32010 <|user|>).
PHI3_SPECIALS = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]


PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


BPE_VOCAB = 600  # before the added tokens; the model's vocab is padded to 640 like Phi-3's 32064


def make_tokenizer(out: Path) -> int:
    """Write tokenizer.json + tokenizer_config.json; return the number of tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    # Merges never cross punctuation or digits: onnxruntime-genai's tokenizer and HF's then agree.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False
    )
    lines = corpus().splitlines() + [q for pair in chat_pairs() for q in pair]
    tok.train_from_iterator(lines, trainer)
    # Turn the trained tokenizer into the layout of Llama/Phi-3's tokenizer.json: byte tokens are
    # plain vocabulary, spaces become U+2581 in a normalizer, no pre-tokenizer.
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    data["pre_tokenizer"] = None
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PHI3_SPECIALS])
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "legacy": False,
        "model_max_length": 131072,
        "chat_template": PHI3_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tok.get_vocab_size()


def train(model: Any, tokenizer: Any, steps: int) -> Any:
    """A few hundred AdamW steps on the embedded text and chat pairs (64-token windows, batch 16)."""
    import torch

    stream = tokenizer(corpus()).input_ids
    for question, answer in chat_pairs():
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        stream += tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq, batch = 64, 16
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def fresh_folder(out: Path) -> Path:
    """`out`, empty (replaced if present), with transformers' logging quieted for what follows."""
    from ..source.hf import quiet

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    quiet()
    return out


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Random bf16 tensors of these shapes (norm weights near 1, matrices scaled by 1/sqrt(fan-in)),
    written one at a time. Returns the parameter count."""
    import numpy as np

    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            if len(shape) == 1:
                values = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(1 / np.sqrt(shape[1]))
            f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    return sum(int(np.prod(s)) for s in shapes.values())
