"""A control: the model's image-independent prior map, the same for every image.

The prior is the mean of the model's own occlusion maps over calibration images
(``falsify.falsification.prior.occlusion_prior``): of all maps that ignore the image in front of
them, it ranks regions most like the model does on average, so it is the strongest such control
(a centred Gaussian blob is a weaker one). A method that is not falsified clearly less often than
``centre`` tells nothing about the image beyond where faces usually matter.
"""
from __future__ import annotations

import torch

from .base import AttributionError, Explainer


class CentreExplainer(Explainer):
    name = "centre"
    default_normalise = "signed"
    needs_gradients = False

    def __init__(self, model, prior: torch.Tensor | None = None, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if prior is None:
            prior = getattr(model, "attribution_prior", None)
        if prior is None:
            raise AttributionError(
                "centre needs the model's prior map (H, W): compute it with "
                "falsify.falsification.prior.occlusion_prior(model, images) and pass prior=..., "
                "or use 'falsify run', which computes it on its calibration images"
            )
        prior = torch.as_tensor(prior, dtype=torch.float32)
        if tuple(prior.shape) != tuple(model.input_size):
            raise AttributionError(f"prior must be (H, W) = {tuple(model.input_size)}, got {tuple(prior.shape)}")
        self.prior = prior

    def _attribute(self, images, references):
        return self.prior.to(images.device).expand(images.shape[0], -1, -1).clone()
