"""Distances on the embedding hypersphere."""
from __future__ import annotations

import math

import torch

#: float32's spacing of 1 (``torch.finfo(torch.float32).eps``, 2**-23)
FLOAT32_EPS = 2.0**-23
#: how many spacings of 1 each component of a float32 unit embedding may differ by when the same
#: image is embedded twice (another batch, another kernel): 1.7 measured for dlib ResNet on CPU
#: (alone against in a batch of 8 or 64; docs/scripts/rounding.py), so 4 (docs/method.md,
#: "Nothing to test")
ROUNDING_ULPS = 4


def angle_rounding(dim: int) -> float:
    """The angle (radians) within which two float32 unit embeddings of ``dim`` components are the
    same vector up to rounding: each component within ``ROUNDING_ULPS`` spacings of 1, so
    ``|u - v| <= ROUNDING_ULPS * 2**-23 * sqrt(dim)``, and the angle ``2 atan2(|u - v|, |u + v|)``
    (``|u + v|`` ~ 2) is ``|u - v|`` to first order: 5.4e-6 rad for 128-d, 1.1e-5 for 512-d."""
    return ROUNDING_ULPS * FLOAT32_EPS * math.sqrt(dim)


def geodesic_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle in radians between unit vectors along the last dimension.

    Uses ``2 * atan2(|u - v|, |u + v|)``, accurate for tiny and near-pi angles where a clamped
    ``arccos(u . v)`` loses all precision (and has an infinite gradient at 0).
    """
    return 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


def cosine_similarity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (inputs need not be normalised)."""
    return torch.nn.functional.cosine_similarity(u, v, dim=-1)


def excess_rounding(dim: int) -> float:
    """The rounding of a beyond-prior excess, (d_high - d_low) - (prior_high - prior_low), of
    float32 unit embeddings of ``dim`` components: each of its four distances is an angle between
    two embeddings, each within :func:`angle_rounding` of its exact value, so each distance is
    within 2 x that and the excess within 8 x that (4.3e-5 rad for 128-d, 8.7e-5 for 512-d). An
    excess this close to the margin it must beat is a tie: another thread count or batch could
    put it on either side."""
    return 8 * angle_rounding(dim)
