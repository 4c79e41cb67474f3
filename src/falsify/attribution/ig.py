"""Integrated Gradients (Sundararajan et al., 2017) of the similarity target.

    IG_i(x) = (x_i - b_i) * int_0^1 ds(b + a (x - b)) / dx_i da

The (B,H,W) map is the sum over colour channels, so completeness reads sum(map) = s(x) - s(b).
The (image, point) evaluations of a batch go through the model together, ``batch_size`` per
forward and backward pass. Two quadrature rules (``rule``):

* ``trapezoid`` (default): the trapezoid rule on ``steps`` equal intervals (``steps + 1``
  points, a = k / steps: captum's ``riemann_trapezoid`` points with ``n_steps = steps + 1``,
  whose weights captum lets sum to steps / (steps + 1); here they sum to 1), refined by
  adaptive bisection (below). Every point is evaluated once, and the points' embeddings are
  kept for ``geodesic-ig``'s schedule on the same path (``falsify.attribution.paths``).
* ``gausslegendre``: captum's Gauss-Legendre nodes and weights (``IntegratedGradients``'
  default); equal to captum within 2e-9; its refinement doubles the steps and recomputes every
  point (the nodes do not nest).

A ReLU network's gradient is piecewise constant along the path, so a fixed rule can miss
completeness by far more than 2% when s(x) - s(b) is small (it often is: dlib embeds every
face, and a black image, within ~0.1 of cosine); a higher-order rule does not help across
those kinks. Path methods therefore refine until the residual |sum(map) - (s(x) - s(b))| is
at most ``tolerance`` x |s(x) - s(b)|, up to ``max_steps`` intervals; ``last_steps`` and
``last_residual`` record what each image needed and what is left. The trapezoid rule knows
where its error is: with phi(a) = s(b + a (x - b)), each interval's share of the residual is
computed from its two end points (``_adaptive_trapezoid``), so only the intervals that hold
the error are bisected.

Under a low precision (the model's ``precision`` bf16 or fp16) s and its gradient carry rounding
errors that no refinement removes, and the residual settles at that noise floor, often above
the tolerance. Refinement then also stops once the intervals have doubled (``stall_factor``)
since the round with the smallest |residual| without a smaller one (``_stalled``; ``last_history``
records each image's (intervals, residual) per round). Under float32 this never acts.
"""
from __future__ import annotations

import torch

from ..imageops import make_baseline
from .base import AttributionError, Explainer


