"""Counterfactuals x' = C(x, S): the pixels of S replaced by a fill, everything else kept.

Fills (``image`` is one RGB image in [0, 1], ``S`` a pixel mask):

- ``zero``: 0 (black).
- ``mean``: the image's per-channel mean (a flat patch of the image's average colour).
- ``noise``: ``clip(x + noise_sigma * eps, 0, 1)`` with ``eps ~ N(0, I)`` per pixel and channel,
  fresh for every sample (stochastic).
- ``blur``: a Gaussian blur of the image with standard deviation ``blur_sigma`` times its shorter
  side (deterministic): detail inside S is removed, colour and coarse shape stay, and no new edges
  or textures are painted in.
- ``optimised``: Algorithm 1 of the research plan (see :func:`optimise_counterfactuals`), started
  from ``x`` plus a little noise on S (stochastic).

Deterministic fills (zero, mean, blur) give the same counterfactual every time, so one sample
(K = 1) is drawn however large K is; stochastic fills (noise, optimised) draw K.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..choices import DETERMINISTIC_FILLS, FILLS, STOCHASTIC_FILLS  # noqa: F401 - re-exported by the package
from ..geometry import geodesic_distance


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with std ``sigma_px`` pixels (replicate border)."""
    if sigma_px <= 0:
        return images.clone()
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fill_image(
    image: torch.Tensor,
    fill: str,
    k: int = 1,
    *,
    generator: torch.Generator | None = None,
    noise_sigma: float = 0.5,
    blur_sigma: float = 0.05,
) -> torch.Tensor:
    """The replacement values for every pixel, ``(k, 3, H, W)``, for one image ``(3, H, W)``.

    The counterfactual takes these values inside S and the image's outside S. For deterministic
    fills the ``k`` copies are identical; ``noise`` draws ``k`` independent samples from
    ``generator``. ``optimised`` is not a fixed fill: use :func:`optimise_counterfactuals`.
    """
    if fill == "zero":
        return torch.zeros(k, *image.shape, dtype=image.dtype, device=image.device)
    if fill == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).unsqueeze(0).repeat(k, 1, 1, 1)
    if fill == "mirror":  # the image reflected left-right: an aligned face's other side
        return image.flip(-1).unsqueeze(0).repeat(k, 1, 1, 1)
    if fill == "blur":
        sigma_px = blur_sigma * min(image.shape[-2:])
        return gaussian_blur(image.unsqueeze(0), sigma_px).repeat(k, 1, 1, 1)
    if fill == "noise":
        eps = torch.randn((k, *image.shape), generator=generator, dtype=torch.float32)
        return (image.unsqueeze(0) + noise_sigma * eps.to(image.device, image.dtype)).clamp(0.0, 1.0)
    if fill == "optimised":
        raise ValueError("the optimised fill depends on the model: use optimise_counterfactuals()")
    raise ValueError(f"unknown fill {fill!r}; use one of {FILLS}")


