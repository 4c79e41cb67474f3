"""xSSAB: similarity score argument backpropagation (Huber, Luu, Terhörst & Damer, WACV 2024,
"Efficient explainable face verification based on similarity score argument backpropagation").

The cosine of two unit embeddings is a sum over dimensions, ``cos = sum_k f_k(x) r^_k``. xSSAB
splits that sum by what each dimension argues, given the model's decision threshold ``t`` on
the cosine and the embedding size ``D``: a dimension whose product ``f_k(x) r^_k`` reaches
``t / D`` (its share of the threshold) argues for the match, the others against it:

    P = {k : f_k(x) r^_k >= t / D},   s+(x') = sum_{k in P} f_k(x') r^_k,   s-(x') = sum_{k not in P} f_k(x') r^_k

(the sets are fixed at the probe x, so s+ + s- = cos). Each part is backpropagated to the
image; a pixel's map value is the mean over colour channels of the gradient's magnitude:

    M+(u) = mean_c |d s+ / d x_c(u)|,   M-(u) = mean_c |d s- / d x_c(u)|

``part`` picks what falsify tests: ``positive`` (default, M+: where the image moves the
arguments for the match), ``negative`` (M-: the arguments against), or ``combined``
(M+ - M-, signed: the paper's combination, positive where the supporting arguments dominate).
Cost: one forward and one backward pass per image (two backward passes for ``combined``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttributionError, Explainer

PARTS = ("positive", "negative", "combined")


class XSSABExplainer(Explainer):
    name = "xssab"
    default_normalise = "positive"

    def __init__(self, model, threshold: float | None = None, part: str = "positive",
                 normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if part not in PARTS:
            raise AttributionError(f"xssab.part must be one of {', '.join(PARTS)}, got {part!r}")
        self.part = part
        self.threshold = threshold if threshold is not None else getattr(model, "threshold", None)
        if self.threshold is None:
            raise AttributionError(
                f"xssab splits the similarity at the model's decision threshold, and model "
                f"{getattr(model, 'name', '?')!r} has none: pass xssab.threshold=<cosine threshold>"
            )
        self.threshold = float(self.threshold)

    def arguments(self, images: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s+ (B,), s- (B,)) at the images: the parts of the cosine that argue for and against the match."""
        images, references = self.check_inputs(images, references)
        with torch.no_grad():
            pos, neg, _ = self._parts(images, references)
        return pos, neg

    def _parts(self, x: torch.Tensor, references: torch.Tensor):
        emb = self.model(x)
        unit = F.normalize(references, dim=1)
        terms = emb * unit
        keep = (terms.detach() >= self.threshold / emb.shape[1]).to(terms.dtype)
        return (terms * keep).sum(1), (terms * (1 - keep)).sum(1), emb

    def _attribute(self, images, references):
        if references is None:
            raise AttributionError("xssab explains the similarity of a pair: pass the reference embeddings")
        x = images.clone().requires_grad_(True)
        with torch.enable_grad():
            pos, neg, _ = self._parts(x, references)
            maps = {}
            wanted = ("positive", "negative") if self.part == "combined" else (self.part,)
            for i, name in enumerate(wanted):
                score = pos if name == "positive" else neg
                (grad,) = torch.autograd.grad(score.sum(), x, retain_graph=i + 1 < len(wanted), allow_unused=True)
                maps[name] = torch.zeros_like(x[:, 0]) if grad is None else grad.abs().mean(1)
        if self.part == "combined":
            return maps["positive"] - maps["negative"]
        return maps[self.part]
