"""Saliency (Simonyan et al., 2014) of the similarity target, via captum: max over colour
channels of |ds/dx|."""
from __future__ import annotations

from captum.attr import Saliency

from .base import Explainer


class SaliencyExplainer(Explainer):
    name = "saliency"
    default_normalise = "abs"

    def _attribute(self, images, references):
        grad = Saliency(self.target.forward_func()).attribute(
            images.clone().requires_grad_(True), additional_forward_args=(references,), abs=True
        )
        return grad.amax(dim=1)
