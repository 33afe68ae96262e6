"""How much each output feature of each Linear matters to the model: E[(dL/dy)^2], the diagonal of
the empirical Fisher at the Linear's output (K-FAC's G), for the float32 model's loss on
calibration tokens. mixed weighs each row's int4 output error with it (sequential.py): a layer-
local error then predicts what the matrix costs at the model's output. Measured on SmolLM2-135M:
rank correlation 0.91 with the KL of the float32 model with that matrix alone at its int4 values,
0.33 for the unweighted error (benchmarks/int4_methods.py --kl).

Memory-flat, like the reference: the forward keeps each decoder layer's input on disk in the work
folder, and the backward runs one layer at a time, last to first, each read again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GRADIENT_TOKENS = 2048  # 4 sequences of 512: one forward and one backward of the model
HEAD_ROWS = 8192  # the lm_head's rows (tokens of the vocabulary) widened and multiplied at a time


def output_sensitivity(model: Any, ids: Any, kwargs: dict[str, Any], work: Path, device: str) -> dict[str, np.ndarray]:
    """Sum over tokens of (dL/dy_r)^2 for each output feature r of every Linear of a layerwise model
    (toolkit/reference/), by the checkpoint's module name (model.layers.N.self_attn.qkv_proj,
    lm_head); L is the next-token loss on `ids` [batch, sequence], whose decoder-layer arguments
    are `kwargs`."""
    import torch

    inner = model.model
    for module in (model, inner.layers[0].shared[0]):
        module.requires_grad_(False)  # gradients of the activations only
    work.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        hidden = inner.embed_tokens(ids.cpu()).float().to(device)
        for i, lazy in enumerate(inner.layers):
            torch.save(hidden.cpu(), work / f"{i}.pt")
            hidden = lazy(hidden, **kwargs)
    hidden.requires_grad_(True)
    norm = inner.norm.to(device)
    with torch.enable_grad():
        normed = norm(hidden)
    flat = normed.detach().reshape(-1, normed.shape[-1])
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], 1).reshape(-1).to(device)  # -1: no next token
    lm_head = model.get_output_embeddings()
    grad, head = head_gradients(flat, targets, lm_head.weight, lm_head.bias)
    normed.backward(grad.reshape(normed.shape))
    sensitivity: dict[str, np.ndarray] = {"lm_head": head}
    grad = hidden.grad
    for i in reversed(range(len(inner.layers))):
        lazy = inner.layers[i]
        layer = lazy.load()
        x = torch.load(work / f"{i}.pt").to(device).requires_grad_(True)
        squares: dict[str, Any] = {}

        def watch(name: str, squares: dict[str, Any] = squares) -> Any:
            def hook(_module: Any, _grad_in: Any, grad_out: tuple[Any, ...]) -> None:
                squares[name] = squares.get(name, 0) + _squares(grad_out[0])

            return hook

        handles = [
            m.register_full_backward_hook(watch(f"model.layers.{i}.{n}"))
            for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear)
        ]
        try:
            for j in range(x.shape[0]):  # one sequence at a time: a quarter of the activations
                with torch.enable_grad():
                    lazy.run(x[j : j + 1], **kwargs).backward(grad[j : j + 1])
        finally:
            for h in handles:
                h.remove()
        sensitivity.update(squares)
        grad = x.grad
        (work / f"{i}.pt").unlink()
    return sensitivity


def head_gradients(x: Any, targets: Any, weight: Any, bias: Any = None) -> tuple[Any, np.ndarray]:
    """For logits x W^T + b (x [tokens, hidden] float32, W [vocab, hidden] in any float dtype) and the
    next-token loss summed over `targets` (-1: none): (dL/dx, the sum over tokens of (dL/dlogit)^2
    per vocabulary row). The logits are never whole: HEAD_ROWS rows of W at a time, widened to
    float32, in two passes (the log-sum-exp, then softmax - one-hot), so a 200k-token table costs
    a few hundred MB above itself whatever its dtype."""
    import torch

    rows = weight.shape[0]
    device = x.device

    def logits(r0: int) -> tuple[Any, Any]:
        w = weight[r0 : r0 + HEAD_ROWS].detach().to(device, torch.float32)
        z = x @ w.T
        return (z if bias is None else z + bias[r0 : r0 + HEAD_ROWS].detach().to(device, torch.float32)), w

    lse = torch.full((x.shape[0],), float("-inf"), device=device)
    for r0 in range(0, rows, HEAD_ROWS):
        lse = torch.logaddexp(lse, torch.logsumexp(logits(r0)[0], 1))
    live = (targets >= 0).float()[:, None]
    grad = torch.zeros_like(x)
    squares = np.zeros(rows)
    for r0 in range(0, rows, HEAD_ROWS):
        z, w = logits(r0)
        g = torch.exp(z - lse[:, None]) * live  # softmax: dL/dlogit, less the target's one
        hit = ((targets >= r0) & (targets < r0 + w.shape[0])).nonzero().squeeze(1)
        g[hit, targets[hit] - r0] -= 1.0
        squares[r0 : r0 + w.shape[0]] = _squares(g)
        grad.addmm_(g, w)
    return grad, squares


def _squares(grad: Any) -> np.ndarray:
    g = grad.detach().reshape(-1, grad.shape[-1])
    return (g * g).sum(0).double().cpu().numpy()
