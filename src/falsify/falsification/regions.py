"""S_high and S_low: the features an attribution map ranks highest and lowest.

A *feature* is a pixel, a cell of a regular grid, or a superpixel (SLIC on the image). Each
feature's score is the mean attribution over its pixels. Two ways to pick the sets:

- ``"quantile"`` (default): equal area. S_high is the top of the ranking and S_low the bottom,
  both covering (as nearly as whole features allow) a fraction ``q`` of the image's pixels, so
  the two counterfactuals hide the same number of pixels.
- ``"threshold"``: S_high = features with score >= ``theta_high``, S_low = features with score
  <= ``theta_low`` on a ``[0, 1]`` map (areas may differ; they are reported).

Ties in the ranking are broken by a seeded random permutation (never by raster order, which
would favour the top of the image). A map that is constant -- or whose feature scores are -- is
*untestable*: it makes no prediction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..choices import GRANULARITIES

REGION_MODES = ("quantile", "threshold")

#: A map (or its feature scores) whose range is below this is constant: untestable.
CONSTANT_TOL = 1e-12


@dataclass
class Regions:
    """The two feature sets of one map, as pixel masks ``(H, W)`` (bool, disjoint)."""

    high: torch.Tensor
    low: torch.Tensor
    testable: bool
    reason: str | None  # why the map is untestable (None when testable)
    n_features: int  # how many features the image was divided into
    k_high: int  # features in S_high
    k_low: int  # features in S_low
    separated: bool  # every feature of S_high scores strictly above every feature of S_low

    @property
    def n_high(self) -> int:
        """Pixels in S_high."""
        return int(self.high.sum())

    @property
    def n_low(self) -> int:
        """Pixels in S_low."""
        return int(self.low.sum())


def feature_segments(
    height: int,
    width: int,
    granularity: str = "grid",
    *,
    grid: int = 14,
    n_segments: int = 100,
    compactness: float = 10.0,
    image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label every pixel with its feature: a long tensor ``(H, W)`` with labels ``0 .. F-1``.

    ``"pixel"``: one feature per pixel. ``"grid"``: ``grid x grid`` cells; cell boundaries are
    ``floor(i * grid / H)``, so when ``grid`` does not divide the size, cells differ by at most
    one pixel row/column. ``"superpixel"``: SLIC (scikit-image) on ``image`` (3, H, W) with
    ``n_segments`` and ``compactness``; deterministic for a given image.
    """
    if granularity == "pixel":
        return torch.arange(height * width).view(height, width)
    if granularity == "grid":
        if not 1 <= grid <= min(height, width):
            raise ValueError(
                f"grid must be between 1 and the image's shorter side ({min(height, width)}), got {grid}"
            )
        rows = torch.arange(height) * grid // height
        cols = torch.arange(width) * grid // width
        return rows[:, None] * grid + cols[None, :]
    if granularity == "superpixel":
        if image is None:
            raise ValueError("superpixel granularity needs the image (SLIC segments the image itself)")
        from skimage.segmentation import slic

        arr = image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
        labels = slic(arr, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
        _, inverse = np.unique(labels, return_inverse=True)  # contiguous labels 0..F-1
        return torch.from_numpy(inverse.reshape(height, width).astype(np.int64))
    raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")


def feature_scores(attribution: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attribution and pixel count of each feature, float64 ``(F,)`` and long ``(F,)``."""
    flat = segments.reshape(-1)
    n = int(flat.max()) + 1
    sizes = torch.bincount(flat, minlength=n)
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, flat, attribution.reshape(-1).to(torch.float64))
    return sums / sizes.clamp(min=1), sizes


def _closest_prefix(cum: torch.Tensor, target: float, k_max: int) -> int:
    """The smallest k in 1..k_max whose cumulative size cum[k-1] is closest to target."""
    err = (cum[:k_max].to(torch.float64) - target).abs()
    return int(torch.argmin(err)) + 1  # argmin returns the first minimum: the smallest k


def make_regions(
    attribution: torch.Tensor,
    *,
    granularity: str = "grid",
    grid: int = 14,
    n_segments: int = 100,
    compactness: float = 10.0,
    mode: str = "quantile",
    q: float = 0.2,
    theta_high: float | None = None,
    theta_low: float | None = None,
    image: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    segments: torch.Tensor | None = None,
) -> Regions:
    """S_high and S_low of one attribution map ``(H, W)``.

    Quantile mode (equal area): features are ranked by mean attribution (ties broken by a random
    permutation drawn from ``generator``). S_high is the shortest prefix of the descending
    ranking whose pixel count is closest to ``q * H * W`` (at least one feature); S_low is the
    shortest prefix of the ascending ranking, among the features not in S_high, whose pixel count
    is closest to |S_high|. At pixel granularity both hold exactly ``round(q * H * W)`` pixels
    (at least 1); on a grid whose cells all have the same size, the same number of cells.

    Threshold mode: S_high = {score >= theta_high}, S_low = {score <= theta_low}, on a map in
    [0, 1]; theta_low < theta_high keeps them disjoint.

    Untestable (``testable=False`` with a reason, empty masks): a constant map, constant feature
    scores, or an empty S_high or S_low.
    """
    if attribution.dim() != 2:
        raise ValueError(f"make_regions takes one map (H, W), got shape {tuple(attribution.shape)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")
    if mode not in REGION_MODES:
        raise ValueError(f"unknown region mode {mode!r}; use one of {REGION_MODES}")
    h, w = attribution.shape
    a = attribution.detach().to("cpu", torch.float64)
    if not torch.isfinite(a).all():
        raise ValueError("attribution map has NaN or infinite values")
    if segments is None:
        segments = feature_segments(
            h, w, granularity, grid=grid, n_segments=n_segments, compactness=compactness, image=image
        )
    empty = torch.zeros(h, w, dtype=torch.bool)

    def untestable(reason: str, n_features: int) -> Regions:
        return Regions(empty, empty.clone(), False, reason, n_features, 0, 0, False)

    scores, sizes = feature_scores(a, segments)
    n_feat = int(scores.numel())
    if float(a.max() - a.min()) < CONSTANT_TOL:
        return untestable("constant map", n_feat)
    if float(scores.max() - scores.min()) < CONSTANT_TOL:
        return untestable(f"constant at {granularity} granularity (every feature has the same mean)", n_feat)

    if mode == "quantile":
        if not 0.0 < q <= 0.5:
            raise ValueError(f"q must be in (0, 0.5] so S_high and S_low can be disjoint, got {q}")
        if n_feat < 2:
            return untestable("fewer than two features: S_high and S_low cannot both be non-empty", n_feat)
        perm = torch.randperm(n_feat, generator=generator)
        asc = perm[torch.argsort(scores[perm], stable=True)]  # ascending, ties in random order
        desc = asc.flip(0)
        target = q * h * w
        k_high = _closest_prefix(torch.cumsum(sizes[desc], 0), target, n_feat - 1)
        n_high = int(sizes[desc[:k_high]].sum())
        k_low = _closest_prefix(torch.cumsum(sizes[asc], 0), n_high, n_feat - k_high)
        high_ids, low_ids = desc[:k_high], asc[:k_low]
    else:
        if theta_high is None or theta_low is None:
            raise ValueError("threshold mode needs theta_high and theta_low (on the [0, 1] map)")
        if not theta_low < theta_high:
            raise ValueError(f"theta_low must be below theta_high, got theta_low={theta_low}, theta_high={theta_high}")
        if float(a.min()) < -1e-6 or float(a.max()) > 1 + 1e-6:
            raise ValueError(
                f"threshold mode needs maps in [0, 1], got values in [{float(a.min()):.4g}, "
                f"{float(a.max()):.4g}]; normalise the map or use the quantile mode"
            )
        ids = torch.arange(n_feat)
        high_ids, low_ids = ids[scores >= theta_high], ids[scores <= theta_low]
        if high_ids.numel() == 0:
            return untestable(f"S_high is empty: no feature has attribution >= theta_high={theta_high}", n_feat)
        if low_ids.numel() == 0:
            return untestable(f"S_low is empty: no feature has attribution <= theta_low={theta_low}", n_feat)

    is_high = torch.zeros(n_feat, dtype=torch.bool)
    is_low = torch.zeros(n_feat, dtype=torch.bool)
    is_high[high_ids] = True
    is_low[low_ids] = True
    assert not (is_high & is_low).any()
    separated = bool(scores[high_ids].min() > scores[low_ids].max())
    return Regions(
        high=is_high[segments],
        low=is_low[segments],
        testable=True,
        reason=None,
        n_features=n_feat,
        k_high=int(high_ids.numel()),
        k_low=int(low_ids.numel()),
        separated=separated,
    )
