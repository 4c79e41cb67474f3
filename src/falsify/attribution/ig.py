"""Integrated Gradients (Sundararajan et al., 2017) of the similarity target.

    IG_i(x) = (x_i - b_i) * int_0^1 ds(b + a (x - b)) / dx_i da

The (B,H,W) map is the sum over colour channels, so completeness reads sum(map) = s(x) - s(b).
The (image, point) evaluations of a batch go through the model together, ``batch_size`` per
forward and backward pass. Two quadrature rules (``rule``):

* ``trapezoid`` (default): the trapezoid rule on ``steps`` equal intervals (``steps + 1``
  points, a = k / steps: captum's ``riemann_trapezoid`` points with ``n_steps = steps + 1``,
  whose weights captum lets sum to steps / (steps + 1); here they sum to 1). Its grids
  nest: doubling the steps adds only the new midpoints, so a refinement reuses every gradient
  already computed, and the points' embeddings are kept for ``geodesic-ig``'s schedule on the
  same path (``falsify.attribution.paths``).
* ``gausslegendre``: captum's Gauss-Legendre nodes and weights (``IntegratedGradients``'
  default); equal to captum within 2e-9, but a refinement recomputes every point.

A ReLU network's gradient is piecewise constant along the path, so a fixed rule can miss
completeness by far more than 2% when s(x) - s(b) is small (it often is: dlib embeds every
face, and a black image, within ~0.1 of cosine); a higher-order rule does not help across
those kinks. Path methods therefore refine: an image whose residual
|sum(map) - (s(x) - s(b))| exceeds ``tolerance`` x |s(x) - s(b)| is computed again with twice
the steps, up to ``max_steps``; ``last_steps`` and ``last_residual`` record what each image
needed and what is left.
"""
from __future__ import annotations

import torch

from ..imageops import make_baseline
from .base import AttributionError, Explainer


class PathExplainer(Explainer):
    """Shared options of path methods: baseline, steps, and refinement until completeness."""

    default_normalise = "abs"

    def __init__(self, model, steps: int = 64, baseline: str | float = "black", batch_size: int = 64,
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
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)  # validate early

    def _path_attribute(self, images, baselines, references, steps: int, states: list[dict]) -> torch.Tensor:
        """(B,3,H,W) attributions with ``steps`` integration points. ``states`` holds one dict
        per image that lives across the refinements of one call (what a nested rule reuses)."""
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
        states: list[dict] = [{} for _ in range(images.shape[0])]  # per image, kept across refinements
        while len(todo):
            refs = None if references is None else references[todo]
            attr = self._path_attribute(images[todo], baselines[todo], refs, steps,
                                        [states[i] for i in todo.tolist()]).sum(dim=1)
            res = attr.flatten(1).sum(1) - gap[todo]
            out[todo] = attr
            for i, r in zip(todo.tolist(), res.tolist()):
                n_steps[i], residual[i] = steps, r
            if self.tolerance is None or 2 * steps > self.max_steps:
                break
            todo = todo[res.abs() > self.tolerance * gap[todo].abs()]
            steps *= 2
        self.last_steps, self.last_residual = n_steps, residual
        return out


def path_gradients(target, images, baselines, references, image_index, alphas, weights, batch_size,
                   on_embeddings=None) -> torch.Tensor:
    """sum_p weights[p] * ds/dx at b + alphas[p] (x - b) over the points p of each image: (B,3,H,W).

    Point p belongs to image ``image_index[p]``. The points go through the model in chunks of
    ``batch_size`` (one forward and one backward pass each), not one image at a time.
    ``on_embeddings(points, embeddings)``, when given, receives each chunk's point indices and
    their L2-normalised embeddings (the forward pass computes them anyway).
    """
    image_index = torch.as_tensor(image_index, dtype=torch.long, device=images.device)
    alphas = torch.as_tensor(alphas, dtype=images.dtype, device=images.device)
    weights = torch.as_tensor(weights, dtype=images.dtype, device=images.device)
    total = torch.zeros_like(images)
    diff = images - baselines
    for start in range(0, len(image_index), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(image_index)), device=images.device)
        img = image_index[rows]
        with torch.enable_grad():
            x = (baselines[img] + alphas[rows].view(-1, 1, 1, 1) * diff[img]).requires_grad_(True)
            refs = None if references is None else references[img]
            scores, emb = target.with_embeddings(x, refs)
            (grad,) = torch.autograd.grad(scores.sum(), x)
        if on_embeddings is not None:
            on_embeddings(rows, emb.detach())
        total.index_add_(0, img, grad * weights[rows].view(-1, 1, 1, 1))
    return total


#: quadrature rules of ``ig``
RULES = ("trapezoid", "gausslegendre")


class IntegratedGradientsExplainer(PathExplainer):
    name = "ig"

    def __init__(self, model, steps: int = 64, baseline: str | float = "black", batch_size: int = 64,
                 tolerance: float | None = 0.02, max_steps: int = 512, rule: str = "trapezoid",
                 normalise: str | None = None) -> None:
        super().__init__(model, steps, baseline, batch_size, tolerance, max_steps, normalise)
        if rule not in RULES:
            raise AttributionError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule

    def _path_attribute(self, images, baselines, references, steps, states):
        if self.rule == "gausslegendre":
            return self._gauss_legendre(images, baselines, references, steps)
        return self._trapezoid(images, baselines, references, steps, states)

    def _gauss_legendre(self, images, baselines, references, steps):
        """captum's plain IG with the Gauss-Legendre rule, computed in batched chunks."""
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes, alphas = approximation_parameters("gausslegendre")
        b = images.shape[0]
        grads = path_gradients(
            self.target, images, baselines, references, torch.arange(b).repeat_interleave(steps),
            torch.tensor(alphas(steps)).repeat(b), torch.tensor(step_sizes(steps)).repeat(b), self.batch_size,
        )
        return grads * (images - baselines)

    def _trapezoid(self, images, baselines, references, steps, states):
        """The trapezoid rule on ``steps`` intervals, evaluating only the points not yet evaluated:
        every point at the first level, the new midpoints after each doubling. ``state["sum"]``
        is sum_k c_k ds/dx(a_k) with c = 1/2 at the ends and 1 inside, so the integral is
        sum / steps whatever the level."""
        from .paths import fraction, path_embeddings

        cache = path_embeddings(self.model)
        index, alphas, weights, keys = [], [], [], []
        for i, st in enumerate(states):
            if "key" not in st:
                st["key"] = cache.key(self.model, images[i], baselines[i])
            if "steps" not in st:
                ks = range(steps + 1)
            elif steps == 2 * st["steps"]:
                ks = range(1, steps, 2)
            else:  # not reached by PathExplainer's doubling; a guard for other callers
                raise AttributionError(f"trapezoid refinement from {st['steps']} to {steps} steps: steps must double")
            for k in ks:
                index.append(i)
                alphas.append(k / steps)
                weights.append(0.5 if k in (0, steps) else 1.0)
                keys.append((st["key"], fraction(k, steps)))

        def record(rows, emb):
            for r, e in zip(rows.tolist(), emb):
                cache.points(keys[r][0])[keys[r][1]] = e

        new = path_gradients(self.target, images, baselines, references, index, alphas, weights, self.batch_size,
                             on_embeddings=record)
        out = []
        for i, st in enumerate(states):
            st["sum"] = new[i] if "sum" not in st else st["sum"] + new[i]
            st["steps"] = steps
            out.append(st["sum"] / steps)
        return torch.stack(out) * (images - baselines)
