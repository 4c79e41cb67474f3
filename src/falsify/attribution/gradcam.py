"""Grad-CAM for a metric-learning target, and the CAM base class the variants share.

For a layer with activations A (B,C,h,w) and the target s = cos(f(x), r):

    g      = ds/dA                               (full backward hook on the layer)
    w_k    = mean_ij g_k,ij                      (channel weights)
    M      = ReLU(sum_k w_k A_k)                 (h, w)
    map    = minmax(upsample_bilinear(M, (H, W), align_corners=False))

Grad-CAM++ and Biometric Grad-CAM override only ``channel_weights`` / ``combine``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import AttributionError, Explainer, find_layer


class CAMExplainer(Explainer):
    """Class-activation-map methods: weights of a layer's channels from the target's gradient."""

    default_normalise = "positive"

    def __init__(self, model, layer: str | nn.Module | None = None, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        self.layer_name, self.layer = find_layer(model, layer)

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: dict) -> torch.Tensor:
        """(B,C) weights; Grad-CAM: the spatial mean of the gradients."""
        return gradients.mean(dim=(2, 3))

    def combine(self, activations: torch.Tensor, weights: torch.Tensor, ctx: dict) -> torch.Tensor:
        """(B,h,w) low-resolution map before upsampling; Grad-CAM: ReLU of the weighted sum."""
        return F.relu((weights[:, :, None, None] * activations).sum(dim=1))

    def forward_backward(self, images: torch.Tensor, references: torch.Tensor | None):
        """One forward pass and a backward pass from the target down to the layer only.

        Returns (activations, gradients, target values). The layer's output is re-rooted as a
        leaf of the autograd graph (a forward hook returns a copy of it that requires grad), so
        ``torch.autograd.grad`` stops there: no gradient flows into the layers below it, the
        input, or any parameter.
        """
        store: dict = {}

        def hook(_m, _inp, out):
            if not isinstance(out, torch.Tensor):
                store["activations"] = out
                return None
            leaf = out.detach().requires_grad_(True)
            store["activations"] = leaf
            return leaf.clone()  # a non-leaf, so in-place ops downstream stay legal

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                scores = self.target(images, references)
        finally:
            handle.remove()
        if "activations" not in store:
            raise AttributionError(f"layer {self.layer_name!r} was not used in the forward pass")
        acts = store["activations"]
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            shape = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise AttributionError(
                f"layer {self.layer_name!r} outputs {shape}; CAM methods need a (B,C,h,w) feature map"
            )
        # samples are independent (eval mode), so d(sum s)/dA gives each sample's own gradient
        (grads,) = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        if grads is None:
            grads = torch.zeros_like(acts)
        # a model run in bf16/fp16 (falsify.models.precision) hands the layer's tensors in its dtype
        return acts.detach().float(), grads.detach().float(), scores.detach()

    def _attribute(self, images: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        acts, grads, scores = self.forward_backward(images, references)
        ctx = {"scores": scores, "references": references}
        cam = self.combine(acts, self.channel_weights(acts, grads, ctx), ctx)
        return F.interpolate(
            cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]


class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al., 2017) of the similarity to the reference."""

    name = "gradcam"
