"""Quality of a bundle against the float32 PyTorch reference of the same checkpoint, on the same
tokens: perplexity of both, top-1 next-token agreement, and mean KL(reference || bundle).

Windows of `window` tokens, each scored from scratch (no carried context), every position after
the first. Both models see exactly the same token ids (the reference tokenizer's)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..progress import bar

DEFAULT_WINDOW = 512


@dataclass(frozen=True)
class Quality:
    tokens: int
    windows: int
    ppl_reference: float
    ppl_bundle: float
    top1_agreement: float
    mean_kl: float
    text: str

    @property
    def ppl_increase(self) -> float:
        """Relative perplexity increase of the bundle over the reference (0.05 = +5%)."""
        return self.ppl_bundle / self.ppl_reference - 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ppl_increase": self.ppl_increase}


def default_text() -> tuple[str, str]:
    """(name, text) of the evaluation text shipped with slmkit (the GNU GPL v3, freely copyable
    verbatim). Nothing in slmkit was tuned on it."""
    text = resources.files("toolkit.data").joinpath("eval_text.txt").read_text(encoding="utf-8")
    return "slmkit default (GNU GPL v3 text)", text


def windows(ids: list[int], window: int, bos: int | None) -> Iterator[list[int]]:
    """Consecutive windows of `window` tokens (each starting with BOS when the model has one)."""
    step = window - (1 if bos is not None else 0)
    for start in range(0, len(ids) - 1, step):
        chunk = ids[start : start + step]
        if len(chunk) < 2:
            break
        yield ([bos] if bos is not None else []) + chunk


def _log_softmax(x):
    import numpy as np

    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def bundle_logits(model, ids: list[int]):
    """Logits for every position of `ids` from one prefill of the bundle's model ([len, vocab])."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0, : len(ids)]


class Reference:
    """The float32 PyTorch model's log-probabilities on one text, computed once (kept as float16)
    so that several bundles can be compared with it. The model runs one decoder layer in memory at
    a time (toolkit/reference/), on BATCH windows per pass over the layers."""

    BATCH = 4

    def __init__(
        self, source: Path, text: str, text_name: str, window: int = DEFAULT_WINDOW, max_tokens: int | None = 8192
    ):
        import numpy as np
        import torch

        from ..families import open_checkpoint
        from ..reference.layerwise import layerwise_model

        tokenizer, model = layerwise_model(source, open_checkpoint(str(source)).weight_files)
        ids = tokenizer(text, add_special_tokens=False).input_ids[:max_tokens]
        bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
        self.text_name = text_name
        self.windows = list(windows(ids, window, bos))
        if not self.windows:
            raise ValueError(f"the evaluation text '{text_name}' is shorter than two tokens")
        self.logprobs = []
        nll = 0.0
        # Windows of one length go through together (only the last one is shorter): no padding.
        groups = [self.windows[i : i + self.BATCH] for i in range(0, len(self.windows), self.BATCH)]
        groups = [[w for w in g if len(w) == n] for g in groups for n in dict.fromkeys(len(w) for w in g)]
        with torch.no_grad(), bar("reference", len(self.windows), "windows") as progress:
            for group in groups:
                logits = model(torch.tensor(group)).logits[:, :-1].float().numpy()
                for win, row in zip(group, logits, strict=True):
                    lr = _log_softmax(row)
                    nll -= float(lr[np.arange(len(win) - 1), win[1:]].sum())
                    self.logprobs.append(lr.astype(np.float16))
                del logits
                progress.advance(len(group))
        self.tokens = sum(len(w) - 1 for w in self.windows)
        self.ppl = math.exp(nll / self.tokens)


def evaluate(bundle_model_dir: Path, ref: Reference, provider: str = "cpu") -> Quality:
    """Perplexity, top-1 agreement and mean KL(reference || bundle) of the bundle's model (an ONNX
    model with onnxruntime-genai, a GGUF file with llama.cpp)."""
    if (bundle_model_dir / "model.gguf").is_file():
        from ..plan import llama

        llama.require("Scoring a GGUF bundle runs it")
        longest = max(len(w) for w in ref.windows)
        llm = bundle_runner("llama-cpp").load_model(bundle_model_dir, n_ctx=longest + 8, logits_all=True)
        return score(ref, lambda win: gguf_logits(llm, win))
    model = bundle_runner().load_model(bundle_model_dir, provider)
    return score(ref, lambda win: bundle_logits(model, win))