class PathExplainer(Explainer):
    """Shared options of path methods: baseline, steps, and refinement until completeness."""

    default_normalise = "abs"

    def __init__(self, model, steps: int = 16, baseline: str | float = "black", batch_size: int = 64,
                 tolerance: float | None = 0.02, max_steps: int = 512, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if steps < 2:
            raise AttributionError(f"steps must be >= 2, got {steps}")
        if batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
        if tolerance is not None and tolerance <= 0:
            raise AttributionError(f"tolerance must be > 0 (or None to use steps as given), got {tolerance}")
        if max_steps < steps:
            raise AttributionError(f"max_steps ({max_steps}) must be >= steps ({steps})")
        self.steps, self.baseline, self.batch_size = int(steps), baseline, int(batch_size)
        self.tolerance, self.max_steps = tolerance, int(max_steps)
        self.last_steps: list[int] = []
        self.last_residual: list[float] = []
        #: per image of the last call, (intervals, residual) of each refinement round
        self.last_history: list[list[tuple[int, float]]] = []
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)  # validate early

    #: under a low precision (the model's ``precision`` is not fp32) refinement also stops once the
    #: intervals have grown ``stall_factor`` times since the round with the smallest |residual| so
    #: far without a smaller one: the residual has reached the precision's noise floor
    stall_factor: float | None = 2.0

    def _stalled(self, history: list[tuple[int, float]]) -> bool:
        """Whether an image's refinement (``history``: (intervals, residual) per round) has stalled
        under the model's low precision; never under float32."""
        if self.stall_factor is None or getattr(self.model, "precision", "fp32") == "fp32":
            return False
        best = min(range(len(history)), key=lambda t: abs(history[t][1]))
        return history[-1][0] >= self.stall_factor * history[best][0]

    def _path_attribute(self, images, baselines, references, steps: int) -> torch.Tensor:
        """(B,3,H,W) attributions with ``steps`` integration points."""
        raise NotImplementedError

    def _attribute(self, images, references):
        baselines = make_baseline(images, self.baseline)
        with torch.inference_mode():  # s(x) and s(b) in one forward pass
            refs2 = None if references is None else torch.cat([references, references])
            ends = self.target(torch.cat([images, baselines]), refs2)
            gap = ends[: images.shape[0]] - ends[images.shape[0] :]
        out = torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)
        todo = torch.arange(images.shape[0], device=images.device)
        steps = self.steps
        n_steps = [steps] * images.shape[0]
        residual = [0.0] * images.shape[0]
        history: list[list[tuple[int, float]]] = [[] for _ in range(images.shape[0])]
        while len(todo):
            refs = None if references is None else references[todo]
            attr = self._path_attribute(images[todo], baselines[todo], refs, steps).sum(dim=1)
            res = attr.flatten(1).sum(1) - gap[todo]
            out[todo] = attr
            for i, r in zip(todo.tolist(), res.tolist()):
                n_steps[i], residual[i] = steps, r
                history[i].append((steps, r))
            if self.tolerance is None or 2 * steps > self.max_steps:
                break
            more = [bool(m) and not self._stalled(history[i])
                    for i, m in zip(todo.tolist(), res.abs() > self.tolerance * gap[todo].abs())]
            todo = todo[torch.tensor(more, dtype=torch.bool, device=todo.device)]
            steps *= 2
        self.last_steps, self.last_residual, self.last_history = n_steps, residual, history
        return out

    # -- the adaptive trapezoid rule, shared by ig (points in a) and geodesic-ig (points in angle) --
    #: each refinement bisects the intervals with the largest local errors that together hold this
    #: share of the image's total absolute local error
    refine_share = 0.5

    def _begin(self, images, baselines) -> None:
        """Per-call set-up of the point keys (geodesic-ig measures its angle schedules here)."""

    def _alpha(self, i: int, key) -> float:
        """The position a on the path of image ``i``'s point ``key`` (a Fraction)."""
        raise NotImplementedError

    def _point_id(self, i: int, key):
        """The path cache's id of the point (``(numerator, denominator)`` of a), or None when the
        point is not a dyadic point of a (its embedding is then not kept)."""
        return None

    def _adaptive_trapezoid(self, images, references):
        """The trapezoid rule on ``steps`` equal intervals of the point keys, then adaptive bisection.

        With phi(a) = s(b + a (x - b)), the map's pixel sum is the trapezoid rule applied to
        phi', and phi(1) - phi(0) = s(x) - s(b) is its exact integral. So each interval
        [a_j, a_j+1] has a local completeness error computed from what its two end points
        already gave, e_j = (a_j+1 - a_j) (phi'(a_j) + phi'(a_j+1)) / 2 - (phi(a_j+1) - phi(a_j)),
        and the residual is their sum. While the residual exceeds ``tolerance`` x |s(x) - s(b)|
        and fewer than ``max_steps`` intervals are used, the intervals with the largest |e_j|
        (together ``refine_share`` of the total) are bisected in their key (a for ig, the angle
        travelled for geodesic-ig): only the midpoints are new. Every point's gradient and value
        are kept, so nothing is evaluated twice, and the map is the trapezoid rule on the final
        (non-uniform) points.
        """
        from fractions import Fraction

        from .paths import path_embeddings

        baselines = make_baseline(images, self.baseline)
        b = images.shape[0]
        self._begin(images, baselines)
        cache = path_embeddings(self.model)
        keys: dict[int, tuple] = {}  # image -> its path's cache key, made when a point is first kept
        points: list[dict] = [{} for _ in range(b)]  # per image: key -> (a, phi(a), map at a)
        want = {i: [Fraction(k, self.steps) for k in range(self.steps + 1)] for i in range(b)}
        out = torch.zeros(b, *images.shape[-2:], device=images.device)
        n_steps, residual = [0] * b, [0.0] * b
        history: list[list[tuple[int, float]]] = [[] for _ in range(b)]
        while want:
            index = [i for i, fs in want.items() for _ in fs]
            fracs = [f for fs in want.values() for f in fs]
            alphas = [self._alpha(i, f) for i, f in zip(index, fracs)]

            def record(rows, emb):
                for r, e in zip(rows.tolist(), emb):
                    i, pid = index[r], self._point_id(index[r], fracs[r])
                    if pid is not None:
                        if i not in keys:
                            keys[i] = cache.key(self.model, images[i], baselines[i])
                        cache.points(keys[i])[pid] = e

            phi, maps = path_points(self.target, images, baselines, references, index, alphas, self.batch_size,
                                    on_embeddings=record)
            for p, (i, f) in enumerate(zip(index, fracs)):
                points[i][f] = (alphas[p], float(phi[p]), maps[p])
            todo = {}
            for i in want:
                keys_i = sorted(points[i])
                a = torch.tensor([points[i][f][0] for f in keys_i], dtype=torch.float64)
                vals = torch.tensor([points[i][f][1] for f in keys_i], dtype=torch.float64)
                hs = torch.stack([points[i][f][2] for f in keys_i])
                slope = hs.flatten(1).sum(1).double().cpu()  # phi'(a)
                width = a[1:] - a[:-1]
                w = torch.zeros(len(a), dtype=torch.float64)
                w[:-1] += width / 2
                w[1:] += width / 2
                out[i] = torch.tensordot(w.to(hs.dtype).to(hs.device), hs, dims=1)
                gap = float(vals[-1] - vals[0])
                residual[i], n_steps[i] = float((w * slope).sum()) - gap, len(a) - 1
                history[i].append((n_steps[i], residual[i]))
                if (self.tolerance is None or abs(residual[i]) <= self.tolerance * abs(gap)
                        or n_steps[i] >= self.max_steps or self._stalled(history[i])):
                    continue
                local = (width * (slope[:-1] + slope[1:]) / 2 - (vals[1:] - vals[:-1])).abs()
                order = torch.argsort(local, descending=True)
                share = torch.cumsum(local[order], 0)
                n = int(torch.searchsorted(share, self.refine_share * share[-1])) + 1
                pick = sorted(order[: min(n, self.max_steps - n_steps[i])].tolist())
                todo[i] = [(keys_i[j] + keys_i[j + 1]) / 2 for j in pick]
            want = todo
        self.last_steps, self.last_residual, self.last_history = n_steps, residual, history
        self.last_points = [[points[i][f][0] for f in sorted(points[i])] for i in range(b)]
        return out


