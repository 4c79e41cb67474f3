"""The deletion curve: a threshold-free view beside the verdict.

For a genuine pair (A, B) and a map of A, the cells of a ``grid`` x ``grid`` partition are hidden
(filled, as in the test) in the map's order, most important first, ``step`` cells at a time, and
the pair's similarity cos(f(A'), f(B)) is recorded after each step. The verification decision
flips to a false non-match at the first step whose similarity falls below the model's threshold:
the *flip fraction* is the share of the image hidden by then (1 when it never flips; lower is a
map that found what makes the match, as in xSSAB's Patch-LFW protocol). The *area* is the mean
of (cos - threshold) over the curve, from nothing hidden to everything hidden (lower: the
similarity falls sooner). Only genuine pairs the model accepts have a curve (a pair already below
the threshold has nothing to flip). Impostor pairs would need the map of the inverted target (what drives
a match), which the attribution methods here do not make; they get no curve.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import cosine_similarity
from ..models.base import model_device
from .counterfactuals import fill_image
from .regions import feature_scores, feature_segments


@dataclass
class DeletionCurve:
    fractions: list[float]  # share of the image hidden at each point (0 first)
    cosines: list[float]  # cos(f(A'), f(B)) at each point
    threshold: float
    flip_fraction: float  # first share at which cos < threshold (1.0: never)
    flipped: bool
    area: float  # mean of (cos - threshold) over the curve

    def to_dict(self) -> dict:
        return {"fractions": self.fractions, "cosines": self.cosines, "threshold": self.threshold,
                "flip_fraction": self.flip_fraction, "flipped": self.flipped, "area": self.area}


def deletion_curve(model, image: torch.Tensor, attribution: torch.Tensor, reference: torch.Tensor, threshold: float,
                   grid: int = 14, step: int = 4, fill: str = "blur", blur_sigma: float = 0.05,
                   batch_size: int = 64) -> DeletionCurve:
    """The deletion curve of one map (``image`` (3, H, W), ``attribution`` (H, W), ``reference``
    (D,) the partner's embedding, ``threshold`` the model's cosine threshold). Ties in the map
    keep the cells' raster order (deterministic)."""
    _, h, w = image.shape
    seg = feature_segments(h, w, "grid", grid=grid)
    scores, sizes = feature_scores(attribution.detach().cpu(), seg)
    order = torch.argsort(-scores, stable=True)
    n_cells = order.numel()
    steps = list(range(0, n_cells, step)) + [n_cells]
    filled = fill_image(image.cpu(), fill, 1, blur_sigma=blur_sigma)[0]
    rank = torch.empty(n_cells, dtype=torch.long)
    rank[order] = torch.arange(n_cells)
    cell_rank = rank[seg]  # (H, W): when each pixel's cell is hidden
    batch = torch.stack([torch.where(cell_rank < k, filled, image.cpu()) for k in steps])
    device = model_device(model)
    with torch.inference_mode():
        emb = torch.cat([model(batch[i : i + batch_size].to(device)).float().cpu()
                         for i in range(0, batch.shape[0], batch_size)])
    cos = cosine_similarity(emb, reference.float().cpu().view(1, -1).expand(emb.shape[0], -1)).double()
    total = float(sizes.sum())
    ordered_sizes = sizes[order].double().cumsum(0)
    fractions = [0.0] + [float(ordered_sizes[k - 1]) / total for k in steps[1:]]
    below = (cos < threshold).nonzero()
    flipped = below.numel() > 0
    flip = fractions[int(below[0])] if flipped else 1.0
    return DeletionCurve(fractions, [float(c) for c in cos], float(threshold), flip, flipped,
                         float((cos - threshold).mean()))


def summarise_curves(curves: list[dict]) -> dict | None:
    """Deletion curves (``DeletionCurve.to_dict()``) in a few numbers: how many, the share that
    flipped to a false non-match, the median share hidden at the flip (1 = never), the mean area
    (cos - threshold); None without curves."""
    if not curves:
        return None
    return {"n": len(curves), "flipped": float(np.mean([c["flipped"] for c in curves])),
            "median_flip_fraction": float(np.median([c["flip_fraction"] for c in curves])),
            "mean_area": float(np.mean([c["area"] for c in curves]))}
