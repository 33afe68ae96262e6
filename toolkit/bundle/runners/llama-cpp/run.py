#!/usr/bin/env python3
"""Minimal streaming generator for this GGUF bundle with llama.cpp's Python binding
(pip install llama-cpp-python numpy); slmkit is not needed. Ollama: see ../README.md.

    python runner/run.py --prompt "What is the capital of France?"
    python runner/run.py --chat                       # multi-turn, reads lines from stdin
    python runner/run.py --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1
    python runner/run.py --adapter support --prompt "..."   # a bundle with LoRA adapters (model/adapters/)

In --chat, a line "/adapter NAME" switches to that adapter ("/adapter" alone: the base model) without
reloading the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


def settings(model_dir: Path) -> dict:
    """model/gguf.json: the context cap, the stop ids, each tensor's type."""
    return json.loads((model_dir / "gguf.json").read_text(encoding="utf-8"))


def load_model(model_dir: Path, n_ctx: int | None = None, logits_all: bool = False):
    """llama.cpp on the bundle's model.gguf, one thread per core, its log quiet."""
    from llama_cpp import Llama

    return Llama(model_path=str(model_dir / "model.gguf"), n_ctx=n_ctx or settings(model_dir)["context_cap"],
                 n_threads=os.cpu_count(), logits_all=logits_all, verbose=False)


def load_adapters(llm, model_dir: Path) -> dict:
    """Every model/adapters/NAME.gguf (llama.cpp LoRA files) loaded onto the model, by NAME."""
    import llama_cpp

    folder = model_dir / "adapters"
    found = {}
    for path in sorted(folder.glob("*.gguf")) if folder.is_dir() else []:
        handle = llama_cpp.llama_adapter_lora_init(llm.model, str(path).encode("utf-8"))
        if not handle:
            raise RuntimeError(f"llama.cpp could not load the LoRA adapter {path}")
        found[path.stem] = handle  # freed with the model
    return found


def use_adapter(llm, adapters: dict, name: str | None) -> None:
    """Make adapter `name` the one llama.cpp applies (None: the base model); the context's cached
    tokens were computed with another one, so they are dropped."""
    import ctypes

    import llama_cpp

    if name and name not in adapters:
        raise SystemExit(f"--adapter {name}: this bundle's adapters are {', '.join(adapters) or 'none'} "
                         "(model/adapters/).")
    if name:
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapters[name])
        llama_cpp.llama_set_adapters_lora(llm.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
    else:
        llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    llm.reset()
    llm._ctx.kv_cache_clear()


def last_logits(llm):
    """The logits after the last token evaluated (llama.cpp keeps them without logits_all)."""
    import llama_cpp
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def tokenize(llm, text: str, chat: bool) -> list[int]:
    """A prompt's ids as transformers makes them: plain text with the tokenizer's BOS (if it adds
    one), a chat-formatted text as it is (the chat template writes its own markers)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=not chat and llm._model.add_bos_token(), special=True)


def generate(llm, prompt_ids: list[int], stop_ids: list[int], *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, on_token=None) -> list[int]:
    """Greedy when temperature is 0 (the argmax of each step's logits). Stops at any stop id, after
    max_new_tokens, or at the context cap."""
    import numpy as np

    cap = llm.n_ctx()
    if len(prompt_ids) >= cap:
        raise SystemExit(f"The prompt has {len(prompt_ids)} tokens; this bundle's context cap is {cap}. "
                         "Shorten the prompt.")
    rng = np.random.default_rng(seed)
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens and llm.n_tokens < cap:
        logits = last_logits(llm).astype(np.float64)
        token = int(logits.argmax()) if temperature <= 0 else sample(logits, temperature, top_p, top_k, rng)
        if token in stop_ids:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        llm.eval([token])
    return out


def sample(logits, temperature: float, top_p: float, top_k: int, rng) -> int:
    import numpy as np

    order = np.argsort(-logits)[: top_k or None]
    p = np.exp((logits[order] - logits[order[0]]) / temperature)
    p /= p.sum()
    keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
    return int(rng.choice(order[:keep], p=p[:keep] / p[:keep].sum()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: the bundle's)")
    p.add_argument("--prompt", help="one user message; the answer is streamed to stdout")
    p.add_argument("--chat", action="store_true", help="multi-turn chat on stdin (empty line or EOF ends)")
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--raw", action="store_true", help="complete --prompt as plain text, no chat template")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", help="the LoRA adapter to answer with (model/adapters/NAME.gguf)")
    args = p.parse_args(argv)
    if not args.prompt and not args.chat:
        p.error("give --prompt TEXT or --chat")

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load_model(args.model)
    stops = settings(args.model)["stop_ids"]
    template = llm.metadata.get("tokenizer.chat_template")
    history = [{"role": "system", "content": args.system}] if args.system else []
    adapters = load_adapters(llm, args.model)
    use_adapter(llm, adapters, args.adapter)

    def answer(user_text: str) -> str:
        if args.raw or not template:
            text, chat = user_text, False
        else:
            history.append({"role": "user", "content": user_text})
            fmt = Jinja2ChatFormatter(template, eos_token="", bos_token="", add_generation_prompt=True)
            text, chat = fmt(messages=history).prompt, True
        pieces = bytearray()

        def emit(token: int) -> None:
            pieces.extend(llm.detokenize([token]))
            try:
                print(pieces.decode("utf-8"), end="", flush=True)
                pieces.clear()
            except UnicodeDecodeError:  # a character split over byte tokens: wait for the rest
                pass

        tokens = generate(llm, tokenize(llm, text, chat), stops, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                          on_token=emit)
        print(flush=True)
        reply = llm.detokenize(tokens).decode("utf-8", errors="replace")
        if not args.raw and template:
            history.append({"role": "assistant", "content": reply})
        return reply

    if args.prompt:
        answer(args.prompt)
    if args.chat:
        for line in sys.stdin:
            if not line.strip():
                break
            if line.startswith("/adapter"):
                name = line[len("/adapter"):].strip() or None
                use_adapter(llm, adapters, name)
                print(f"[{name or 'base model'}]", flush=True)
                continue
            answer(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
