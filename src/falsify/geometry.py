"""Distances on the embedding hypersphere."""
from __future__ import annotations

import torch


def geodesic_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle in radians between unit vectors along the last dimension.

    Uses ``2 * atan2(|u - v|, |u + v|)``, accurate for tiny and near-pi angles where a clamped
    ``arccos(u . v)`` loses all precision (and has an infinite gradient at 0).
    """
    return 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


def cosine_similarity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (inputs need not be normalised)."""
    return torch.nn.functional.cosine_similarity(u, v, dim=-1)
