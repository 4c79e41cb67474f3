"""Grad-CAM++ (Chattopadhay et al., 2018) of the similarity target.

    alpha_k,ij = g^2 / (2 g^2 + sum_ab A_k,ab * g^3)      (0 where g = 0)
    w_k        = sum_ij alpha_k,ij * ReLU(g_k,ij)

(the closed form assumes an exponential of the score; as in pytorch-grad-cam and captum-style
implementations, the raw gradients of s are used in its place.)
"""
from __future__ import annotations

import torch

from .gradcam import CAMExplainer


class GradCAMPlusPlus(CAMExplainer):
    name = "gradcam++"

    def channel_weights(self, activations, gradients, ctx):
        g2, g3 = gradients.pow(2), gradients.pow(3)
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + sum_a * g3
        alpha = torch.where(gradients != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))
