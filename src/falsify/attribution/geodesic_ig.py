"""Geodesic Integrated Gradients: IG whose integration points are spaced by the angle the
path's embeddings travel on the hypersphere, not by equal pixel steps.

The path is IG's straight line x(a) = b + a (x - b). Its embeddings trace a curve on the
sphere; theta(a) is the geodesic length of that curve from a = 0, measured on a fine grid of
``fine_factor * steps`` intervals by summing 2 atan2(|u-v|, |u+v|) between neighbours. The grid
a = k / n nests with ``ig``'s trapezoid grid and with itself when the steps double, so points of
the path already evaluated are read from the model's path cache (``paths``). [0, 1] is cut
into ``steps`` pieces of equal angle travelled, theta(a_j) = j/steps * theta(1), and the
integral is the Riemann sum at the pieces' angular midpoints m_j:

    GIG_i(x) = (x_i - b_i) * sum_j (a_{j+1} - a_j) * ds(x(m_j)) / dx_i

Points crowd where the embedding moves fast, which is where the target changes, so the same
number of gradient evaluations covers the path's informative part more densely. It is still
a Riemann sum of the same path integral, so completeness (sum = s(x) - s(b)) holds as the
steps grow; when the embeddings do not move (theta(1) = 0) it falls back to equal steps.
"""
from __future__ import annotations

import torch

from ..geometry import geodesic_distance
from .base import AttributionError
from .ig import PathExplainer
from .paths import fraction, path_embeddings


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of increasing ``xp`` -> ``fp`` at ``x`` (1-D)."""
    idx = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    t = torch.where(x1 > x0, (x - x0) / torch.where(x1 > x0, x1 - x0, torch.ones_like(x1)), torch.zeros_like(x))
    return f0 + t * (f1 - f0)


class GeodesicIntegratedGradients(PathExplainer):
    name = "geodesic-ig"

    def __init__(self, model, steps: int = 64, baseline="black", batch_size: int = 64,
                 tolerance: float | None = 0.02, max_steps: int = 512, fine_factor: int = 4,
                 normalise: str | None = None) -> None:
        super().__init__(model, steps, baseline, batch_size, tolerance, max_steps, normalise)
        if fine_factor < 1:
            raise AttributionError(f"fine_factor must be >= 1, got {fine_factor}")
        self.fine_factor = int(fine_factor)

    def schedule(self, image: torch.Tensor, baseline: torch.Tensor, steps: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(midpoints, widths) in a for one image: ``steps`` pieces of equal angle travelled,
        measured on the grid a = k / (``fine_factor * steps``). The grid's embeddings come from
        the model's shared path cache where ``ig`` (or an earlier refinement) has evaluated the
        same points of the same path, and from forward passes otherwise."""
        steps = steps or self.steps
        n = self.fine_factor * steps
        cache = path_embeddings(self.model)
        points = cache.points(cache.key(self.model, image, baseline))
        missing = [k for k in range(n + 1) if fraction(k, n) not in points]
        with torch.inference_mode():
            for chunk in range(0, len(missing), self.batch_size):
                ks = missing[chunk : chunk + self.batch_size]
                a = torch.tensor([k / n for k in ks], dtype=image.dtype, device=image.device)
                pts = baseline[None] + a[:, None, None, None] * (image - baseline)[None]
                for k, e in zip(ks, self.model(pts)):
                    points[fraction(k, n)] = e
        emb = torch.stack([points[fraction(k, n)] for k in range(n + 1)]).to(image.dtype)
        grid = torch.tensor([k / n for k in range(n + 1)], dtype=image.dtype, device=image.device)
        theta = torch.cat([grid.new_zeros(1), geodesic_distance(emb[:-1], emb[1:]).cumsum(0)])
        total = theta[-1]
        levels = torch.linspace(0, 1, 2 * steps + 1, device=image.device, dtype=image.dtype)
        if float(total) <= 0:
            alphas = levels
        else:
            # theta is non-decreasing; make it strictly increasing for the inverse interpolation
            theta = theta + torch.arange(len(theta), dtype=theta.dtype, device=theta.device) * 1e-12
            alphas = _interp(levels * theta[-1], theta, grid)
        edges, mids = alphas[0::2], alphas[1::2]
        return mids, edges[1:] - edges[:-1]

    def _path_attribute(self, images, baselines, references, steps):
        out = []
        for i in range(images.shape[0]):
            x, b = images[i], baselines[i]
            ref = None if references is None else references[i : i + 1]
            mids, widths = self.schedule(x, b, steps)
            total_grad = torch.zeros_like(x)
            for m, w in zip(mids.split(self.batch_size), widths.split(self.batch_size)):
                pts = (b[None] + m[:, None, None, None] * (x - b)[None]).requires_grad_(True)
                with torch.enable_grad():
                    r = None if ref is None else ref.expand(len(m), -1)
                    s = self.target(pts, r)
                    (grad,) = torch.autograd.grad((s * w).sum(), pts)
                total_grad += grad.sum(dim=0)
            out.append((x - b) * total_grad)
        return torch.stack(out)
