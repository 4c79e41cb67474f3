"""The test's ceiling on an image: the best map the test's own rules allow, found by a greedy search.

A map is judged only through the two feature sets it picks, S_high and S_low (the quantile
rule of ``falsify.falsification.regions``: S_high covers about ``q`` of the pixels, S_low as
many pixels among the other features). The *ceiling* of an image asks what any map could reach
there: the S_high that moves the embedding furthest when hidden, and the S_low that moves it
least, among the sets that rule can produce, under the run's own fill, draws, target and
criterion. When even the ceiling is falsified, no map found by the search passes on that image,
and a method falsified there is not to blame for it.

The search (:func:`ceiling_search`), per image:

1. **Screening.** Every feature (grid cell, superpixel) is hidden alone with the fill of the
   S_high counterfactuals (its first sample for stochastic fills): its single-feature effect
   e_c = d(f(x), f(x with c filled)). One forward pass per feature.
2. **Start.** The features ranked by e_c (ties in a random order from the pair's
   ``STREAM_REGIONS`` generator) make a map; the region rule on it gives the starting S_high
   (the top, as many features as the rule takes) and S_low (the bottom, among the others).
   When a ``prior`` map is given (the beyond-prior criterion), the prior's own regions are a
   second start, kept where they are better, so the ceiling never starts below the prior.
3. **Refinement** (``rounds`` rounds per region, S_high first, then S_low among the features
   not in S_high). A round measures, with the test's own counterfactuals (all K samples), how
   much removing each feature of the set changes its distance, and how much adding each of the
   ``pool`` best outside candidates (by e_c) does; it then tries swapping the j weakest members
   for the j strongest candidates (j = 1 .. ``swaps``, and the same with candidates of the
   same pixel size), keeps the best swap the region rule allows if it improves the distance
   (d_high up, d_low down), and stops when none does.
4. **The ceiling map** (:func:`ceiling_map`): an (H, W) map whose quantile regions are exactly
   the found S_high and S_low (checked with ``make_regions``), judged by the ordinary
   :func:`falsify.falsification.falsification_test` with the run's criterion (beyond-prior:
   against the prior map's margin on the same image), so the ceiling is judged like any map and
   running the test on that map reproduces its verdict.

**Early stop** (``CeilingSearch.stop_margin``): for a criterion whose verdict cannot turn from
passed to falsified as d_high grows and d_low shrinks (``Criterion.monotone``), the search stops
as soon as its sets pass with ``stop_margin`` to spare: on the starts of a *coarse screening*
first (blocks of about 2 x 2 features hidden together, each feature ranked by its block's
effect), then with the strongest blocks' features screened alone, then on the screening's
starts, then after every round of S_low. The ceiling's verdict
is the full search's whenever it passes early (refinement could only widen the margin); its
distances are then those of the first passing sets. A ceiling that does not pass early is the
full search's, sets and distances.

The greedy search is a lower bound on the true optimum (the best of C(F, k) sets is not
searched): "the ceiling is falsified" means the search found no passing map, not that none
exists. With the defaults, on a 14 x 14 grid at q = 0.1 (about 20 cells per region) and a
deterministic fill, the full search embeds at most about 196 + 2 x (1 + 2 x 40) = 358
counterfactuals per image (about 49 + 8 more with the coarse stages tried first), and a
ceiling that passes on the coarse starts about 49 + 4 (docs/method.md, "The test's ceiling").

Only quantile regions at grid or superpixel granularity and the fills that need no model
(blur, mean, zero, noise) are searched: at pixel granularity the screening alone would embed
H x W images, threshold regions have no fixed size, and the optimised fill runs Algorithm 1 for
every candidate set; those are refused with a one-line ``ValueError`` (:func:`check_searchable`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..geometry import angle_rounding
from ..models.base import model_device
from .core import FalsificationConfig, FalsificationResult, check_inputs, falsification_test
from .criteria import criterion_for
from .regions import Regions, feature_segments, make_regions
from .stages import STREAM_REGIONS, BatchedEmbedder, as_tensor, distances, embed, fill_for, pair_generator


@dataclass(frozen=True)
class CeilingSearch:
    """The greedy search's settings: refinement ``rounds`` per region (0: the screening's
    ranking only), the ``pool`` of outside candidates tried per round, and up to ``swaps``
    members exchanged at once. ``stop_margin`` (radians; None: never stop early): the search
    stops as soon as its sets pass the criterion with ``d_high`` lowered and ``d_low`` raised by
    this much (the verdict is then decided: refinement only raises d_high and lowers d_low), for
    criteria whose verdict is monotone in them (``Criterion.monotone``)."""

    rounds: int = 2
    pool: int = 12
    swaps: int = 4
    stop_margin: float | None = 1e-3

    def __post_init__(self) -> None:
        for name, minimum in (("rounds", 0), ("pool", 1), ("swaps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"ceiling search {name} must be an integer >= {minimum}, got {v!r}")
        m = self.stop_margin
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < math.pi):
            raise ValueError(f"ceiling search stop_margin must be an angle in [0, pi) radians or None, got {m!r}")

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "pool": self.pool, "swaps": self.swaps, "stop_margin": self.stop_margin}


@dataclass
class CeilingResult:
    """The ceiling of one image: the map, the feature sets the search found, the distances the
    search measured for them, and ``result``, the ordinary test of the map (its verdict is the
    ceiling's)."""

    pair_id: int
    map: torch.Tensor = field(repr=False)  # (H, W): its quantile regions are high_features, low_features
    high_features: tuple[int, ...]
    low_features: tuple[int, ...]
    d_high_search: float  # the search's d_high of S_high (radians; nan when nothing was searched)
    d_low_search: float
    n_embedded: int  # counterfactual images the search embedded (forward passes of one image)
    seconds: float  # the search's time (the final test not included)
    result: FalsificationResult

    @property
    def verdict(self) -> str:
        return self.result.verdict

    def to_dict(self) -> dict:
        """JSON-ready: the test's result, and the search under ``search``."""
        f = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {**self.result.to_dict(), "search": {
            "high_features": list(self.high_features), "low_features": list(self.low_features),
            "d_high": f(self.d_high_search), "d_low": f(self.d_low_search), "n_embedded": self.n_embedded,
            "seconds": self.seconds}}


def check_searchable(config: FalsificationConfig) -> None:
    """A one-line ``ValueError`` when the ceiling of ``config``'s test cannot be searched."""
    if config.region != "quantile":
        raise ValueError("the ceiling search needs quantile regions (region='quantile'): threshold regions have no "
                         "fixed size to search within")
    if config.granularity == "pixel":
        raise ValueError("the ceiling search needs grid or superpixel granularity: at pixel granularity its "
                         "screening alone would embed one image per pixel")
    if config.fill == "optimised":
        raise ValueError("the ceiling search needs a fill that needs no model (blur, mean, zero, noise): the "
                         "optimised fill would run Algorithm 1 for every candidate set")


def ceiling_map(segments: torch.Tensor, high: Sequence[int], low: Sequence[int]) -> torch.Tensor:
    """An (H, W) float map whose quantile regions are ``high`` and ``low`` (feature ids of
    ``segments``) whenever the region rule can pick them: ``high`` on top, ``low`` at the
    bottom, every value distinct (no tie is left to chance). Within each set the largest feature
    is ranked last, and the largest of the other features sits next to ``high`` (the second
    largest next to ``low``), so that the rule's closest prefix stops at each set's edge whenever
    any order of the features lets it."""
    return _ranking(segments, high, low).float()[segments]


def _ranking(segments: torch.Tensor, high: Sequence[int], low: Sequence[int],
             rest: Sequence[int] | None = None) -> torch.Tensor:
    """Feature values (F,) of :func:`ceiling_map`; ``rest``: the other features from the lowest
    up (default: the largest next to ``high``, the second largest next to ``low``)."""
    seg = segments.reshape(-1)
    n = int(seg.max()) + 1
    sizes = torch.bincount(seg, minlength=n).tolist()
    high, low = [int(c) for c in high], [int(c) for c in low]
    taken = set(high) | set(low)
    if len(taken) != len(high) + len(low):
        raise ValueError("the ceiling's S_high and S_low overlap")
    values = torch.zeros(n, dtype=torch.float64)
    by_size = lambda c: (sizes[c], c)  # noqa: E731
    for i, c in enumerate(sorted(high, key=by_size)):  # descending ranking: the largest of S_high last
        values[c] = 3.0 - i / (len(high) + 1)
    for i, c in enumerate(sorted(low, key=by_size)):  # ascending ranking: the largest of S_low last
        values[c] = i / (len(low) + 1)
    if rest is None:
        others = sorted((c for c in range(n) if c not in taken), key=by_size, reverse=True)
        rest = others[1::2] + others[0::2][::-1]  # from the lowest up: second largest first, largest last
    for j, c in enumerate(rest):
        values[c] = 1.0 + (j + 1) / (len(rest) + 1)
    return values


class _Image:
    """The search on one image: its features, fill values and embedding, and the distances of
    feature sets, counted."""

    def __init__(self, model, image, f_x, reference, values_high, values_low, segments, config, device) -> None:
        self.model, self.x, self.f_x, self.ref = model, image, f_x.double(), reference
        self.values = {"high": values_high, "low": values_low}
        self.segments, self.config, self.device = segments, config, device
        self.n = int(segments.max()) + 1
        self.sizes = torch.bincount(segments.reshape(-1), minlength=self.n)
        self.n_embedded = 0
        self._known: dict = {}  # (set, stream, samples) -> its distance, measured once
        #: two of its distances closer than this are a tie (each within 2 x float32 angle rounding):
        #: a step of the search must gain more, so rounding noise (another thread count) never takes one
        self.tie = 4 * angle_rounding(int(f_x.shape[-1]))

    def d(self, sets: Sequence[frozenset], stream: str, samples: int | None = None) -> list[float]:
        """The mean distance of hiding each feature set (the counterfactuals of ``stream``, its
        first ``samples`` draws; default all K); a set measured before is not embedded again."""
        new = [s for s in dict.fromkeys(sets) if (s, stream, samples) not in self._known]
        for s, v in zip(new, self._measure(new, stream, samples)):
            self._known[(s, stream, samples)] = v
        return [self._known[(s, stream, samples)] for s in sets]

    def _measure(self, sets: Sequence[frozenset], stream: str, samples: int | None) -> list[float]:
        if not sets:
            return []
        values = self.values[stream][: samples or None]
        k = values.shape[0]
        embedder = BatchedEmbedder(self.model, self.config.batch_size, k * len(sets), self.device)
        member = torch.zeros(len(sets), self.n, dtype=torch.bool)
        for i, s in enumerate(sets):
            if s:
                member[i, list(s)] = True
        step = max(1, self.config.batch_size // k)  # about one forward pass of counterfactuals at a time
        for start in range(0, len(sets), step):
            masks = member[start : start + step][:, self.segments]  # (n, H, W)
            cf = torch.where(masks[:, None, None], values.unsqueeze(0), self.x)  # (n, k, 3, H, W)
            embedder.add(cf.reshape(-1, *self.x.shape))
        emb = embedder.finish().double()
        self.n_embedded += k * len(sets)
        d = distances(self.f_x, emb, self.ref, self.config.target).view(len(sets), k)
        return [float(v) for v in d.mean(1)]


def _features(mask: torch.Tensor, segments: torch.Tensor) -> frozenset:
    return frozenset(int(c) for c in torch.unique(segments[mask]))


def _regions(m: torch.Tensor, segments: torch.Tensor, config, pair_id: int) -> Regions:
    """The test's regions of map ``m`` on this image (the test's rule and tie-breaking stream)."""
    return make_regions(m, granularity=config.granularity, mode="quantile", q=config.q, segments=segments,
                        generator=pair_generator(config.seed, pair_id, STREAM_REGIONS))


def _refine(img: _Image, starts: Sequence[frozenset], stream: str, sign: float, order: Sequence[int], allowed,
            valid, search: CeilingSearch, rounds: int | None = None, stop=None) -> tuple[frozenset, float]:
    """Local search maximising ``sign`` x distance from the best of ``starts`` (the first always
    counts; the others only when ``valid``): measure each member's removal and each of the
    ``pool`` best allowed outside candidates' addition (``order``: best first), try swapping the
    weakest members for the strongest candidates, keep the best swap that ``valid`` allows if it
    improves. ``rounds`` (default ``search.rounds``); ``stop(distance)``: True ends the search
    with the set of that distance (checked on the best start and after every round)."""
    starts = [starts[0]] + [s for s in dict.fromkeys(starts[1:]) if s != starts[0] and valid(s)]
    v = [sign * x for x in img.d(starts, stream)]
    i = max(range(len(v)), key=lambda i: v[i])
    best_set, best = starts[i], v[i]
    sizes = img.sizes.tolist()
    for _ in range(search.rounds if rounds is None else rounds):
        if stop is not None and stop(sign * best):
            break
        members = sorted(best_set)
        pool = [c for c in order if c not in best_set and allowed(c)][: search.pool]
        if not pool:
            break
        probes = [best_set - {c} for c in members] + [best_set | {c} for c in pool]
        v = [sign * x for x in img.d(probes, stream)]
        loss = {c: best - v[i] for i, c in enumerate(members)}  # what removing c costs
        gain = {c: v[len(members) + i] - best for i, c in enumerate(pool)}  # what adding c brings
        weak = sorted(members, key=lambda c: (loss[c], c))
        strong = sorted(pool, key=lambda c: (-gain[c], c))
        proposals = []
        for j in range(1, min(search.swaps, len(weak), len(strong)) + 1):
            proposals.append(best_set - set(weak[:j]) | set(strong[:j]))
            used, swap_in = set(), []
            for c in weak[:j]:  # the same swaps with candidates of the same pixel size
                match = next((s for s in strong if s not in used and sizes[s] == sizes[c]), None)
                if match is None:
                    break
                used.add(match)
                swap_in.append(match)
            if len(swap_in) == j:
                proposals.append(best_set - set(weak[:j]) | set(swap_in))
        proposals = [p for p in dict.fromkeys(proposals) if p != best_set and valid(p)]
        if not proposals:
            break
        v = [sign * x for x in img.d(proposals, stream)]
        i = max(range(len(v)), key=lambda i: v[i])
        if not v[i] > best + img.tie:
            break
        best_set, best = proposals[i], v[i]
    return best_set, sign * best


def ceiling_search(
    model: torch.nn.Module,
    images: torch.Tensor,
    references: torch.Tensor | None,
    config: FalsificationConfig,
    *,
    pair_ids: Sequence[int] | None = None,
    prior: torch.Tensor | None = None,
    prior_cache: dict | None = None,
    search: CeilingSearch | None = None,
) -> list[CeilingResult]:
    """The ceiling of each image (module docstring): the best S_high and S_low the greedy
    search finds under ``config``'s regions, fill, draws and target, as a map, and that map's
    ordinary test under ``config``'s criterion.

    ``images`` (B, 3, H, W) in [0, 1], ``references`` (B, D) or None, ``config`` with its
    thresholds set, ``pair_ids`` (default 0 .. B-1: the ids that seed each pair's draws, as in
    :func:`falsification_test`), ``prior`` and ``prior_cache`` as there (the beyond-prior
    criterion needs the prior), ``search``: :class:`CeilingSearch` (default settings)."""
    search = search or CeilingSearch()
    check_searchable(config)
    if not config.has_criterion:
        raise ValueError("the ceiling is judged by the run's criterion: set tau_high, tau_low and epsilon (and delta "
                         "for 'beyond-prior') or calibrate them, as for falsification_test")
    criterion_for(config).check_inputs(prior=prior)  # refused now, not after the search
    images = as_tensor(images, "images")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    blank = torch.zeros(images.shape[0], *images.shape[-2:])  # check_inputs checks maps too: the search makes them
    images, references, _ = check_inputs(model, images, references, blank)
    b, (h, w) = images.shape[0], images.shape[-2:]
    pair_ids = list(range(b)) if pair_ids is None else [int(p) for p in pair_ids]
    if len(pair_ids) != b:
        raise ValueError(f"pair_ids needs one id per image ({b}), got {len(pair_ids)}")
    device = model_device(model)
    # f(x) of each image alone, so the search of an image never depends on the images beside it
    f_x = torch.cat([embed(model, images[i : i + 1], config.batch_size, device) for i in range(b)])
    fill = fill_for(config)
    decided = _decider(model, images, f_x, references, config, pair_ids, device, prior, prior_cache, search)
    maps, found = [], []
    for i in range(b):
        t0 = time.perf_counter()
        x, pid = images[i], pair_ids[i]
        segments = feature_segments(h, w, config.granularity, grid=config.grid, n_segments=config.n_segments,
                                    compactness=config.compactness, image=x)
        n = int(segments.max()) + 1
        everything = torch.ones(h, w, dtype=torch.bool)
        # the fill's values on every pixel: the S_high samples, then the S_low ones, drawn as the test draws them
        v_high, v_low = fill.halves(x, Regions(everything, everything, True, None, n, n, n, False), pid)
        img = _Image(model, x, f_x[i], None if references is None else references[i], v_high, v_low, segments,
                     config, device)
        nan = float("nan")
        if n < 2:
            maps.append(torch.zeros(h, w))  # one feature: no map can rank two; the test says untestable
            found.append(((), (), nan, nan, img.n_embedded, time.perf_counter() - t0))
            continue
        high, low, d_high, d_low = _search_image(img, segments, config, pid, prior, search, decided)
        m = ceiling_map(segments, sorted(high), sorted(low))
        check = _regions(m, segments, config, pid)
        if _features(check.high, segments) != high or _features(check.low, segments) != low:
            # the rule picks other sets from this map (cell sizes): the map is judged by what it picks
            high, low = _features(check.high, segments), _features(check.low, segments)
            d_high, d_low = img.d([high], "high")[0], img.d([low], "low")[0]
        maps.append(m)
        found.append((tuple(sorted(high)), tuple(sorted(low)), d_high, d_low, img.n_embedded,
                      time.perf_counter() - t0))
    # 4. the ordinary test of each ceiling map, under the run's criterion
    results = falsification_test(model, images, references, torch.stack(maps), config, pair_ids=pair_ids,
                                 prior=prior, prior_cache=prior_cache)
    return [CeilingResult(pid, m, hi, lo, dh, dl, ne, s, r)
            for pid, m, (hi, lo, dh, dl, ne, s), r in zip(pair_ids, maps, found, results)]


def _decider(model, images, f_x, references, config, pair_ids, device, prior, prior_cache, search: CeilingSearch):
    """``decided(pair_id, d_high, d_low)``: True when sets with those distances pass the
    criterion with ``search.stop_margin`` to spare, so no refinement can change the verdict;
    None when the search never stops early (no margin, or a criterion not monotone in d_high
    and d_low)."""
    criterion = criterion_for(config)
    if search.stop_margin is None or not criterion.monotone:
        return None
    criterion.prepare(model, images, f_x, references, pair_ids, device, prior=prior, prior_cache=prior_cache)
    m = float(search.stop_margin)
    return lambda pid, d_high, d_low: criterion.judge(pid, d_high - m, d_low + m).verdict == "passed"


def _blocks(segments: torch.Tensor, n: int) -> list[frozenset]:
    """The features in blocks of about 2 x 2: by the cell of a ``c x c`` grid, c = ceil(sqrt(n) / 2),
    that holds each feature's centroid (grid 14: the 7 x 7 blocks of 2 x 2 cells); no block is empty."""
    h, w = segments.shape
    c = max(1, math.ceil(math.sqrt(n) / 2))
    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)
    seg = segments.reshape(-1)
    count = torch.bincount(seg, minlength=n).double().clamp_min(1)
    cy = torch.bincount(seg, weights=ys, minlength=n) / count
    cx = torch.bincount(seg, weights=xs, minlength=n) / count
    block = ((cy + 0.5) * c / h).long().clamp(0, c - 1) * c + ((cx + 0.5) * c / w).long().clamp(0, c - 1)
    groups: dict[int, set] = {}
    for f, b in enumerate(block.tolist()):
        groups.setdefault(b, set()).add(f)
    return [frozenset(g) for _, g in sorted(groups.items())]


def _search_image(img: _Image, segments: torch.Tensor, config, pid: int, prior, search: CeilingSearch, decided
                  ) -> tuple[frozenset, frozenset, float, float]:
    """The screening, the starts and the refinement on one image (module docstring): S_high,
    S_low and the search's d_high, d_low. With ``decided`` (:func:`_decider`) the search stops as
    soon as its sets decide the verdict: on the starts of a coarse screening (blocks of about
    2 x 2 features hidden alone), then with the strongest blocks' features screened alone, then
    on the screening's starts, then after every round of S_low."""
    n = img.n
    perm = torch.randperm(n, generator=pair_generator(config.seed, pid, STREAM_REGIONS)).tolist()
    # under beyond-prior the prior map's own regions start too: the ceiling is then never below the prior
    prior_reg = None if prior is None else _regions(torch.as_tensor(prior).float(), segments, config, pid)
    prior_reg = prior_reg if prior_reg is not None and prior_reg.testable else None
    if decided is not None:
        # 0. coarse: blocks hidden alone, each feature ranked by its block; then the features of the
        # strongest blocks (twice the area S_high takes) each hidden alone, ranked above the others
        blocks = _blocks(segments, n)
        block_effect = img.d(blocks, "high", samples=1)
        effect = [0.0] * n
        for g, e in zip(blocks, block_effect):
            for c in g:
                effect[c] = e
        order = sorted(perm, key=lambda c: -effect[c])
        found = _greedy(img, segments, config, pid, order, prior_reg, search, decided, rounds=0)
        if decided(pid, found[2], found[3]):
            return found
        sizes, area, top = img.sizes.tolist(), 0, []
        for c in order:
            if area >= 2 * sum(sizes[f] for f in found[0]):
                break
            top.append(c)
            area += sizes[c]
        own = dict(zip(top, img.d([frozenset([c]) for c in top], "high", samples=1)))
        order = sorted(top, key=lambda c: -own[c]) + order[len(top):]
        found = _greedy(img, segments, config, pid, order, prior_reg, search, decided, rounds=0)
        if decided(pid, found[2], found[3]):
            return found
    # 1. screening: each feature hidden alone
    effect = img.d([frozenset([c]) for c in range(n)], "high", samples=1)
    order = sorted(perm, key=lambda c: -effect[c])  # stable: ties keep the random order
    if decided is not None:
        found = _greedy(img, segments, config, pid, order, prior_reg, search, decided, rounds=0)
        if decided(pid, found[2], found[3]):
            return found
    return _greedy(img, segments, config, pid, order, prior_reg, search, decided, rounds=None)


def _greedy(img: _Image, segments: torch.Tensor, config, pid: int, order: Sequence[int], prior_reg, search,
            decided, rounds: int | None) -> tuple[frozenset, frozenset, float, float]:
    """From the features ranked by ``order`` (strongest first): 2. the starts (the rule's regions
    of that ranking, and the prior's), 3. ``rounds`` of refinement (default ``search.rounds``) of
    S_high up, then of S_low down among the features not in S_high, stopping once ``decided``."""
    n = img.n
    rank_map = torch.zeros(n, dtype=torch.float64)
    for pos, c in enumerate(order):
        rank_map[c] = n - pos
    start = _regions(rank_map.float()[segments], segments, config, pid)

    def valid_high(s: frozenset) -> bool:
        r = _regions(ceiling_map(segments, sorted(s), []), segments, config, pid)
        return r.testable and _features(r.high, segments) == s

    high_starts = [_features(start.high, segments)] + ([_features(prior_reg.high, segments)] if prior_reg else [])
    high, d_high = _refine(img, high_starts, "high", 1.0, order, lambda c: True, valid_high, search, rounds=rounds)
    rest_order = [c for c in reversed(order) if c not in high]  # the low candidates, least effect first
    # the S_low start: the rule's S_low of a map with S_high on top (the largest other feature next to
    # it, as in the ceiling map) and the others ranked by their effect, least first
    largest = max(rest_order, key=lambda c: (int(img.sizes[c]), c))
    start_map = _ranking(segments, sorted(high), [], [c for c in rest_order if c != largest] + [largest])
    low0 = _features(_regions(start_map.float()[segments], segments, config, pid).low, segments)

    def valid_low(s: frozenset) -> bool:
        if s & high:
            return False
        r = _regions(ceiling_map(segments, sorted(high), sorted(s)), segments, config, pid)
        return r.testable and _features(r.high, segments) == high and _features(r.low, segments) == s

    stop = None if decided is None else (lambda d_low: decided(pid, d_high, d_low))
    low_starts = [low0] + ([_features(prior_reg.low, segments)] if prior_reg else [])
    low, d_low = _refine(img, low_starts, "low", -1.0, rest_order, lambda c: c not in high, valid_low, search,
                         rounds=rounds, stop=stop)
    return high, low, d_high, d_low
