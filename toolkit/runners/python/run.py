#!/usr/bin/env python3
"""Minimal streaming generator for this bundle. Needs only onnxruntime-genai (the package named in
../README.md for this target) and numpy; slmkit is not needed.

    python runner/run.py --prompt "What is the capital of France?"
    python runner/run.py --chat                       # multi-turn, reads lines from stdin
    python runner/run.py --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
# Phi-3 chat format, used when the tokenizer carries no chat template.
PHI3_TURN = "<|{role}|>\n{content}<|end|>\n"


def load_model(model_dir: Path, provider: str = "bundle"):
    """Load the model with the bundle's own provider, or force one ('cpu', 'cuda', 'dml')."""
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    if provider != "bundle":
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
    return og.Model(config)


def genai_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))


def eos_ids(model_dir: Path) -> list[int]:
    eos = genai_config(model_dir)["model"]["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def format_chat(tokenizer, messages: list[dict]) -> str:
    try:
        text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        if text:
            return text
    except Exception:  # no template in the tokenizer files: use the Phi-3 format below
        pass
    return "".join(PHI3_TURN.format(**m) for m in messages) + "<|assistant|>\n"


def generate(model, tokenizer, prompt_ids, cap: int, stop_ids: list[int], *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, on_token=None):
    """Greedy when temperature is 0. Stops at any EOS id, after max_new_tokens, or at the cap."""
    import numpy as np
    import onnxruntime_genai as og

    if len(prompt_ids) >= cap:
        raise SystemExit(
            f"The prompt has {len(prompt_ids)} tokens; this bundle's context cap is {cap} "
            "(search.max_length in model/genai_config.json). Shorten the prompt."
        )
    params = og.GeneratorParams(model)
    options = {"max_length": min(cap, len(prompt_ids) + max_new_tokens), "batch_size": 1}
    if temperature > 0:
        # top_k always set: left unset, onnxruntime-genai samples from the top 50; 0 is no limit.
        options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k, random_seed=seed)
    else:
        options.update(do_sample=False)
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in stop_ids:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out


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
    p.add_argument("--provider", default="bundle", choices=["bundle", "cpu", "cuda", "dml"],
                   help="execution provider (default: the one the bundle was built for)")
    args = p.parse_args(argv)
    if not args.prompt and not args.chat:
        p.error("give --prompt TEXT or --chat")

    import onnxruntime_genai as og

    model = load_model(args.model, args.provider)
    tokenizer = og.Tokenizer(model)
    cap = genai_config(args.model)["search"]["max_length"]
    stops = eos_ids(args.model)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(user_text: str) -> str:
        if args.raw:
            text = user_text
        else:
            history.append({"role": "user", "content": user_text})
            text = format_chat(tokenizer, history)
        stream = tokenizer.create_stream()
        emit = lambda t: print(stream.decode(t), end="", flush=True)  # noqa: E731
        tokens = generate(model, tokenizer, tokenizer.encode(text), cap, stops,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed, on_token=emit)
        print(flush=True)
        reply = tokenizer.decode(tokens)
        if not args.raw:
            history.append({"role": "assistant", "content": reply})
        return reply

    if args.prompt:
        answer(args.prompt)
    if args.chat:
        for line in sys.stdin:
            if not line.strip():
                break
            answer(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