def _path_chunks(target, images, baselines, references, image_index, alphas, batch_size):
    """The points b + alphas[p] (x - b) of images ``image_index[p]`` through the model, in chunks
    of ``batch_size`` (one forward and one backward pass each), not one image at a time. Yields
    per chunk: its point indices, their images' indices, s, the L2-normalised embeddings, ds/dx."""
    image_index = torch.as_tensor(image_index, dtype=torch.long, device=images.device)
    alphas = torch.as_tensor(alphas, dtype=images.dtype, device=images.device)
    diff = images - baselines
    for start in range(0, len(image_index), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(image_index)), device=images.device)
        img = image_index[rows]
        with torch.enable_grad():
            x = (baselines[img] + alphas[rows].view(-1, 1, 1, 1) * diff[img]).requires_grad_(True)
            refs = None if references is None else references[img]
            s, emb = target.with_embeddings(x, refs)
            (grad,) = torch.autograd.grad(s.sum(), x)
        yield rows, img, s.detach(), emb.detach(), grad


def path_gradients(target, images, baselines, references, image_index, alphas, weights, batch_size
                   ) -> torch.Tensor:
    """sum_p weights[p] * ds/dx at b + alphas[p] (x - b) over the points p of each image ``image_index[p]``:
    (B,3,H,W)."""
    weights = torch.as_tensor(weights, dtype=images.dtype, device=images.device)
    total = torch.zeros_like(images)
    for rows, img, _, _, grad in _path_chunks(target, images, baselines, references, image_index, alphas, batch_size):
        total.index_add_(0, img, grad * weights[rows].view(-1, 1, 1, 1))
    return total


def path_points(target, images, baselines, references, image_index, alphas, batch_size, on_embeddings=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """At each point p = b + alphas[p] (x - b) of image ``image_index[p]``: the target s(p) and
    (x - b) . ds/dx(p) summed over colour channels, ``((P,), (P,H,W))``. The pixel sum of the
    second is d s(b + a (x - b)) / da at a = alphas[p]. ``on_embeddings(points, embeddings)``,
    when given, receives each chunk's point indices and their L2-normalised embeddings (the
    forward pass computes them anyway)."""
    scores = torch.empty(len(image_index), dtype=images.dtype, device=images.device)
    maps = torch.empty(len(image_index), *images.shape[-2:], dtype=images.dtype, device=images.device)
    diff = images - baselines
    for rows, img, s, emb, grad in _path_chunks(target, images, baselines, references, image_index, alphas,
                                                batch_size):
        if on_embeddings is not None:
            on_embeddings(rows, emb)
        scores[rows] = s
        maps[rows] = (grad * diff[img]).sum(1)
    return scores, maps


#: quadrature rules of ``ig``
RULES = ("trapezoid", "gausslegendre")


class IntegratedGradientsExplainer(PathExplainer):
    name = "ig"

    def __init__(self, model, steps: int = 16, baseline: str | float = "black", batch_size: int = 64,
                 tolerance: float | None = 0.02, max_steps: int = 512, rule: str = "trapezoid",
                 normalise: str | None = None) -> None:
        super().__init__(model, steps, baseline, batch_size, tolerance, max_steps, normalise)
        if rule not in RULES:
            raise AttributionError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        #: per image of the last call, the points a of the path its map used (trapezoid rule)
        self.last_points: list[list[float]] = []

    def _attribute(self, images, references):
        if self.rule == "gausslegendre":
            return super()._attribute(images, references)
        return self._adaptive_trapezoid(images, references)

    def _alpha(self, i, key):
        return float(key)

    def _point_id(self, i, key):
        return key.numerator, key.denominator

    def _path_attribute(self, images, baselines, references, steps):
        """captum's plain IG with the Gauss-Legendre rule, computed in batched chunks."""
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes, alphas = approximation_parameters("gausslegendre")
        b = images.shape[0]
        grads = path_gradients(
            self.target, images, baselines, references, torch.arange(b).repeat_interleave(steps),
            torch.tensor(alphas(steps)).repeat(b), torch.tensor(step_sizes(steps)).repeat(b), self.batch_size,
        )
        return grads * (images - baselines)
