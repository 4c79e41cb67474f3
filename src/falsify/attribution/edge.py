"""A model-free control: the gradient magnitude of the image (Sobel, scikit-image).

It knows where the image has structure (eyes, hair, outlines) and nothing about the model; a
method that is not falsified clearly less often than ``edge`` has not shown that it explains the
model rather than the picture.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.filters import sobel

from .base import Explainer


class EdgeExplainer(Explainer):
    name = "edge"
    default_normalise = "signed"
    needs_gradients = False

    def _attribute(self, images, references):
        gray = images.mean(dim=1).cpu().numpy().astype(np.float64)
        edges = np.stack([sobel(g) for g in gray])
        return torch.from_numpy(edges).float().to(images.device)
