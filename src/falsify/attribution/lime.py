"""LIME (Ribeiro et al., 2016) over superpixels, computed as captum's ``Lime`` does.

A ridge-regression surrogate (alpha 1, the original LIME package's default; captum's default
Lasso with alpha 0.01 zeroes every coefficient when the similarity moves by less than ~0.01)
of the similarity target, fitted on ``n_samples`` random superpixel coalitions (each superpixel
kept with probability 1/2) weighted by an exponential kernel of their cosine distance to the
full image, exp(-d^2 / 2) (captum's default kernel, width 1). Defaults: 50 SLIC segments, 128
coalitions, mean-colour baseline (see ``superpixel_base``).
"""
from __future__ import annotations

import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import Lime

from .superpixel_base import SuperpixelExplainer


class LIMEExplainer(SuperpixelExplainer):
    name = "lime"
    captum_class = Lime
    ridge_alpha = 1.0
    needs_input_cosine = True

    def make_captum(self):
        return Lime(self.target.forward_func(), interpretable_model=SkLearnRidge(alpha=1.0))

    def sample_coalitions(self, m: int) -> torch.Tensor:
        probs = torch.ones(1, m) * 0.5
        return torch.cat([torch.bernoulli(probs).long() for _ in range(self.n_samples)])

    def sample_weights(self, coalitions, images, perturbed_cos):
        distance = 1.0 - perturbed_cos
        return torch.exp(-(distance**2) / 2.0)
