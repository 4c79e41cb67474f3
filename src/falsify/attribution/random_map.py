"""A seeded random control: smooth noise that ignores the model.

Each map is uniform noise on a ``cells`` x ``cells`` grid, upsampled bilinearly to the input
size (spatially coherent like a CAM, so a fair control for region-based tests). The noise for
an image is drawn from a generator seeded by ``seed`` and the image's bytes, so the same image
gets the same map whether it is explained alone or in a batch.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from .base import AttributionError, Explainer


class RandomExplainer(Explainer):
    name = "random"
    default_normalise = "positive"
    needs_gradients = False

    def __init__(self, model, seed: int = 0, cells: int = 7, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if cells < 1:
            raise AttributionError(f"cells must be >= 1, got {cells}")
        self.seed, self.cells = int(seed), int(cells)

    def _attribute(self, images, references):
        maps = []
        for img in images:
            digest = hashlib.sha256(img.detach().cpu().numpy().tobytes()).digest()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int.from_bytes(digest[:6], "little"))
            maps.append(torch.rand(1, 1, self.cells, self.cells, generator=g))
        low = torch.cat(maps).to(images.device)
        return F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