def gguf_logits(llm, ids: list[int]):
    """Logits for every position of `ids` from one prefill in llama.cpp ([len, vocab])."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float32)


def score(ref: Reference, logits_of) -> Quality:
    """Quality of any model whose `logits_of(window ids)` gives [len, vocab] logits, against ref."""
    import numpy as np

    nll = kl = 0.0
    agree = 0
    with bar("bundle", len(ref.windows), "windows") as progress:
        for win, lr16 in zip(ref.windows, ref.logprobs, strict=True):
            lb = _log_softmax(np.asarray(logits_of(win), dtype=np.float32)[: len(win) - 1])
            lr = lr16.astype(np.float32)
            rows, targets = np.arange(len(win) - 1), np.asarray(win[1:])
            nll -= float(lb[rows, targets].sum())
            kl += float((np.exp(lr) * (lr - lb)).sum())
            agree += int((lr.argmax(-1) == lb.argmax(-1)).sum())
            progress.advance()
    return Quality(
        tokens=ref.tokens,
        windows=len(ref.windows),
        ppl_reference=ref.ppl,
        ppl_bundle=math.exp(nll / ref.tokens),
        top1_agreement=agree / ref.tokens,
        mean_kl=kl / ref.tokens,
        text=ref.text_name,
    )


def model_bytes(model_dir: Path) -> int:
    """Bytes of the ONNX graph and its weights, or of the GGUF file (what quantization changes)."""
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.name.startswith(("model.onnx", "model.gguf")))


def selection_text() -> tuple[str, str]:
    """(name, text) used by --quality-budget to choose settings: the Mozilla Public License 2.0.
    Deliberately not the default evaluation text, so that `slmkit eval` reports on unseen text."""
    text = resources.files("toolkit.data").joinpath("select_text.txt").read_text(encoding="utf-8")
    return "MPL-2.0 text (selection)", text


def table(rows: list[tuple[str, int | None, Quality | None, str]]) -> str:
    """Rows of (variant, model bytes, quality, note) as an aligned text table."""
    width = max([34] + [len(r[0]) for r in rows])
    out = [f"{'variant':<{width}} {'size MB':>8} {'ppl':>8} {'vs fp32':>8} {'top-1':>6} {'KL':>7}  note"]
    for name, size, q, note in rows:
        mb = f"{size / 1e6:8.1f}" if size is not None else f"{'-':>8}"
        if q is None:
            out.append(f"{name:<{width}} {mb} {'-':>8} {'-':>8} {'-':>6} {'-':>7}  {note}")
        else:
            out.append(
                f"{name:<{width}} {mb} {q.ppl_bundle:8.2f} {q.ppl_increase:+8.1%} {q.top1_agreement:6.3f} "
                f"{q.mean_kl:7.4f}  {note}"
            )
    return "\n".join(out)


def evaluate_bundle(
    bundle: Path, reference: Path, text_file: Path | None, window: int = DEFAULT_WINDOW, max_tokens: int = 8192
) -> str:
    """`slmkit eval`: measure, store the result in manifest.json ("quality" -> "eval"), return the table."""
    from ..bundle.layout import read_manifest, require_bundle, save_manifest
    from ..errors import InputModelError
    from ..families import open_checkpoint

    require_bundle(bundle)
    open_checkpoint(str(reference))  # the same checks as a build: readable, supported, no remote code
    if text_file is None:
        name, text = default_text()
    else:
        try:
            name, text = text_file.name, text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputModelError(f"Cannot read --text {text_file} as UTF-8 text ({e}).") from None
    if not 16 <= window <= 8192:
        raise InputModelError(f"--window {window}: expected 16..8192 tokens.")
    try:
        ref = Reference(reference, text, name, window, max_tokens)
    except ValueError as e:
        raise InputModelError(f"{e}. Give a longer --text.") from None
    quality = evaluate(bundle / "model", ref)
    manifest = read_manifest(bundle)
    section = manifest.get("quality") or {}
    promised = manifest.get("plan", {}).get("verify", {}).get("max_ppl_increase")
    section["eval"] = quality.to_dict() | {"window": window, "max_ppl_increase": promised}
    manifest["quality"] = section
    save_manifest(bundle, manifest)
    text = table(
        [
            ("fp32 reference (PyTorch)", None, None, f"perplexity {ref.ppl:.2f}"),
            (bundle.name, model_bytes(bundle / "model"), quality, f"{ref.tokens} tokens of {name}"),
        ]
    )
    if promised is not None:
        verdict = "within" if quality.ppl_increase <= promised else "OVER"
        text += f"\nPerplexity {quality.ppl_increase:+.1%} vs float32: {verdict} the recipe's budget (+{promised:.0%})."
    return text


@functools.cache
def bundle_runner(kind: str = "python"):
    """The bundles' own runner module (runner/run.py of `kind`: python, llama-cpp), for load_model."""
    import importlib.util

    from ..bundle.layout import RUNNERS

    path = RUNNERS / kind / "run.py"
    spec = importlib.util.spec_from_file_location(f"slmkit_bundle_runner_{kind.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
