"""Small image operations shared by attribution baselines and counterfactual fills."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) images with reflect padding (kernel 2*ceil(3 sigma)+1)."""
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    h, w = images.shape[-2:]
    radius = min(radius, h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def superpixels(
    images: torch.Tensor, n_segments: int = 50, method: str = "slic", compactness: float = 10.0
) -> torch.Tensor:
    """Superpixel labels (B,H,W), int64, 0..n-1 per image, from scikit-image.

    ``slic`` (default, ``n_segments`` roughly honoured, ``compactness`` 10) or ``quickshift``.
    An image the algorithm leaves in fewer than 3 segments (flat or pure-noise images) gets a
    regular grid of about ``n_segments`` cells instead, so every image has players to perturb.
    """
    from skimage.segmentation import quickshift, slic

    if method not in ("slic", "quickshift"):
        raise ValueError(f"superpixel method must be 'slic' or 'quickshift', got {method!r}")
    if n_segments < 2:
        raise ValueError(f"n_segments must be >= 2, got {n_segments}")
    out = []
    for img in images.detach().cpu().permute(0, 2, 3, 1).double().numpy():
        if method == "slic":
            seg = slic(img, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
        else:
            seg = quickshift(img, kernel_size=4, max_dist=8, ratio=0.5, channel_axis=-1)
        _, seg = np.unique(seg, return_inverse=True)  # labels 0..n-1 without gaps
        seg = seg.reshape(img.shape[:2])
        if seg.max() < 2:
            seg = grid_labels(img.shape[0], img.shape[1], n_segments)
        out.append(torch.from_numpy(seg.astype(np.int64)))
    return torch.stack(out).to(images.device)


def grid_labels(h: int, w: int, n_cells: int) -> np.ndarray:
    """Labels (h, w) of a near-square grid of about ``n_cells`` cells, row-major."""
    side = max(1, int(round(math.sqrt(n_cells))))
    rows = np.minimum(np.arange(h) * side // h, side - 1)
    cols = np.minimum(np.arange(w) * side // w, side - 1)
    return rows[:, None] * side + cols[None, :]


def make_baseline(images: torch.Tensor, kind: str | float = "black", blur_sigma: float = 10.0) -> torch.Tensor:
    """Reference images for path and perturbation methods, same shape as ``images``.

    ``black`` (zeros, default), ``mean`` (each image's per-channel mean colour), ``blur``
    (Gaussian blur, ``blur_sigma`` pixels), or a number in [0,1] (a flat grey).
    """
    if isinstance(kind, (int, float)):
        if not 0.0 <= float(kind) <= 1.0:
            raise ValueError(f"a constant baseline must lie in [0,1], got {kind}")
        return torch.full_like(images, float(kind))
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        return gaussian_blur(images, blur_sigma)
    raise ValueError(f"baseline must be 'black', 'mean', 'blur' or a number in [0,1], got {kind!r}")
