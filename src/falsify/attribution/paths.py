"""The embeddings of points on a straight path b + a (x - b), shared by the path methods.

``ig`` evaluates the model at points of the path from the baseline b to the image x (it needs
their gradients, and the forward pass of each gives the point's embedding on the way);
``geodesic-ig`` measures the angle the same path's embeddings travel on a uniform grid of the
same path. Both grids are dyadic (a = k / 2^j at the default steps), so the points IG has
evaluated are points of the geodesic schedule's grid. ``PathEmbeddings`` keeps each evaluated
point's embedding, keyed by the path (the model's weights, the image, the baseline) and the
point (the reduced fraction k/n), so the second method reads them instead of computing them
again. It is attached to the model (``path_embeddings(model)``): any two explainers of one model
share it, whoever calls them.

A cached embedding was computed under autograd (IG) and a fresh one, by the geodesic schedule,
without it; the dlib model's inference path folds its affine layers into the convolutions, so
the two agree to rounding (~3e-7), not bit for bit.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import torch

from ..models.base import weights_version

#: the most paths (image, baseline) whose embeddings are kept, least recently used first out
MAX_PATHS = 64


def tensor_digest(*tensors: torch.Tensor) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def fraction(k: int, n: int) -> tuple[int, int]:
    """The point a = k / n as a reduced fraction, so k/n and 2k/2n are one point."""
    g = math.gcd(k, n) or 1
    return k // g, n // g


class PathEmbeddings:
    """Embeddings (D,) of path points, by path key and reduced fraction; bounded by ``MAX_PATHS``."""

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        self.max_paths = int(max_paths)
        self._paths: OrderedDict[tuple, dict] = OrderedDict()
        self.owner: int | None = None

    def key(self, model: torch.nn.Module, image: torch.Tensor, baseline: torch.Tensor) -> tuple:
        return (weights_version(model), tensor_digest(image, baseline))

    def points(self, key: tuple) -> dict:
        """The stored points of one path (fraction -> embedding), created empty on first use."""
        pts = self._paths.get(key)
        if pts is None:
            pts = self._paths[key] = {}
            while len(self._paths) > self.max_paths:
                self._paths.popitem(last=False)
        else:
            self._paths.move_to_end(key)
        return pts

    def clear(self) -> None:
        self._paths.clear()


def path_embeddings(model: torch.nn.Module) -> PathEmbeddings:
    """The model's shared cache (created on first use; a copy of the model, such as a randomised
    one made with ``copy.deepcopy``, gets its own)."""
    cache = model.__dict__.get("_falsify_path_embeddings")
    if cache is None or cache.owner != id(model):
        cache = PathEmbeddings()
        cache.owner = id(model)
        model.__dict__["_falsify_path_embeddings"] = cache
    return cache
