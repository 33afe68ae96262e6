#!/usr/bin/env python3
"""Minimal streaming generator for this bundle. Needs only onnxruntime-genai (the package named in
../README.md for this target) and numpy; slmkit is not needed.

    python runner/run.py --prompt "What is the capital of France?"
    python runner/run.py --chat                       # multi-turn, reads lines from stdin
    python runner/run.py --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1
    python runner/run.py --image photo.jpg --prompt "What is in this picture?"   # vision (phi3v) bundles
    python runner/run.py --adapter support --prompt "..."   # a bundle with runtime LoRA adapters (model/adapters/)

In --chat, a line "/adapter NAME" switches to that adapter ("/adapter" alone: the base model) without
reloading the model.

Hexagon NPU (snapdragon) bundles also need onnxruntime-qnn, whose execution provider this runner
registers with onnxruntime-genai before the model loads.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
# Phi-3 chat format, used when the tokenizer carries no chat template.
PHI3_TURN = "<|{role}|>\n{content}<|end|>\n"
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
# What onnxruntime-genai's image decoder reads, by the first bytes of the file.
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


_REGISTERED = []


def uses_qnn(model_dir: Path) -> bool:
    options = genai_config(model_dir)["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    return any("qnn" in entry or "QNN" in entry for entry in options)


def register_qnn(model_dir: Path) -> None:
    """onnxruntime-qnn's execution provider is a plugin: onnxruntime-genai loads it from its library.
    The x86-64 build of its HTP backend cannot load weight-shared context binaries."""
    import onnxruntime_genai as og

    try:
        import onnxruntime_qnn
    except ImportError:
        raise SystemExit("This bundle runs on the Hexagon NPU through onnxruntime-qnn, which is not installed: "
                         "pip install onnxruntime-qnn (see ../README.md for the version).") from None
    npu = json.loads((model_dir / "npu.json").read_text(encoding="utf-8"))
    if npu.get("weight_sharing") and platform.machine().lower() in ("x86_64", "amd64"):
        raise SystemExit("This bundle's context binaries share their weights between the prompt and token graphs, "
                         "which the Hexagon NPU loads and the x86-64 HTP backend of onnxruntime-qnn does not. Run it "
                         "on the Snapdragon device (ARM64), or rebuild with --set npu.weight_sharing=false.")
    if not _REGISTERED:
        og.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
        _REGISTERED.append(True)


def window(model_dir: Path) -> int:
    """Tokens the prompt goes through a step at a time (an NPU bundle's static prompt graph), else 0.
    (A sliding_window section that does not slide the inputs is the model's attention window.)"""
    sliding = genai_config(model_dir)["model"]["decoder"].get("sliding_window") or {}
    return sliding.get("window_size", 0) if sliding.get("slide_inputs") else 0


def load_model(model_dir: Path, provider: str = "bundle"):
    """Load the model with the bundle's own provider, or force one ('cpu', 'cuda', 'dml')."""
    import onnxruntime_genai as og

    if uses_qnn(model_dir):
        if provider not in ("bundle", "qnn"):
            raise SystemExit(f"--provider {provider}: this bundle's graphs are compiled for the Hexagon NPU (QNN); "
                             "they run with its provider only.")
        register_qnn(model_dir)
        provider = "bundle"
    config = og.Config(str(model_dir))
    if provider != "bundle":
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
    return og.Model(config)


def load_adapters(model, model_dir: Path):
    """(onnxruntime-genai Adapters with every model/adapters/NAME.onnx_adapter loaded as NAME, the
    names); (None, []) for a bundle without runtime adapters."""
    import onnxruntime_genai as og

    folder = model_dir / "adapters"
    names = sorted(p.name[: -len(".onnx_adapter")] for p in folder.glob("*.onnx_adapter")) if folder.is_dir() else []
    if not names:
        return None, []
    adapters = og.Adapters(model)
    for name in names:
        adapters.load(str(folder / f"{name}.onnx_adapter"), name)
    return adapters, names


def pick_adapter(adapters, names: list[str], name: str | None):
    """(adapters, name) for generate(), or None for the base model; a name the bundle lacks exits."""
    if not name:
        return None
    if name not in names:
        raise SystemExit(f"--adapter {name}: this bundle's adapters are {', '.join(names) or 'none'} (model/adapters/).")
    return adapters, name


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


def tag_images(text: str, count: int) -> str:
    """The prompt with one <|image_N|> tag per image: added in front when it has none, else checked."""
    tags = [int(t) for t in IMAGE_TAG.findall(text)]
    if not tags:
        return "".join(f"<|image_{i}|>\n" for i in range(1, count + 1)) + text
    if sorted(set(tags)) != list(range(1, count + 1)):
        found = ", ".join(f"<|image_{t}|>" for t in tags)
        raise SystemExit(f"The prompt's image tags ({found}) do not match the {count} image(s) given with --image: "
                         f"write <|image_1|> to <|image_{count}|>, one per image, or no tags (they are then added).")
    return text


def open_images(model_dir: Path, paths: list[Path]):
    """og.Images of the files, refused before generation when the bundle takes no images or a file
    is not a PNG or JPEG picture."""
    import onnxruntime_genai as og

    kind = genai_config(model_dir)["model"]["type"]
    if kind != "phi3v":
        raise SystemExit(f"--image: this bundle's model ({kind}) reads text only. Images need a bundle built "
                         "from a vision model (Phi-3.5-vision: model type phi3v).")
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise SystemExit(f"--image {path}: cannot read it ({e.strerror}).") from None
        if not any(head.startswith(magic) for magic in IMAGE_MAGIC):
            raise SystemExit(f"--image {path}: not a PNG or JPEG image (its first bytes are {head[:4]!r}). "
                             "Convert it to PNG or JPEG.")
    return og.Images.open(*[str(p) for p in paths])  # decoded by the processor: image_inputs


def image_inputs(model, text: str, images):
    """The runtime processor's inputs (input_ids with each image's tokens as negative ids, pixel_values,
    image_sizes) for a prompt and its images."""
    try:
        return model.create_multimodal_processor()(text, images=images)
    except RuntimeError as e:
        if "Image" not in str(e):
            raise
        raise SystemExit(f"--image: the image decoder cannot read the picture ({e}). Is the file complete?") from None


def append_prompt(generator, prompt_ids, first_alone: bool = False) -> None:
    """The prompt's ids into the generator; with `first_alone`, its first token in a run of its own
    (a web bundle's WASM graph, as its page runs it)."""
    import numpy as np

    if first_alone and len(prompt_ids) > 1:
        generator.append_tokens(np.asarray(prompt_ids[:1], dtype=np.int32))
        prompt_ids = prompt_ids[1:]
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))


