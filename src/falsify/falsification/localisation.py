"""How well a map points at a region known to hold the evidence (the known-truth benchmark).

Three scores of one map against one truth mask (both ``(H, W)``), all on the pixel level:

- :func:`rank_share` (relevance rank accuracy, Arras et al. 2022): of the map's ``|truth|``
  highest pixels, the share inside the truth; 1 for a map equal to the truth mask;
- :func:`pointing_hit` (the pointing game, Zhang et al. 2018): whether the map's maximum lies
  inside the truth and nowhere outside it (a constant map misses);
- :func:`truth_auc`: the area under the ROC curve of the map as a classifier of truth pixels
  (0.5: no better than chance; ties count half).

:func:`top_share` is the share of a given region (the test's S_high) inside the truth.
"""
from __future__ import annotations

import numpy as np


def _arrays(attribution, truth) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(attribution, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    if a.shape != t.shape or a.ndim != 2:
        raise ValueError(f"map {a.shape} and truth {t.shape} must be the same (H, W)")
    if not np.isfinite(a).all():
        raise ValueError("the map has non-finite values")
    return a.ravel(), t.ravel()


def rank_share(attribution, truth) -> float | None:
    """Share of the map's ``k = |truth|`` highest pixels that lie in the truth (ties at the k-th
    value are shared out in proportion, so the score does not depend on pixel order); None for an
    empty or full truth."""
    a, t = _arrays(attribution, truth)
    k = int(t.sum())
    if k == 0 or k == t.size:
        return None
    kth = np.partition(a, a.size - k)[a.size - k]  # the k-th largest value
    above = a > kth
    tied = a == kth
    take_tied = k - int(above.sum())  # pixels of the tied value that make up the k
    inside = int((above & t).sum()) + take_tied * (int((tied & t).sum()) / int(tied.sum()))
    return inside / k


def pointing_hit(attribution, truth) -> bool | None:
    """Whether the map's maximum is reached inside the truth and not outside it; None for an
    empty or full truth."""
    a, t = _arrays(attribution, truth)
    if not t.any() or t.all():
        return None
    return bool(a[t].max() > a[~t].max())


def truth_auc(attribution, truth) -> float | None:
    """ROC AUC of the map's values as scores of truth pixels (Mann-Whitney U / (n1 n0), ties half);
    None for an empty or full truth."""
    from scipy.stats import rankdata

    a, t = _arrays(attribution, truth)
    n1 = int(t.sum())
    n0 = t.size - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(a)  # average ranks: ties count half
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def top_share(region, truth) -> float | None:
    """Share of ``region``'s pixels (e.g. the test's S_high) inside the truth; None for an empty region."""
    r = np.asarray(region, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if r.shape != t.shape:
        raise ValueError(f"region {r.shape} and truth {t.shape} must be the same (H, W)")
    n = int(r.sum())
    return None if n == 0 else int((r & t).sum()) / n


def localisation(attribution, truth, region=None) -> dict:
    """All scores of one map: ``rank_share``, ``pointing``, ``auc`` and, given the test's S_high
    ``region``, ``top_share``."""
    out = {"rank_share": rank_share(attribution, truth), "pointing": pointing_hit(attribution, truth),
           "auc": truth_auc(attribution, truth)}
    if region is not None:
        out["top_share"] = top_share(region, truth)
    return out
