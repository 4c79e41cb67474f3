"""Occlusion (Zeiler & Fergus, 2014) of the similarity target, computed as captum's ``Occlusion``.

A ``window`` x ``window`` patch (all colour channels) slides with ``stride``; each position is
replaced by the baseline and the drop s(x) - s(x_occluded) is credited to the pixels it
covers, averaged over the windows that cover each pixel (captum's rule). Positions per side:
ceil((H - window) / stride) + 1, the last one cut at the border, as captum places them.
Defaults: window = round(H / 10) (15 px at 150x150), stride = window (the windows tile the image:
100 positions at 150x150, where stride window // 2 took 441), baseline black.

What differs from captum is the cost: the occluded images of every image of the batch are
built by one broadcast ``torch.where`` per chunk and evaluated together, ``batch_size`` per
forward pass under ``torch.inference_mode`` (the model's fused inference path); the map is
equal to captum's within float rounding (``tests/test_engine.py``). The map is the drop itself
(captum's is the same for every colour channel).
"""
from __future__ import annotations

import math

import torch

from ..imageops import make_baseline
from .base import AttributionError, Explainer


class OcclusionExplainer(Explainer):
    name = "occlusion"
    default_normalise = "abs"
    needs_gradients = False

    def __init__(self, model, window: int | None = None, stride: int | None = None,
                 baseline: str | float = "black", batch_size: int = 64, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        h = model.input_size[0]
        self.window = int(window) if window else max(2, round(h / 10))
        self.stride = int(stride) if stride else self.window
        if not 1 <= self.window <= min(model.input_size):
            raise AttributionError(f"window must be between 1 and {min(model.input_size)}, got {self.window}")
        if self.stride < 1:
            raise AttributionError(f"stride must be >= 1, got {self.stride}")
        if self.stride > self.window:
            raise AttributionError(f"stride ({self.stride}) must be <= window ({self.window}), or pixels between "
                                   "windows are never occluded")
        if batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
        self.baseline, self.batch_size = baseline, int(batch_size)
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)

    def windows(self, height: int, width: int, device=None) -> torch.Tensor:
        """(P, H, W) bool: the pixels each window position covers, rows of positions first."""
        def starts(size: int) -> list[int]:
            return [k * self.stride for k in range(math.ceil((size - self.window) / self.stride) + 1)]

        ys, xs = starts(height), starts(width)
        masks = torch.zeros(len(ys) * len(xs), height, width, dtype=torch.bool, device=device)
        for p, (y, x) in enumerate((y, x) for y in ys for x in xs):
            masks[p, y : y + self.window, x : x + self.window] = True
        return masks

    def _attribute(self, images, references):
        b, _, h, w = images.shape
        baselines = make_baseline(images, self.baseline)
        masks = self.windows(h, w, images.device)
        n = masks.shape[0]
        drops = torch.empty(b * n, dtype=torch.float32, device=images.device)
        with torch.inference_mode():
            full = self.target(images, references)
            # row r is (image r // n, window r % n), batch_size rows per forward pass
            for start in range(0, b * n, self.batch_size):
                rows = torch.arange(start, min(start + self.batch_size, b * n), device=images.device)
                img, win = rows // n, rows % n
                x = torch.where(masks[win][:, None], baselines[img], images[img])
                refs = None if references is None else references[img]
                drops[start : start + len(rows)] = full[img] - self.target(x, refs)
        covered = masks.flatten(1).float()
        total = drops.view(b, n) @ covered  # (B, H*W): the drops of the windows covering each pixel
        return (total / covered.sum(0).clamp_min(1)).view(b, h, w)
