"""LIME (Ribeiro et al., 2016) over superpixels, via captum's ``Lime``.

A ridge-regression surrogate (alpha 1, the original LIME package's default; captum's default
Lasso with alpha 0.01 zeroes every coefficient when the similarity moves by less than ~0.01)
of the similarity target, fitted on ``n_samples`` random superpixel coalitions weighted by an
exponential kernel of their cosine distance to the full image (captum's default kernel). Defaults: 50 SLIC segments, 256
coalitions, mean-colour baseline (see ``superpixel_base``).
"""
from __future__ import annotations

from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import Lime

from .superpixel_base import SuperpixelExplainer


class LIMEExplainer(SuperpixelExplainer):
    name = "lime"
    captum_class = Lime

    def make_captum(self):
        return Lime(self.target.forward_func(), interpretable_model=SkLearnRidge(alpha=1.0))
