"""Similarity maps (Stylianou, Souvenir & Pless, WACV 2019, "Visualizing deep similarity
networks"): the cosine of two embeddings decomposed over the positions of the last feature map.

The method needs a head that is affine in the last feature map ``F`` (C, h, w):
``g(x) = L(F) + c`` with ``L`` linear. Two forms are recognised, both as a chain of modules
after the last feature map (found by one probe forward pass, each module's input being the
previous one's output):

- global average pooling + linear (dlib's port: ``AdaptiveAvgPool2d(1)``, ``Linear(bias=False)``):
  ``g = W mean_ij F[:, i, j]``, so ``c = 0``;
- flatten + linear + BatchNorm (SFace: ``bn1, flatten, pre_fc1, fc1``; iresnet: ``bn2, fc,
  features``): every BatchNorm in eval mode is affine, so ``g = A vec(F) + c`` with the bias and
  the BatchNorm shifts gathered in ``c = head(0)``.

Write ``F_ij`` for ``F`` with every position but (i, j) zeroed. Then ``L(F) = sum_ij L(F_ij)``
and, with ``r^ = r / |r|`` the unit reference embedding,

    cos(f(x), r) = <g, r^> / |g| = sum_ij <L(F_ij), r^> / |g|  +  <c, r^> / |g|
                 =          sum_ij  S_ij                       +  constant

``S_ij`` is the contribution of position (i, j); for the pooling head it is Stylianou's
``<W F_ij, r^> / (h w |g|)`` and the constant is 0, so the contributions sum to the cosine.
Without a reference the target is ``|g|`` (as for every method): ``r^ = g / |g|`` and the
``1 / |g|`` is dropped, so the contributions sum to ``|g| - <c, g^>``.

The map at the input resolution spreads each contribution evenly over the pixels of its cell:
pixel (y, x) belongs to cell (floor(y h / H), floor(x w / W)) and gets ``S_ij / (pixels in the
cell)``, so the map sums to ``sum_ij S_ij`` exactly (up to float rounding). The raw
contributions and the constant are returned by :meth:`SimilarityMapExplainer.decompose`.

A model whose last feature map is followed by anything else (a PReLU, an attention pooling,
an ONNX Gemm node, ...) is refused with the module that breaks the chain named.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import AttributionError, Explainer

#: Modules that are affine at inference; a chain of them (with at least one Linear) after the last
#: feature map is a head the similarity decomposes through.
_AFFINE = (nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d)


def _is_affine(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))
    return isinstance(module, _AFFINE)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two recorded tensors are the same values (one may be the other flattened)."""
    if a.shape[0] != b.shape[0] or a[0].numel() != b[0].numel():
        return False
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape or torch.equal(a.flatten(1), b.flatten(1))


class SimilarityMapExplainer(Explainer):
    name = "similarity-map"
    default_normalise = "positive"
    needs_gradients = False

    def __init__(self, model, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        self.head_names, self.head = self._find_head()

    # -- the head ---------------------------------------------------------------------------
    def _find_head(self) -> tuple[list[str], list[nn.Module]]:
        """The chain of affine modules from the last feature map to the raw embedding."""
        leaves = [(n, m) for n, m in self.model.named_modules() if not list(m.children())]
        calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

        def hook(name):
            def record(mod, inp, out):
                if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((name, mod, inp[0].detach(), out.detach()))
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
        g = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, *self.model.input_size, generator=g).to(self.device)
        try:
            with torch.no_grad():
                raw = self.model.embed_raw(probe)
        finally:
            for h in handles:
                h.remove()
        who = getattr(self.model, "name", type(self.model).__name__)
        if not calls or not _same(calls[-1][3], raw):
            raise AttributionError(
                f"similarity-map: model {who!r} does not end in a module whose output is its embedding, so the "
                "similarity has no decomposition over a feature map; use another method"
            )
        chain: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        for call in reversed(calls):
            if not _is_affine(call[1]) or (chain and not _same(call[3], chain[0][2])):
                break
            chain.insert(0, call)
        features = chain[0][2] if chain else None
        if (not chain or not any(isinstance(c[1], nn.Linear) for c in chain) or features.dim() != 4):
            last = calls[-1 - len(chain)] if len(calls) > len(chain) else calls[0]
            raise AttributionError(
                f"similarity-map needs a head of average pooling or flatten + Linear (+ BatchNorm) after the last "
                f"feature map; model {who!r} has {type(last[1]).__name__} ({last[0]}) there, so its similarity "
                "has no spatial decomposition: use another method"
            )
        return [c[0] for c in chain], [c[1] for c in chain]

    def _apply_head(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.head:
            if isinstance(module, (nn.Linear, nn.BatchNorm1d)) and x.dim() > 2:
                x = x.flatten(1)
            x = module(x)
        return x.flatten(1)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last feature map (B, C, h, w), the raw embedding (B, D)) from one forward pass."""
        store: dict = {}
        handle = self.head[0].register_forward_pre_hook(lambda _m, inp: store.__setitem__("F", inp[0]))
        try:
            with torch.no_grad():
                raw = self.model.embed_raw(images)
        finally:
            handle.remove()
        return store["F"].float().contiguous(), raw.float()

    # -- the decomposition ------------------------------------------------------------------
    def decompose(self, images: torch.Tensor, references: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(contributions (B, h, w), constant (B,), target (B,))``: the contributions of the last
        feature map's positions and the head's constant term, which add up to the target
        (cos(f(x), r), or |g(x)| without references)."""
        images, references = self.check_inputs(images, references)
        feats, raw = self._features(images)
        b, c, h, w = feats.shape
        norm = raw.norm(dim=1).clamp_min(1e-12)
        if references is None:
            direction, scale = raw / norm[:, None], torch.ones_like(norm)
        else:
            direction, scale = F.normalize(references, dim=1), norm
        with torch.no_grad():
            const_vec = self._apply_head(torch.zeros_like(feats[:1]))[0]  # c = head(0)
            contrib = torch.empty(b, h * w, device=feats.device)
            eye = torch.eye(h * w, device=feats.device).view(h * w, 1, h, w)
            per = max(1, (1 << 24) // max(1, c * h * w))  # rows of (C, h, w) per head call
            for i in range(b):
                for start in range(0, h * w, per):
                    one = feats[i : i + 1] * eye[start : start + per]  # F_ij for each position
                    lin = self._apply_head(one) - const_vec  # L(F_ij)
                    contrib[i, start : start + per] = lin @ direction[i]
        contrib = contrib / scale[:, None]
        constant = (const_vec[None] * direction).sum(1) / scale
        target = (raw * direction).sum(1) / scale
        return contrib.view(b, h, w), constant, target

    def _attribute(self, images, references):
        contrib, _, _ = self.decompose(images, references)
        return spread_cells(contrib, images.shape[-2:])


def spread_cells(cells: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) cell values -> (B, H, W): each cell's value divided evenly over its pixels
    (pixel (y, x) in cell (floor(y h / H), floor(x w / W))), so the sum is kept."""
    b, h, w = cells.shape
    height, width = int(size[0]), int(size[1])
    rows = torch.arange(height, device=cells.device) * h // height
    cols = torch.arange(width, device=cells.device) * w // width
    count = torch.bincount(rows, minlength=h)[:, None] * torch.bincount(cols, minlength=w)[None, :]
    density = cells / count.clamp_min(1).to(cells.dtype)
    return density[:, rows][:, :, cols]
