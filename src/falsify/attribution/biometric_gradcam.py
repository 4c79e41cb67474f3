"""Biometric Grad-CAM: Grad-CAM adapted to a verification decision.

Two terms change Grad-CAM, each switchable:

1. **Spatial stability** (``stability=True``). A channel whose gradient changes sign across the
   feature map contributes a mean weight that is mostly cancellation; it is down-weighted by
   its sign consistency
       beta_k = |mean_ij g_k,ij| / (mean_ij |g_k,ij| + 1e-12)      in [0, 1]
   (1 when every location pushes the similarity the same way), and w_k = mean_ij(g_k) * beta_k.

2. **Identity confidence** (``confidence=True``, needs a reference). With the pair's cosine
   similarity s, the model's decision threshold t and a temperature T,
       gamma = sigmoid((s - t) / T)
   is the confidence that the pair is a match. The map is
       M = gamma * ReLU(sum_k w_k A_k) + (1 - gamma) * ReLU(-sum_k w_k A_k):
   for a confident match it shows the evidence *for* the match (as Grad-CAM does); for a
   confident non-match it shows the evidence *against* it, which plain Grad-CAM's ReLU throws
   away. (A scalar scaling of all channel weights would cancel in the min-max normalisation,
   so confidence selects which evidence is shown instead.)

With both switched off it is exactly Grad-CAM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttributionError
from .gradcam import CAMExplainer


class BiometricGradCAM(CAMExplainer):
    name = "biometric-gradcam"

    def __init__(
        self,
        model,
        layer=None,
        normalise: str | None = None,
        stability: bool = True,
        confidence: bool = True,
        threshold: float | None = None,
        temperature: float = 0.05,
    ) -> None:
        super().__init__(model, layer, normalise)
        if temperature <= 0:
            raise AttributionError(f"temperature must be > 0, got {temperature}")
        self.stability = stability
        self.confidence = confidence
        self.temperature = float(temperature)
        self.threshold = threshold if threshold is not None else getattr(model, "threshold", None)
        if confidence and self.threshold is None:
            raise AttributionError(
                f"biometric-gradcam needs the model's decision threshold (cosine similarity) for its "
                f"identity-confidence term: pass threshold=<t> (`falsify verify` prints it) or "
                "confidence=False"
            )

    def channel_weights(self, activations, gradients, ctx):
        weights = gradients.mean(dim=(2, 3))
        if self.stability:
            beta = weights.abs() / (gradients.abs().mean(dim=(2, 3)) + 1e-12)
            weights = weights * beta
        return weights

    def combine(self, activations, weights, ctx):
        cam = (weights[:, :, None, None] * activations).sum(dim=1)
        if not self.confidence or ctx["references"] is None:
            return F.relu(cam)
        gamma = torch.sigmoid((ctx["scores"] - self.threshold) / self.temperature)[:, None, None]
        return gamma * F.relu(cam) + (1 - gamma) * F.relu(-cam)
