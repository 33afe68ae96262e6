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
        hidden = inner.embed_tokens(ids.cpu()).to(device)
        for i, lazy in enumerate(inner.layers):
            torch.save(hidden.cpu(), work / f"{i}.pt")
            hidden = lazy(hidden, **kwargs)
    sensitivity: dict[str, np.ndarray] = {"lm_head": 0}
    hidden.requires_grad_(True)
    norm, head = inner.norm.to(device), model.get_output_embeddings().to(device)
    for j in range(hidden.shape[0]):  # one sequence at a time: its logits are 512 x vocab
        with torch.enable_grad():
            logits = head(norm(hidden[j]))
            logits.retain_grad()
            loss = torch.nn.functional.cross_entropy(logits[:-1], ids[j, 1:].to(device), reduction="sum")
            loss.backward()
        sensitivity["lm_head"] += _squares(logits.grad)
        del logits, loss
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


def _squares(grad: Any) -> np.ndarray:
    g = grad.detach().reshape(-1, grad.shape[-1])
    return (g * g).sum(0).double().cpu().numpy()
