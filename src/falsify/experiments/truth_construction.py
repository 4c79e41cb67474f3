"""The known-truth benchmark's composites (:mod:`.known_truth`): the part masks, the feathered
blend, the truth, its core and the wrong region of each composite."""
from __future__ import annotations

import numpy as np

CONSTRUCTIONS = ("swap", "average")
#: the parts a composite takes from the donor
PART_SETS: dict[str, tuple[str, ...]] = {
    "eyes": ("left eye", "right eye"),
    "eyes+nose": ("left eye", "right eye", "nose"),
    "inner": ("left eye", "right eye", "nose", "mouth"),
}
DEFAULT_CONSTRUCTION = "average"
DEFAULT_PARTS = "inner"
#: the feathering of the blend: Gaussian std as a fraction of the image's shorter side
FEATHER_SIGMA = 0.02
#: blend weights below this are cut to 0, so the truth (alpha > 0) is finite
ALPHA_FLOOR = 0.01


# ---------------------------------------------------------------------------------------------
# the construction


def part_mask(labels: np.ndarray, parts: str) -> np.ndarray:
    """The pixels of the part set ``parts`` (:data:`PART_SETS`) in 6.3's part labels."""
    from .exp_6_3 import PARTS

    if parts not in PART_SETS:
        raise ValueError(f"unknown part set {parts!r}; choose from {', '.join(PART_SETS)}")
    return np.isin(labels, [PARTS.index(n) for n in PART_SETS[parts]])


def feathered(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """The blend weight of a 0/1 ``mask``: Gaussian-smoothed (std ``sigma_px`` pixels), at least
    the mask's own 1 inside a core eroded by nothing (max with the smoothed mask), cut to 0 below
    :data:`ALPHA_FLOOR`; float32 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    m = np.asarray(mask, dtype=np.float64)
    a = gaussian_filter(m, sigma=sigma_px, mode="constant") if sigma_px > 0 else m.copy()
    a = np.clip(a, 0.0, 1.0)
    a[a < ALPHA_FLOOR] = 0.0
    return a.astype(np.float32)


def composite(base, donor, alpha):
    """``(1 - alpha) base + alpha donor`` for (3, H, W) images and an (H, W) weight; pixels with
    alpha 0 are ``base``'s exactly."""
    import torch

    a = torch.as_tensor(alpha, dtype=base.dtype).unsqueeze(0)
    out = base + a * (donor - base)
    return torch.where(a > 0, out, base)


def wrong_region(truth: np.ndarray, core: np.ndarray, centre_row: float) -> np.ndarray:
    """A region of ``core``'s area where the construction changed nothing: ``core`` mirrored across
    the row ``centre_row`` (the face's middle), less the ``truth``, then grown by the pixels outside
    the truth nearest to it (distance, then raster order) until it has exactly the core's area."""
    from scipy.ndimage import distance_transform_edt

    h, w = core.shape
    n = int(core.sum())
    ys, xs = np.nonzero(core)
    my = np.clip(np.round(2 * centre_row - ys).astype(int), 0, h - 1)
    seed = np.zeros_like(core, dtype=bool)
    seed[my, xs] = True
    seed &= ~truth
    free = ~truth
    if int(free.sum()) < n:
        raise ValueError("the truth covers too much of the image for a wrong region of the same area")
    if seed.any():
        dist = distance_transform_edt(~seed)
    else:  # the mirror lies inside the truth: grow from the pixels farthest from it
        dist = -distance_transform_edt(~truth)
    order = np.lexsort((np.arange(h * w), dist.ravel()))
    order = order[free.ravel()[order]]
    out = np.zeros(h * w, dtype=bool)
    out[order[:n]] = True
    return out.reshape(h, w)


def unit_range(m):
    """``m`` scaled to [0, 1] (a constant map gives zeros)."""
    m = m.double()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if float(hi - lo) > 0 else m * 0


def truth_maps(alpha: np.ndarray, core: np.ndarray, wrong: np.ndarray, prior_map) -> dict:
    """The known maps of one composite (see the module's docstring), (H, W) float32 tensors."""
    import torch

    p = unit_range(torch.as_tensor(prior_map)).float()
    wrong_t = torch.from_numpy(wrong.astype(np.float32))
    truth = torch.from_numpy(alpha)
    return {"truth": 2 * (truth > 0).float() + truth + p, "truth-flat": torch.from_numpy(core.astype(np.float32)),
            "wrong-part": 2 * wrong_t + p, "wrong-part-flat": wrong_t}


class Construction:
    """What one composite is made of: its labels' landmarks, the blend weight, the truth, the core
    and the wrong region (all (H, W) numpy)."""

    def __init__(self, points: np.ndarray, size: tuple[int, int], parts: str) -> None:
        from .exp_6_3 import part_labels

        self.points = np.asarray(points, dtype=np.float64)
        labels = part_labels(self.points, size)
        mask = part_mask(labels, parts)
        if not mask.any():
            raise ValueError(f"the part set {parts} lies outside the image")
        self.alpha = feathered(mask, FEATHER_SIGMA * min(size))
        self.truth = self.alpha > 0
        self.core = self.alpha >= 0.5
        eye_c, mouth_c = self.points[:2].mean(axis=0), self.points[3:].mean(axis=0)
        self.centre_row = float((eye_c[1] + mouth_c[1]) / 2) - 0.5
        self.wrong = wrong_region(self.truth, self.core, self.centre_row)

