"""The known-truth benchmark's composites (:mod:`.known_truth`): the part masks, the feathered
blend, the truth, its core and the wrong region of each composite; for the cell constructions
(``lateral``, ``parts``: :class:`CellTruth`) the truth is a set of the test's grid cells, with
its mirror and a region outside it that carries the same prior mass."""
from __future__ import annotations

import numpy as np

CONSTRUCTIONS = ("lateral", "parts", "swap", "average")
#: the regions of B each cell construction draws from, one per composite (seeded by the pair)
CELL_REGIONS: dict[str, tuple[str, ...]] = {
    "lateral": ("left half", "right half", "left eye", "right eye"),
    "parts": ("eyes", "nose", "mouth"),
}
#: a grid cell belongs to a region when the region covers at least this share of its pixels
CELL_COVER = 0.5
#: the random stream (``stages.pair_generator``) of a composite's region and its maps' orders
STREAM_TRUTH = 7
#: the parts a composite takes from the donor
PART_SETS: dict[str, tuple[str, ...]] = {
    "eyes": ("left eye", "right eye"),
    "eyes+nose": ("left eye", "right eye", "nose"),
    "inner": ("left eye", "right eye", "nose", "mouth"),
}
DEFAULT_CONSTRUCTION = "lateral"
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



# ---------------------------------------------------------------------------------------------
# cell constructions: the truth is a set of the test's grid cells


def midline_x(points: np.ndarray) -> float:
    """The face's vertical middle (x, pixels; pixel i spans [i, i + 1)): halfway between the eyes'
    centre and the mouth's centre."""
    p = np.asarray(points, dtype=np.float64)
    return float((p[:2, 0].mean() + p[3:, 0].mean()) / 2)


def region_pixels(points: np.ndarray, size: tuple[int, int], region: str) -> np.ndarray:
    """The pixels of ``region`` (:data:`CELL_REGIONS`) of the face with landmarks ``points``: one
    eye or both, the nose, the mouth (6.3's part labels), or a half of the inner face (the convex
    hull of eyes, nose and mouth, left or right of :func:`midline_x`)."""
    from skimage.morphology import convex_hull_image

    from .exp_6_3 import LEFT_EYE, MOUTH, NOSE, RIGHT_EYE, part_labels

    labels = part_labels(points, size)
    named = {"left eye": [LEFT_EYE], "right eye": [RIGHT_EYE], "eyes": [LEFT_EYE, RIGHT_EYE], "nose": [NOSE],
             "mouth": [MOUTH]}
    if region in named:
        return np.isin(labels, named[region])
    if region not in ("left half", "right half"):
        raise ValueError(f"unknown region {region!r}; choose from {', '.join(sorted({*named, 'left half', 'right half'}))}")
    hull = convex_hull_image(part_mask(labels, "inner"))
    xs = np.arange(size[1])[None, :] + 0.5
    mid = midline_x(points)
    return hull & ((xs < mid) if region == "left half" else (xs >= mid))


def mirror_pixels(mask: np.ndarray, mid: float) -> np.ndarray:
    """``mask`` reflected across the column ``x = mid`` (pixel centres), clipped to the image."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    mx = np.floor(2 * mid - (xs + 0.5)).astype(int)
    keep = (mx >= 0) & (mx < w)
    out = np.zeros_like(mask, dtype=bool)
    out[ys[keep], mx[keep]] = True
    return out


def cell_coverage(mask: np.ndarray, seg: np.ndarray, n_cells: int) -> np.ndarray:
    """The share of each cell's pixels inside ``mask``."""
    sizes = np.bincount(seg.ravel(), minlength=n_cells)
    return np.bincount(seg.ravel(), weights=mask.ravel().astype(np.float64), minlength=n_cells) / np.maximum(sizes, 1)


def cells_of(mask: np.ndarray, seg: np.ndarray, n_cells: int) -> np.ndarray:
    """The cells :data:`CELL_COVER` covered by ``mask`` (at least the most covered one, when it
    covers any)."""
    cov = cell_coverage(mask, seg, n_cells)
    cells = cov >= CELL_COVER
    if not cells.any() and cov.max() > 0:
        cells[int(np.argmax(cov))] = True
    return cells


def inner_alpha(truth: np.ndarray, sigma_px: float) -> np.ndarray:
    """A blend weight that changes exactly the pixels of ``truth``: 2 x (the Gaussian-smoothed mask)
    - 1, so it ramps up inside the truth's edge, at least :data:`ALPHA_FLOOR` on the truth and 0
    outside; float32."""
    from scipy.ndimage import gaussian_filter

    m = truth.astype(np.float64)
    a = np.clip(2 * gaussian_filter(m, sigma=sigma_px, mode="nearest") - 1, ALPHA_FLOOR, 1.0) if sigma_px > 0 else m
    return np.where(truth, a, 0.0).astype(np.float32)


