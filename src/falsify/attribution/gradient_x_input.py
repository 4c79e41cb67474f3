"""Gradient x input (Shrikumar et al., 2016) of the similarity target, via captum: the sum over
colour channels of x * ds/dx."""
from __future__ import annotations

from captum.attr import InputXGradient

from .base import Explainer


class GradientXInputExplainer(Explainer):
    name = "gradient-x-input"
    default_normalise = "abs"

    def _attribute(self, images, references):
        attr = InputXGradient(self.target.forward_func()).attribute(
            images.clone().requires_grad_(True), additional_forward_args=(references,)
        )
        return attr.sum(dim=1)
