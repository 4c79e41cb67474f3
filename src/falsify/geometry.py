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