def prior_matched(prior_cells: np.ndarray, truth_cells: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """As many cells as the truth has, none of ``exclude``, whose summed prior is closest to the
    truth's: the window of consecutive cells in the prior's descending order (cells outside
    ``exclude``) with the summed prior nearest to the truth's (the first on ties)."""
    n = int(truth_cells.sum())
    free = np.flatnonzero(~exclude)
    if free.size < n:
        raise ValueError("the truth and its mirror leave too few cells for a prior-matched region")
    order = free[np.argsort(-prior_cells[free], kind="stable")]
    target = float(prior_cells[truth_cells].sum())
    cum = np.concatenate([[0.0], np.cumsum(prior_cells[order])])
    sums = cum[n:] - cum[: cum.size - n]
    start = int(np.argmin(np.abs(sums - target)))
    out = np.zeros_like(truth_cells)
    out[order[start : start + n]] = True
    return out


class CellTruth:
    """A composite of a cell construction: B's ``region`` pasted, with :func:`inner_alpha`, on a
    base face. Its ``truth`` is a union of the test's ``grid`` cells (those :func:`cells_of` the
    region's pixels), so q matched to its area makes a truth map's S_high exactly the truth; the
    ``mirror`` (lateral regions) is the truth reflected across the face's middle column, less the
    truth; ``matched`` is a region outside both with the truth's prior mass (:func:`prior_matched`);
    ``wrong`` the region of :func:`wrong_region`. ``prior_cells``: the prior map's mean per cell.
    The prior's shares (``*_mass``: of its summed map over the image) are recorded."""

    def __init__(self, points: np.ndarray, size: tuple[int, int], grid: int, region: str,
                 prior_map: np.ndarray) -> None:
        from ..falsification.regions import feature_segments

        self.points = np.asarray(points, dtype=np.float64)
        self.region = region
        h, w = size
        self.seg = feature_segments(h, w, "grid", grid=grid).numpy()
        n = grid * grid
        pix = region_pixels(self.points, size, region)
        if not pix.any():
            raise ValueError(f"the region {region} lies outside the image")
        self.cells = cells_of(pix, self.seg, n)
        self.truth = self.cells[self.seg]
        self.alpha = inner_alpha(self.truth, FEATHER_SIGMA * min(size))
        self.core = self.alpha >= 0.5
        mid = midline_x(self.points)
        self.mirror_cells = None
        if region in CELL_REGIONS["lateral"]:
            mc = cells_of(mirror_pixels(self.truth, mid), self.seg, n) & ~self.cells
            self.mirror_cells = mc if mc.any() else None
        prior = np.asarray(prior_map, dtype=np.float64)
        sizes = np.bincount(self.seg.ravel(), minlength=n)
        self.prior_cells = np.bincount(self.seg.ravel(), weights=prior.ravel(), minlength=n) / np.maximum(sizes, 1)
        taken = self.cells | (self.mirror_cells if self.mirror_cells is not None else False)
        self.matched_cells = prior_matched(self.prior_cells, self.cells, taken)
        eye_c, mouth_c = self.points[:2].mean(axis=0), self.points[3:].mean(axis=0)
        self.centre_row = float((eye_c[1] + mouth_c[1]) / 2) - 0.5
        self.wrong = wrong_region(self.truth, self.core, self.centre_row)
        total = float(prior.sum()) or 1.0
        mass = lambda cells: None if cells is None else float(prior[cells[self.seg]].sum() / total)  # noqa: E731
        self.truth_mass, self.mirror_mass, self.matched_mass = (mass(self.cells), mass(self.mirror_cells),
                                                                mass(self.matched_cells))

    @property
    def mirror(self) -> np.ndarray | None:
        return None if self.mirror_cells is None else self.mirror_cells[self.seg]

    @property
    def matched(self) -> np.ndarray:
        return self.matched_cells[self.seg]

    @property
    def q(self) -> float:
        """The truth's share of the image: the q whose S_high is the truth."""
        return float(self.truth.mean())

    def maps(self, prior_map, order: np.ndarray) -> dict:
        """The known maps, (H, W) float32 tensors: on its region each is 2 + ``order`` (a random
        order of the cells in [0, 1), so the prior never picks cells inside the region), elsewhere
        the prior map in [0, 1] (their S_low is the prior's): ``truth``, ``mirror`` (None without
        one), ``matched``, ``wrong-part``."""
        import torch

        p = unit_range(torch.as_tensor(prior_map)).double().numpy()
        ranked = (2.0 + order)[self.seg]

        def on(region):
            return None if region is None else torch.from_numpy(np.where(region, ranked, p).astype(np.float32))

        return {"truth": on(self.truth), "mirror": on(self.mirror), "matched": on(self.matched),
                "wrong-part": on(self.wrong)}
