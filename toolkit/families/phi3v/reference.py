"""The PyTorch reference of a Phi-3-vision checkpoint's image features and prompt embeddings, in
float32, from transformers' own CLIPVisionModel loaded with the tower's weights, plus the HD layout
and projection written out here (checked against vLLM's Phi3HDImageEmbedding,
vllm/model_executor/models/phi3v.py). The checkpoint's own Python is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputModelError
from ...source.tensors import CheckpointTensors
from .vision import CROP, PREFIX, TOWER, Tower


class VisionReference:
    def __init__(self, source: Path, weight_files: tuple[str, ...]):
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModel

        weights = CheckpointTensors(source, weight_files)
        tower = Tower.of(weights)
        fc1 = weights.entry(TOWER + "encoder.layers.0.mlp.fc1.weight", "the vision reference").shape[0]
        config = CLIPVisionConfig(
            hidden_size=tower.hidden,
            intermediate_size=fc1,
            num_attention_heads=tower.heads,
            num_hidden_layers=tower.layers,
            image_size=tower.patch * tower.side,
            patch_size=tower.patch,
            layer_norm_eps=tower.eps,
            hidden_act="quick_gelu",
        )
        self.clip = CLIPVisionModel(config).eval()
        state = {n[len(TOWER) :]: torch.from_numpy(weights.float32(n)) for n in weights.entries if n.startswith(TOWER)}
        missing, unexpected = self.clip.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputModelError(
                f"The vision tower's tensors do not make a CLIP vision model: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]} (under {TOWER})."
            )
        self.extra = {
            n[len(PREFIX) :]: torch.from_numpy(weights.float32(n))
            for n in weights.entries
            if n.startswith(PREFIX) and not n.startswith(TOWER)
        }
        self.side = tower.side // 2

    def _merge(self, x: Any, hc: int, wc: int) -> Any:
        """[hc*wc, side*side, C] -> [hc*12, wc*12, 4C], as vLLM's reshape_hd_patches_2x2merge."""
        n, _, c = x.shape
        s = self.side
        x = x.reshape(n, s, 2, s, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * s, 4 * c)
        return x.reshape(hc, wc, s, s, 4 * c).permute(0, 2, 1, 3, 4).reshape(hc * s, wc * s, 4 * c)

    def _rows(self, x: Any) -> Any:
        """sub_GN after each row, flattened: vLLM's add_image_newline."""
        import torch

        h, _, c = x.shape
        return torch.cat([x, self.extra["sub_GN"].reshape(1, 1, c).expand(h, 1, c)], dim=1).reshape(-1, c)

    def features(self, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
        """image_features [sum of the images' tokens, hidden] for the runtime's processor outputs."""
        import torch

        out = []
        with torch.no_grad():
            for pixels, (height, width) in zip(pixel_values, image_sizes, strict=True):
                hc, wc = int(height) // CROP, int(width) // CROP
                crops = torch.from_numpy(np.asarray(pixels[: 1 + hc * wc], dtype=np.float32))
                hidden = self.clip(pixel_values=crops, output_hidden_states=True).hidden_states[-2][:, 1:]
                glb = self._rows(self._merge(hidden[:1], 1, 1))
                sub = self._rows(self._merge(hidden[1:], hc, wc))
                x = torch.cat([sub, self.extra["glb_GN"].reshape(1, -1), glb])
                x = torch.nn.functional.gelu(
                    x @ self.extra["img_projection.0.weight"].T + self.extra["img_projection.0.bias"]
                )
                out.append(x @ self.extra["img_projection.2.weight"].T + self.extra["img_projection.2.bias"])
        return torch.cat(out).numpy()


def embed(model: Any, input_ids: list[int], features: np.ndarray) -> Any:
    """inputs_embeds [1, len, hidden]: token embeddings, the i-th negative id taking row i."""
    import torch

    ids = torch.tensor([input_ids])
    image = ids < 0
    with torch.no_grad():
        x = model.get_input_embeddings()(ids.clamp(min=0))
        x[image] = torch.from_numpy(features[: int(image.sum())]).to(x.dtype)
    return x
