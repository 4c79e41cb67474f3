"""Integrated Gradients (Sundararajan et al., 2017) of the similarity target, via captum.

    IG_i(x) = (x_i - b_i) * int_0^1 ds(b + a (x - b)) / dx_i da

approximated with captum's Gauss-Legendre rule at ``steps`` points (the nodes and weights of
captum's ``IntegratedGradients``; the (image, step) points of a batch are evaluated together,
``batch_size`` per forward and backward pass). The (B,H,W) map is the sum
over colour channels, so completeness reads sum(map) = s(x) - s(b).

A ReLU network's gradient is piecewise constant along the path, so a fixed rule can miss
completeness by far more than 2% when s(x) - s(b) is small (it often is: dlib embeds every
face, and a black image, within ~0.1 of cosine). Path methods therefore refine: an image
whose residual |sum(map) - (s(x) - s(b))| exceeds ``tolerance`` x |s(x) - s(b)| is recomputed
with twice the steps, up to ``max_steps``; ``last_steps`` and ``last_residual`` record what
each image needed and what is left.
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
        while len(todo):
            refs = None if references is None else references[todo]
            attr = self._path_attribute(images[todo], baselines[todo], refs, steps).sum(dim=1)
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


def path_gradients(target, images, baselines, references, alphas, weights, batch_size) -> torch.Tensor:
    """sum_j weights[j] * ds/dx at b + alphas[j] (x - b), per image: (B,3,H,W).

    Every (image, step) point of the batch goes through the model in chunks of ``batch_size``
    (one forward and one backward pass each), not one image at a time.
    """
    b, s = images.shape[0], len(alphas)
    alphas = torch.as_tensor(alphas, dtype=images.dtype, device=images.device)
    weights = torch.as_tensor(weights, dtype=images.dtype, device=images.device)
    total = torch.zeros_like(images)
    diff = images - baselines
    for start in range(0, b * s, batch_size):
        rows = torch.arange(start, min(start + batch_size, b * s), device=images.device)
        img, step = rows // s, rows % s
        with torch.enable_grad():
            x = (baselines[img] + alphas[step].view(-1, 1, 1, 1) * diff[img]).requires_grad_(True)
            refs = None if references is None else references[img]
            (grad,) = torch.autograd.grad(target(x, refs).sum(), x)
        total.index_add_(0, img, grad * weights[step].view(-1, 1, 1, 1))
    return total


class IntegratedGradientsExplainer(PathExplainer):
    name = "ig"

    def _path_attribute(self, images, baselines, references, steps):
        """captum's plain IG with the Gauss-Legendre rule, computed in batched chunks."""
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes, alphas = approximation_parameters("gausslegendre")
        grads = path_gradients(
            self.target, images, baselines, references, alphas(steps), step_sizes(steps), self.batch_size
        )
        return grads * (images - baselines)
