"""KernelSHAP (Lundberg & Lee, 2017) over superpixels, via captum's ``KernelShap``.

Shapley values of the similarity target with superpixels as players: efficiency says
sum_k phi_k = s(x) - s(baseline). Defaults: 50 SLIC segments, 256 coalitions, mean-colour
baseline (see ``superpixel_base``).
"""
from __future__ import annotations

from captum.attr import KernelShap

from .superpixel_base import SuperpixelExplainer


class KernelSHAPExplainer(SuperpixelExplainer):
    name = "kernelshap"
    captum_class = KernelShap