def generate(model, tokenizer, prompt_ids, cap: int, stop_ids: list[int], *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, on_token=None,
             inputs=None, window: int = 0, adapter=None, first_alone: bool = False):
    """Greedy when temperature is 0. Stops at any EOS id, after max_new_tokens, or at the cap.
    `inputs` (from image_inputs) replace prompt_ids for a prompt with images. `window`: the prompt
    goes through in steps of this many tokens, the last one padded (an NPU bundle). `adapter`:
    (Adapters, name) from pick_adapter, active for this generation. `first_alone`: the prompt's
    first token in a run of its own (a web bundle's WASM graph, as its page runs it)."""
    import onnxruntime_genai as og

    if inputs is not None:
        prompt_ids = [int(t) for t in inputs["input_ids"].as_numpy()[0]]
    room = len(prompt_ids) + (-len(prompt_ids) % window if window else 0)
    if room >= cap:
        images = sum(t < 0 for t in prompt_ids)
        raise SystemExit(
            f"The prompt has {len(prompt_ids)} tokens{f' ({images} of them for the images)' if images else ''}; "
            f"this bundle's context cap is {cap} (search.max_length in model/genai_config.json). "
            + ("Use fewer or smaller images, or rebuild with a larger --set optimize.context_cap."
               if images else "Shorten the prompt.")
        )
    params = og.GeneratorParams(model)
    options = {"max_length": min(cap, room + max_new_tokens), "batch_size": 1}
    if temperature > 0:
        # top_k always set: left unset, onnxruntime-genai samples from the top 50; 0 is no limit.
        options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k, random_seed=seed)
    else:
        options.update(do_sample=False)
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(*adapter)
    if inputs is not None:
        generator.set_inputs(inputs)
    else:
        append_prompt(generator, prompt_ids, first_alone)
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
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="a PNG or JPEG picture for the first message (repeatable; vision bundles only); "
                   "<|image_1|>... tags are added when the prompt has none")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provider", default="bundle", choices=["bundle", "cpu", "cuda", "dml", "qnn"],
                   help="execution provider (default: the one the bundle was built for)")
    p.add_argument("--adapter", help="the runtime LoRA adapter to answer with (model/adapters/NAME.onnx_adapter)")
    args = p.parse_args(argv)
    if not args.prompt and not args.chat:
        p.error("give --prompt TEXT or --chat")

    import onnxruntime_genai as og

    images = open_images(args.model, args.image) if args.image else None
    model = load_model(args.model, args.provider)
    tokenizer = og.Tokenizer(model)
    cap = genai_config(args.model)["search"]["max_length"]
    stops = eos_ids(args.model)
    history = [{"role": "system", "content": args.system}] if args.system else []
    adapters, names = load_adapters(model, args.model)
    active = [pick_adapter(adapters, names, args.adapter)]

    def answer(user_text: str) -> str:
        if images is not None and not any(m["role"] == "user" for m in history):  # the first message
            user_text = tag_images(user_text, len(args.image))
        if args.raw:
            text = user_text
        else:
            history.append({"role": "user", "content": user_text})
            text = format_chat(tokenizer, history)
        stream = tokenizer.create_stream()
        emit = lambda t: print(stream.decode(t), end="", flush=True)  # noqa: E731
        inputs = image_inputs(model, text, images) if images is not None else None
        tokens = generate(model, tokenizer, [] if inputs is not None else tokenizer.encode(text), cap, stops,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed, on_token=emit, inputs=inputs,
                          window=window(args.model), adapter=active[0])
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
            if line.startswith("/adapter"):
                active[0] = pick_adapter(adapters, names, line[len("/adapter"):].strip())
                print(f"[{active[0][1] if active[0] else 'base model'}]", flush=True)
                continue
            answer(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
