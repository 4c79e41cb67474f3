"""Geodesic Integrated Gradients: IG whose integration points are spaced by the angle the
path's embeddings travel on the hypersphere, not by equal pixel steps.

The path is IG's straight line x(a) = b + a (x - b). Its embeddings trace a curve on the
sphere; theta(a) is the geodesic length of that curve from a = 0, measured on a fine grid of
``fine_factor * steps`` intervals by summing 2 atan2(|u-v|, |u+v|) between neighbours. The grid
a = k / n nests with ``ig``'s trapezoid grid, so points of the path ``ig`` already evaluated are
read from the model's path cache (``paths``). The point a(u) is where the embeddings have
travelled the fraction u of theta(1) (linear interpolation of theta's inverse). The integral is
the trapezoid rule on the points a(u_j), u_j = j / steps (``steps`` pieces of equal angle):

    GIG_i(x) = (x_i - b_i) * sum_j (a_j+1 - a_j) * (ds/dx_i(x(a_j)) + ds/dx_i(x(a_j+1))) / 2

refined as ``ig``'s (``PathExplainer._adaptive_trapezoid``): while completeness misses the
tolerance, the pieces holding most of the local error are bisected in angle, so every new point
is again an angular midpoint. Points crowd where the embedding moves fast, which is where the
target changes, so fewer gradient evaluations cover the path's informative part. It is a
Riemann sum of the same path integral as IG, so completeness (sum = s(x) - s(b)) holds as the
pieces shrink; when the embeddings do not move (theta(1) = 0) it falls back to equal steps.
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

    def __init__(self, model, steps: int = 16, baseline="black", batch_size: int = 64,
                 tolerance: float | None = 0.02, max_steps: int = 512, fine_factor: int = 4,
                 normalise: str | None = None) -> None:
        super().__init__(model, steps, baseline, batch_size, tolerance, max_steps, normalise)
        if fine_factor < 1:
            raise AttributionError(f"fine_factor must be >= 1, got {fine_factor}")
        self.fine_factor = int(fine_factor)
        #: per image of the last call, the points a of the path its map used
        self.last_points: list[list[float]] = []
        self._curves: list = []

    def angle_curve(self, image: torch.Tensor, baseline: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid, theta): the angle theta(a) the path's embeddings have travelled from a = 0, on the
        grid a = k / n, n = ``fine_factor * steps``. The grid's embeddings come from the model's
        shared path cache where ``ig`` has evaluated the same points of the same path, and from
        forward passes otherwise."""
        n = self.fine_factor * self.steps
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
        # theta is non-decreasing; the ramp separates equal values where float32 resolves it (a flat
        # stretch left gives pieces of zero width, which weigh nothing and are never bisected)
        return grid, theta + torch.arange(len(theta), dtype=theta.dtype, device=theta.device) * 1e-12

    @staticmethod
    def position(curve: tuple[torch.Tensor, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """The points a where the embeddings have travelled the fractions ``u`` of the path's angle
        (linear interpolation of the inverse of theta; u itself when the embeddings do not move)."""
        grid, theta = curve
        if float(theta[-1]) <= 1e-9:
            return u.to(grid.dtype)
        return _interp(u.to(theta.dtype) * theta[-1], theta, grid)

    def schedule(self, image: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """The ``steps + 1`` points a of the first level: ``steps`` pieces of equal angle travelled."""
        u = torch.arange(self.steps + 1, dtype=torch.float64) / self.steps
        return self.position(self.angle_curve(image, baseline), u.to(image.device))

    def _attribute(self, images, references):
        return self._adaptive_trapezoid(images, references)

    def _begin(self, images, baselines) -> None:
        self._curves = [self.angle_curve(images[i], baselines[i]) for i in range(images.shape[0])]

    def _alpha(self, i, key):
        return float(self.position(self._curves[i], torch.tensor([float(key)]).to(self._curves[i][0].device))[0])
