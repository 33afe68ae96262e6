"""Calibrated int4 inside the streamed export (quantize.method mse, gptq, awq, mixed), one decoder
layer at a time, as the GraphWriter's quantizer (toolkit/graphs/ops.py):

1. The calibration tokens are embedded once: `hidden`, [windows, WINDOW, hidden] float32.
2. When the writer starts layer i, the previous layer runs quantized on `hidden` (its output is
   the next layer's input, so each layer is calibrated on what its quantized predecessors give);
   then layer i's float weights are read (toolkit/reference/), run on `hidden` to collect X^T X of
   each Linear's input (one per distinct input: q, k and v share theirs), AWQ scales are folded
   in (awq), and every Linear is quantized: GPTQ (gptq, mixed) or the per-block search weighted by
   diag(X^T X) (mse, awq). The writer reads the layer's tensors from the calibration (the folded
   norms included) and asks for each MatMul's blocks by its ONNX name.
3. After the last layer: the final norm, then the lm_head on its output. mixed then promotes
   the matrices whose int4 error costs the most per extra byte to int8 blocks, within the bytes
   the builder's default int4 gives the same matrices (mixed.py).

Memory holds one layer, its X^T X and the calibration states, whatever the number of layers.
Where torch sees a CUDA device, the layer runs and GPTQ run there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..families import family_of
from ..graphs.ops import Shape
from ..plan.config import QuantizeConfig
from ..source.tensors import CheckpointTensors
from .blocks import Packed, quantize, quantize8
from .calibration import calibration_ids
from .gptq import gptq
from .mixed import Candidate, choose_promotions, int8_bytes

WINDOW = 512  # tokens per calibration sequence
BATCH = 4  # sequences per forward call (2048 tokens: the MLP's activations stay a few hundred MB)


class Calibration:
    """The GraphWriter's quantizer for quantize.method mse, gptq, awq and mixed."""

    def __init__(
        self,
        source: Path,
        weight_files: tuple[str, ...],
        config: dict[str, Any],
        q: QuantizeConfig,
        weights: CheckpointTensors,
        work: Path,
        log: Any = lambda _: None,
    ):
        import torch

        from ..reference.layerwise import layer_arguments, layerwise_model

        self.q, self.weights, self.log = q, weights, log
        self.family = family_of(config)
        self.shape = Shape.of(config)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer, self.model = layerwise_model(source, weight_files)
        self.inner = self.model.model
        ids = calibration_ids(tokenizer, WINDOW)
        with torch.no_grad():
            self.hidden = self.inner.embed_tokens(ids).to(self.device)
        self.kwargs = _on(layer_arguments(self.model, self.hidden[:BATCH].cpu()), self.device)
        self.shared = self.inner.layers[0].shared[0].to(self.device)
        self.packs: dict[str, Packed] = {}  # Hugging Face Linear name -> its blocks (rows: output features)
        self.errors: dict[str, np.ndarray] = {}  # ... -> each row's output error with those blocks
        self.candidates: dict[str, Candidate] = {}  # ONNX matrix -> what mixed precision weighs
        self.pending: int | None = None  # the layer whose quantized run is due
        self.chosen: set[str] = set()
        self.tokens = int(ids.numel())
        log(f"calibration: {self.tokens} tokens in {ids.shape[0]} sequences of {WINDOW}, on {self.device}")
        self.sensitivity: dict[str, np.ndarray] = {}  # mixed: each Linear output feature's E[(dL/dy)^2]
        if q.method == "mixed":
            from .fisher import GRADIENT_TOKENS, output_sensitivity

            batch = ids[: GRADIENT_TOKENS // WINDOW]
            log(f"mixed precision: the loss's gradients at every Linear output on {batch.numel()} tokens")
            self.sensitivity = output_sensitivity(self.model, batch, self.kwargs, work / "gradients", self.device)

    # -- the writer's calls ------------------------------------------------------------------
    def layer(self, index: int | None) -> None:
        self._advance()
        if index is None:
            self._head()
            return
        import torch

        lazy = self.inner.layers[index]
        layer = lazy.load()
        grams = self._grams(lazy)
        linears = _linears(layer)
        if self.q.method == "awq":
            from .awq import fold_layer

            fold_layer(layer, grams, self.shape, self.q.block_size)
        prefix = f"model.layers.{index}."
        with torch.no_grad():
            self.weights.overlay = {prefix + n: p.detach().cpu().numpy() for n, p in layer.named_parameters()}
            for name, module in linears.items():
                self._quantize(prefix + name, module.weight, grams[name])
        self.pending = index

    def packed(self, base: str, w_out_in: np.ndarray) -> tuple[Packed, Packed | None]:
        rows = self.family.hf_rows(base, self.shape, lambda name: name in self.packs)
        parts = [self.packs[n] if a is None else self.packs[n].rows(a, b) for n, a, b in rows]
        blocks = Packed.stack(parts)
        if blocks.scales.shape[0] != w_out_in.shape[0] or blocks.k != w_out_in.shape[1]:
            raise AssertionError(
                f"{base}: calibrated blocks of {blocks.scales.shape[0]}x{blocks.k}, "
                f"the writer's weight is {w_out_in.shape[0]}x{w_out_in.shape[1]}"
            )
        if self.q.method != "mixed" or base == "/lm_head":
            return (quantize8(w_out_in.T, self.q.block_size) if base in self.chosen else blocks), None
        error = sum(self._cost(n, a, b) for n, a, b in rows)
        eight = quantize8(w_out_in.T, self.q.block_size)
        self.candidates[base] = Candidate(base, error, blocks.nbytes, eight.nbytes, *w_out_in.shape[::-1])
        return blocks, eight

    def table(self, base: str, table: np.ndarray) -> Packed:
        """A token table (rows: tokens): the per-block search, unweighted (no input to calibrate on)."""
        return quantize(table.T, self.q.block_size, None, self.q.symmetric)

    def promoted(self) -> set[str]:
        return self.chosen

    def close(self) -> None:
        self.weights.overlay = {}

    # -- the pass --------------------------------------------------------------------------------
    def _chunks(self) -> list[Any]:
        return [self.hidden[i : i + BATCH] for i in range(0, self.hidden.shape[0], BATCH)]

    def _grams(self, lazy: Any) -> dict[str, Any]:
        """Mean X^T X (float64) of each Linear's input on the calibration states; Linears fed the
        same tensor (q, k, v) share one."""
        import torch

        layer = lazy.shared[0]
        sums: dict[int, Any] = {}
        owner: dict[str, int] = {}
        seen: dict[tuple[int, tuple[int, ...]], int] = {}

        alive: list[Any] = []  # the inputs seen in this forward, kept so no other tensor takes their memory

        def record(name: str) -> Any:
            def hook(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
                x = inputs[0]
                key = (x.data_ptr(), tuple(x.shape))
                if key not in seen:  # a new input: its X^T X, once
                    alive.append(x)
                    seen[key] = len(sums)
                    flat = x.reshape(-1, x.shape[-1]).float()
                    sums[seen[key]] = (flat.T @ flat).double()
                owner.setdefault(name, seen[key])

            return hook

        handles = [m.register_forward_hook(record(n)) for n, m in _linears(layer).items()]
        total: dict[int, Any] = {}
        try:
            with torch.no_grad():
                for chunk in self._chunks():
                    sums.clear()
                    seen.clear()
                    alive.clear()
                    lazy.run(chunk, **self.kwargs)
                    for group, value in sums.items():
                        total[group] = total[group] + value if group in total else value
        finally:
            for h in handles:
                h.remove()
        return {name: total[group] / self.tokens for name, group in owner.items()}

    def _quantize(self, name: str, weight: Any, gram: Any) -> None:
        """The blocks of one Linear weight [out, in], and each row's output error e H e^T."""
        import torch

        w = weight.detach().float()
        if self.q.method in ("gptq", "mixed"):
            p = gptq(w, gram, self.q.block_size, self.q.symmetric)
        else:
            p = quantize(
                w.cpu().numpy().T, self.q.block_size, torch.diagonal(gram).float().cpu().numpy(), self.q.symmetric
            )
        if self.q.method == "mixed":
            error = w - torch.from_numpy(np.ascontiguousarray(p.dequantize().T)).to(w.device)
            self.errors[name] = ((error @ gram.float()) * error).sum(1).double().cpu().numpy()
        self.packs[name] = p

    def _cost(self, name: str, start: int | None, stop: int | None) -> float:
        """What rows start..stop of a Linear cost at the model's output with their int4 blocks: each
        row's output error on the calibration states times its E[(dL/dy)^2] (fisher.py)."""
        rows = slice(start, stop)
        return float((self.errors[name][rows] * self.sensitivity[name][rows]).sum())

    def _advance(self) -> None:
        """The pending layer, quantized, on the calibration states: the next layer's input."""
        if self.pending is None:
            return
        import torch

        lazy = self.inner.layers[self.pending]
        prefix = f"model.layers.{self.pending}."
        with torch.no_grad():
            for name, module in _linears(lazy.shared[0]).items():
                dequantized = np.ascontiguousarray(self.packs[prefix + name].dequantize().T)
                module.weight.copy_(torch.from_numpy(dequantized))
            self.hidden = torch.cat([lazy.run(chunk, **self.kwargs) for chunk in self._chunks()])
        for name in [n for n in self.packs if n.startswith(prefix)]:
            del self.packs[name]
        self.weights.overlay = {}
        self.pending = None

    def _head(self) -> None:
        """The final norm on the last layer's output, the lm_head's blocks on it, then (mixed) the
        promotions: every matrix's cost is known."""
        import torch

        with torch.no_grad():
            normed = self.inner.norm.to(self.device)(self.hidden)
            flat = normed.reshape(-1, normed.shape[-1])
            gram = (flat.T @ flat).double() / flat.shape[0]
            head = self.model.get_output_embeddings().weight.to(self.device)
            self._quantize("lm_head", head, gram)
        if self.q.method == "mixed":
            n, k = head.shape
            self.candidates["/lm_head"] = Candidate(
                "/lm_head",
                self._cost("lm_head", None, None),
                self.packs["lm_head"].nbytes,
                int8_bytes(k, n, self.q.block_size),
                k,
                n,
            )
            self.chosen, used, room = choose_promotions(list(self.candidates.values()))
            self.log(
                f"mixed precision: {len(self.chosen)} of {len(self.candidates)} matrices in int8 "
                f"({used / 1e6:.2f} of the {room / 1e6:.2f} MB the builder default would use more)"
            )


def _linears(layer: Any) -> dict[str, Any]:
    import torch

    return {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


def _on(value: Any, device: str) -> Any:
    """Tensors of captured arguments (tuples and dicts of them) on `device`."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    return value
