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

import gc
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..families import family_of
from ..families.decoder.graph import TIED_ROTATION, down_hadamard_orders
from ..graphs.ops import Shape
from ..plan.config import QuantizeConfig
from ..source.tensors import CheckpointTensors
from .blocks import Packed, quantize, quantize8
from .calibration import calibration_ids
from .gptq import gptq
from .mixed import Candidate, choose_promotions, int8_bytes

WINDOW = 512  # tokens per calibration sequence
BATCH = 4  # sequences per forward call (2048 tokens: the MLP's activations stay a few hundred MB)
MIN_EXPERT_TOKENS = 128  # fewer calibration tokens than this: an expert's X^T X says too little for GPTQ


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
        tokenizer, self.model = layerwise_model(source, weight_files, stored_tables=True)
        self.inner = self.model.model
        ids = calibration_ids(tokenizer, WINDOW)
        with torch.no_grad():
            self.hidden = self.inner.embed_tokens(ids).float().to(self.device)
        self.kwargs = _on(layer_arguments(self.model, self.hidden[:BATCH].cpu()), self.device)
        self.shared = self.inner.layers[0].shared[0].to(self.device)
        self.packs: dict[str, Packed] = {}  # Hugging Face Linear name -> its blocks (rows: output features)
        self.errors: dict[str, np.ndarray] = {}  # ... -> each row's output error with those blocks
        self.candidates: dict[str, Candidate] = {}  # ONNX matrix -> what mixed precision weighs
        self.pending: int | None = None  # the layer whose quantized run is due
        self.chosen: set[str] = set()
        self.expert_packs: dict[tuple[str, int], tuple[Packed, Packed]] = {}  # a mixture's, layer by layer
        self.experts_seen = self.fallbacks = 0
        self.fixed_bytes = 0  # what the promotions cannot change: an untied token table's blocks
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
        experts = getattr(getattr(layer, "mlp", None), "experts", None)
        routed: list[tuple[Any, Any]] = []  # a mixture's inputs and their experts, chunk by chunk
        if hasattr(experts, "observe"):
            experts.observe = lambda x, top_k: routed.append((x.detach(), top_k.detach()))
        try:
            grams = self._grams(lazy)
        finally:
            if hasattr(experts, "observe"):
                experts.observe = None
        linears = self._linears(layer)
        if self.q.method == "awq":
            from .awq import fold_layer

            fold_layer(layer, grams, self.shape, self.q.block_size)
        prefix = f"model.layers.{index}."
        with torch.no_grad():
            self.weights.overlay = {prefix + n: p.detach().cpu().numpy() for n, p in layer.named_parameters()}
            for name, module in linears.items():
                self._quantize(prefix + name, module.weight, grams[name])
            if routed:
                self._experts(experts, f"model.layers.{index}", routed)
        self.pending = index

    def packed(self, base: str, w_out_in: np.ndarray) -> tuple[Packed, Packed | None]:
        if base == "/lm_head" and self.q.lm_head == "int8":
            return quantize8(w_out_in.T, self.q.block_size, self.q.symmetric), None
        rows = self.family.hf_rows(base, self.shape, lambda name: name in self.packs)
        parts = [self.packs[n] if a is None else self.packs[n].rows(a, b) for n, a, b in rows]
        blocks = Packed.stack(parts)
        if blocks.scales.shape[0] != w_out_in.shape[0] or blocks.k != w_out_in.shape[1]:
            raise AssertionError(
                f"{base}: calibrated blocks of {blocks.scales.shape[0]}x{blocks.k}, "
                f"the writer's weight is {w_out_in.shape[0]}x{w_out_in.shape[1]}"
            )
        if base == "/lm_head" and base in self.chosen:
            return quantize8(w_out_in.T, self.q.block_size, self.q.symmetric), None
        if self.q.method != "mixed":
            return blocks, None
        error = sum(self._cost(n, a, b) for n, a, b in rows)
        eight = quantize8(w_out_in.T, self.q.block_size, self.q.symmetric)
        self.candidates[base] = Candidate(base, error, blocks.nbytes, eight.nbytes, *w_out_in.shape[::-1])
        return blocks, eight

    def expert(self, hf: str, e: int) -> tuple[Packed, Packed]:
        """Expert e of layer `hf` (model.layers.N): (gate_up blocks [2I rows: gate, then up], down's)."""
        return self.expert_packs[(hf, e)]

    def table(self, base: str, table: np.ndarray) -> Packed:
        """A token table (rows: tokens): the per-block search, unweighted (no input to calibrate on)."""
        p = quantize(table.T, self.q.block_size, None, self.q.symmetric)
        self.fixed_bytes += p.nbytes
        return p

    def promoted(self) -> set[str]:
        return self.chosen

    def close(self) -> None:
        self.weights.overlay = {}

    # -- the pass --------------------------------------------------------------------------------
    def _chunks(self) -> list[Any]:
        return [self.hidden[i : i + BATCH] for i in range(0, self.hidden.shape[0], BATCH)]

    def _grams(self, lazy: Any) -> dict[str, Any]:
        """Mean X^T X (float32) of each Linear's input on the calibration states; Linears fed the
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
                    sums[seen[key]] = flat.T @ flat  # float32: down_proj's is 8192^2, 268 MB
                owner.setdefault(name, seen[key])

            return hook

        handles = [m.register_forward_hook(record(n)) for n, m in self._linears(layer).items()]
        total: dict[int, Any] = {}
        try:
            with torch.no_grad():
                for chunk in self._chunks():
                    sums.clear()
                    seen.clear()
                    alive.clear()
                    lazy.run(chunk, **self.kwargs)
                    for group, value in sums.items():
                        if group in total:
                            total[group].add_(value)
                        else:
                            total[group] = value
        finally:
            for h in handles:
                h.remove()
        for value in total.values():
            value.div_(self.tokens)
        return {name: total[group] for name, group in owner.items()}

    def _quantize(self, name: str, weight: Any, gram: Any) -> None:
        """The blocks of one Linear weight [out, in], and each row's output error e H e^T."""
        import torch

        w, block = weight.detach().float(), self.q.block_size
        if self.q.method in ("gptq", "mixed"):
            p = gptq(w, gram, block, self.q.symmetric)
        else:
            p = quantize(w.cpu().numpy().T, block, torch.diagonal(gram).float().cpu().numpy(), self.q.symmetric)
        if self.q.method == "mixed":
            error = w - torch.from_numpy(np.ascontiguousarray(p.dequantize().T)).to(w.device)
            self.errors[name] = ((error @ gram.float()) * error).sum(1).double().cpu().numpy()
        self.packs[name] = p

    def _linears(self, layer: Any) -> dict[str, Any]:
        """The layer's Linears that get int4 blocks (not the ones the family keeps float: a router)."""
        import torch

        return {
            n: m
            for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear) and n not in self.family.float_linears
        }

    def _experts(self, experts: Any, hf: str, routed: list[tuple[Any, Any]]) -> None:
        """A mixture's experts, one at a time, each calibrated on the tokens routed to it: GPTQ of
        gate_up on their inputs' X^T X and of down on its inputs' (the activations the expert makes
        of them), symmetric blocks as QMoE reads them. An expert sent fewer than MIN_EXPERT_TOKENS
        tokens takes the per-block search weighted by the layer's input statistics instead."""
        import torch

        x = torch.cat([chunk.reshape(-1, chunk.shape[-1]) for chunk, _ in routed]).float()
        routes = torch.cat([top_k.reshape(-1, top_k.shape[-1]) for _, top_k in routed])
        layer_diag = (x * x).mean(0).cpu().numpy()
        block = self.q.block_size
        for e in range(experts.count):
            gate_up, down = (t.float() for t in experts.load(e))
            tokens = x[(routes == e).any(-1)]
            if tokens.shape[0] >= MIN_EXPERT_TOKENS:
                gate, up = (tokens @ gate_up.T).chunk(2, dim=-1)
                middle = experts.act_fn(gate) * up
                fc1 = gptq(gate_up, (tokens.T @ tokens).double() / tokens.shape[0], block, True)
                fc2 = gptq(down, (middle.T @ middle).double() / tokens.shape[0], block, True)
            else:
                self.fallbacks += 1
                fc1 = quantize(gate_up.cpu().numpy().T, block, layer_diag, True)
                fc2 = quantize(down.cpu().numpy().T, block, None, True)
            self.expert_packs[(hf, e)] = (fc1, fc2)
            self.experts_seen += 1

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
        layer = lazy.shared[0]
        experts = getattr(getattr(layer, "mlp", None), "experts", None)
        hf = f"model.layers.{self.pending}"

        def quantized_expert(e: int, gate_up: Any, down: Any) -> None:
            fc1, fc2 = self.expert_packs[(hf, e)]
            gate_up.copy_(torch.from_numpy(np.ascontiguousarray(fc1.dequantize().T)))
            down.copy_(torch.from_numpy(np.ascontiguousarray(fc2.dequantize().T)))

        with torch.no_grad():
            for name, module in self._linears(layer).items():
                dequantized = np.ascontiguousarray(self.packs[prefix + name].dequantize().T)
                module.weight.copy_(torch.from_numpy(dequantized))
            if hasattr(experts, "override"):
                experts.override = quantized_expert
            try:
                self.hidden = torch.cat([lazy.run(chunk, **self.kwargs) for chunk in self._chunks()])
            finally:
                if hasattr(experts, "override"):
                    experts.override = None
        for name in [n for n in self.packs if n.startswith(prefix)]:
            del self.packs[name]
        for key in [k for k in self.expert_packs if k[0] == hf]:
            del self.expert_packs[key]
        self.weights.overlay = {}
        self.pending = None

    def _head(self) -> None:
        """The final norm on the last layer's output, the lm_head's blocks on it, then (mixed) the
        promotions: every matrix's cost is known."""
        import torch

        head = self.model.get_output_embeddings().weight
        if self.q.lm_head == "int4":  # else int8 blocks, which need no calibration
            with torch.no_grad():
                normed = self.inner.norm.to(self.device)(self.hidden)
                flat = normed.reshape(-1, normed.shape[-1])
                gram = (flat.T @ flat).double() / flat.shape[0]
                self._quantize("lm_head", head.to(self.device), gram)
        if self.q.method == "mixed":
            self._choose(tuple(head.shape))
        # The model is done with: its token tables go before the writer reads the lm_head's float32
        # (Phi-4-mini: 1.2 GB of bf16 table freed before 2.5 GB are read).
        del head
        self.model = self.inner = self.shared = self.hidden = None
        gc.collect()
        if self.experts_seen:
            self.log(
                f"experts: {self.experts_seen - self.fallbacks} of {self.experts_seen} calibrated on the tokens "
                f"routed to them; {self.fallbacks} sent fewer than {MIN_EXPERT_TOKENS} took the per-block "
                "search on the layer's statistics"
            )

    def _choose(self, head_shape: tuple[int, int]) -> None:
        """mixed: the matrices promoted to int8 within the builder default's bytes."""
        candidates = list(self.candidates.values())
        if self.q.lm_head == "int4":  # else int8 already, outside the budget (as the builder's would be)
            n, k = head_shape
            cost = self._cost("lm_head", None, None)
            int8 = int8_bytes(k, n, self.q.block_size)
            candidates.append(Candidate("/lm_head", cost, self.packs["lm_head"].nbytes, int8, k, n))
        reserved = 0
        if TIED_ROTATION in self.weights:  # its int8 MatMul after the final norm (rotation.py) counts too
            h = self.shape.hidden
            blocks = -(-h // self.q.block_size)
            reserved = h * h + h * blocks * 4 + (0 if self.q.symmetric else h * blocks)
        # the online Hadamard's float factors, written once
        reserved += 4 * sum(o * o for o in down_hadamard_orders(self.weights) or [])
        if not self.q.target_mb:
            self.chosen, used, room = choose_promotions(candidates, reserved)
            self.log(
                f"mixed precision: {len(self.chosen)} of {len(candidates)} matrices in int8 ({used / 1e6:.2f} of "
                f"the {room / 1e6:.2f} MB the builder default would use more)"
            )
            return
        h, n, k = self.shape.hidden, *head_shape
        fixed = self.fixed_bytes + reserved + 4 * h * (2 * self.shape.layers + 1)  # + the norms, float32
        if self.q.lm_head == "int8":
            fixed += int8_bytes(k, n, self.q.block_size)
        int4 = sum(c.int4_bytes for c in candidates)
        target = int(self.q.target_mb * 1e6)
        if target < fixed + int4:
            raise ConfigError(
                f"quantize.target_mb = {self.q.target_mb} is below the {(fixed + int4) / 1e6:.1f} MB of this "
                f"model's weights in int4 blocks of {self.q.block_size}. Raise it, or use a larger "
                "quantize.block_size."
            )
        self.chosen, used, room = choose_promotions(candidates, room=target - fixed - int4)
        self.log(
            f"mixed precision: {len(self.chosen)} of {len(candidates)} matrices in int8 ({used / 1e6:.2f} of the "
            f"{room / 1e6:.2f} MB that quantize.target_mb = {self.q.target_mb} leaves over int4)"
        )


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