def apply_fill(
    image: torch.Tensor,
    mask: torch.Tensor,
    fill: str = "blur",
    k: int = 1,
    *,
    generator: torch.Generator | None = None,
    noise_sigma: float = 0.5,
    blur_sigma: float = 0.05,
) -> torch.Tensor:
    """Counterfactuals ``(k, 3, H, W)`` of ``image`` (3, H, W) with the pixels of ``mask`` (H, W) filled.

    Deterministic fills return ``k = 1`` sample whatever ``k`` is asked for.
    """
    if fill not in FILLS or fill == "optimised":
        raise ValueError(
            f"unknown fill {fill!r} for apply_fill; use one of {DETERMINISTIC_FILLS + ('noise',)} "
            "(the optimised fill needs the model: optimise_counterfactuals)"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if fill in DETERMINISTIC_FILLS:
        k = 1
    values = fill_image(image, fill, k, generator=generator, noise_sigma=noise_sigma, blur_sigma=blur_sigma)
    m = mask.to(image.device, torch.bool).view(1, 1, *mask.shape)
    return torch.where(m, values, image.unsqueeze(0))


@dataclass
class OptimisationInfo:
    """Per-sample outcome of Algorithm 1."""

    converged: torch.Tensor  # (N,) bool: stopped early because the loss stopped improving
    iterations: torch.Tensor  # (N,) long: gradient steps taken
    final_loss: torch.Tensor  # (N,) float
    #: (N, steps) float: the loss evaluated before each step (NaN once the sample stopped); with
    #: ``history=True`` only
    losses: torch.Tensor | None = None


def optimise_counterfactuals(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    targets: torch.Tensor,
    *,
    init: torch.Tensor,
    steps: int = 100,
    lr: float = 0.01,
    lam: float = 1.0,
    delta_target: float = math.pi / 2,
    grad_clip: float = 1.0,
    tol: float = 1e-3,
    patience: int = 5,
    history: bool = False,
) -> tuple[torch.Tensor, OptimisationInfo]:
    """Algorithm 1: gradient steps on the pixels of S only, batched over samples.

    For every sample n (an image, its mask, its reference embedding ``targets[n] = f(x)``)
    minimise

        L(x') = (d_g(f(x), f(x')) - delta_target)^2 + lam * ||(x' - x)_S||^2 / (3 |S|)

    from ``init`` (x with a little noise on S). The pixel penalty is the mean over the masked
    values, so ``lam`` does not depend on the region's size or the input resolution (with
    equal-area regions it is the plan's ``lambda ||x' - x||^2`` with lambda rescaled by a
    constant). Each step: the gradient (zero outside S), its norm clipped to ``grad_clip`` per
    sample, an Adam step of size ``lr`` (pixel units), and pixels clipped to [0, 1]. A sample
    stops early -- *converged* -- when its loss has not improved by a relative ``tol`` for
    ``patience`` steps; otherwise it runs ``steps`` steps. Samples are independent: the result
    for one sample does not depend on the others in the batch. ``history=True`` also returns every
    sample's loss curve (``OptimisationInfo.losses``).
    """
    n = images.shape[0]
    m = masks.to(images.dtype).view(n, 1, *masks.shape[-2:])
    n_vals = (m.sum(dim=(1, 2, 3)) * images.shape[1]).clamp(min=1.0)
    x = init.detach().clone()
    exp_avg = torch.zeros_like(x)
    exp_sq = torch.zeros_like(x)
    b1, b2, eps = 0.9, 0.999, 1e-8
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    stall = torch.zeros(n, dtype=torch.long)
    iterations = torch.zeros(n, dtype=torch.long)
    converged = torch.zeros(n, dtype=torch.bool)
    final_loss = torch.full((n,), float("nan"), dtype=torch.float64)
    active = torch.ones(n, dtype=torch.bool)
    losses = torch.full((n, steps), float("nan"), dtype=torch.float32) if history else None
    for step in range(steps):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        xa = x[idx].clone().requires_grad_(True)
        with torch.enable_grad():
            d = geodesic_distance(targets[idx], model(xa))
            pen = ((xa - images[idx]) ** 2 * m[idx]).sum(dim=(1, 2, 3)) / n_vals[idx]
            loss = (d - delta_target) ** 2 + lam * pen
            (grad,) = torch.autograd.grad(loss.sum(), xa)
        lv = loss.detach().to("cpu", torch.float64)
        final_loss[idx] = lv
        if losses is not None:
            losses[idx, step] = lv.to(torch.float32)
        improved = lv < best[idx] * (1.0 - tol)
        best[idx] = torch.where(improved, lv, best[idx])
        stall[idx] = torch.where(improved, torch.zeros_like(stall[idx]), stall[idx] + 1)
        done = stall[idx] >= patience
        if done.any():
            converged[idx[done]] = True
            active[idx[done]] = False
        step_idx = idx[~done]
        if step_idx.numel() == 0:
            continue
        g = (grad[~done] * m[step_idx]).detach()
        norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
        g = g * (grad_clip / norm).clamp(max=1.0).view(-1, 1, 1, 1)
        iterations[step_idx] += 1
        t = iterations[step_idx].to(x.dtype).view(-1, 1, 1, 1).to(x.device)
        exp_avg[step_idx] = b1 * exp_avg[step_idx] + (1 - b1) * g
        exp_sq[step_idx] = b2 * exp_sq[step_idx] + (1 - b2) * g * g
        m_hat = exp_avg[step_idx] / (1 - b1**t)
        v_hat = exp_sq[step_idx] / (1 - b2**t)
        update = lr * m_hat / (v_hat.sqrt() + eps) * m[step_idx]
        x[step_idx] = (x[step_idx] - update).clamp(0.0, 1.0)
    return x.detach(), OptimisationInfo(converged, iterations, final_loss.to(torch.float32), losses)
