"""Shared base of the superpixel perturbation methods (KernelSHAP, LIME), via captum.

Each image is cut into ~``n_segments`` SLIC superpixels (scikit-image); a coalition keeps some
superpixels and replaces the rest by the baseline image (default: the image's mean colour, so
that "absent" is a flat patch of the face's own tone rather than black). captum fits the
surrogate on ``n_samples`` coalitions, evaluated ``batch_size`` at a time. A superpixel's
attribution phi_k is spread evenly over its pixels, so the (B,H,W) map is a density
(phi_k / area_k) and its sum over pixels is sum_k phi_k.
"""
from __future__ import annotations

import torch

from ..imageops import make_baseline, superpixels
from .base import AttributionError, Explainer


class SuperpixelExplainer(Explainer):
    default_normalise = "abs"
    needs_gradients = False
    captum_class: type

    def __init__(self, model, n_samples: int = 256, n_segments: int = 50, segmentation: str = "slic",
                 baseline: str | float = "mean", batch_size: int = 64, seed: int = 0,
                 normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if n_samples < 2:
            raise AttributionError(f"n_samples must be >= 2, got {n_samples}")
        if n_segments < 2:
            raise AttributionError(f"n_segments must be >= 2, got {n_segments}")
        self.n_samples, self.n_segments, self.segmentation = int(n_samples), int(n_segments), segmentation
        self.baseline, self.batch_size, self.seed = baseline, int(batch_size), int(seed)
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)
        superpixels(torch.zeros(1, 3, 8, 8), 2, segmentation)  # validates the method name

    def make_captum(self):
        return self.captum_class(self.target.forward_func())

    def segments(self, images: torch.Tensor) -> torch.Tensor:
        return superpixels(images, self.n_segments, self.segmentation)

    def attribute_segments(self, images, references) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-superpixel attributions list-padded (B, max_k), segments (B,H,W))."""
        images, references = self.check_inputs(images, references)
        segs = self.segments(images)
        baselines = make_baseline(images, self.baseline)
        explainer = self.make_captum()
        phis = torch.zeros(images.shape[0], int(segs.max()) + 1, device=images.device)
        for i in range(images.shape[0]):
            torch.manual_seed(self.seed + i)  # captum samples coalitions with torch's global RNG
            ref = None if references is None else references[i : i + 1]
            attr = explainer.attribute(
                images[i : i + 1],
                baselines=baselines[i : i + 1],
                additional_forward_args=(ref,),
                feature_mask=segs[i][None, None],
                n_samples=self.n_samples,
                perturbations_per_eval=self.batch_size,
            )[0, 0]  # (H,W): phi of each pixel's superpixel
            k = int(segs[i].max()) + 1
            phis[i, :k] = torch.zeros(k, device=attr.device).scatter_reduce(
                0, segs[i].flatten(), attr.flatten(), reduce="amax", include_self=False
            )
        return phis, segs

    def _attribute(self, images, references):
        phis, segs = self.attribute_segments(images, references)
        area = torch.stack([torch.bincount(s.flatten(), minlength=phis.shape[1]) for s in segs]).clamp_min(1)
        density = phis / area
        return torch.gather(density, 1, segs.flatten(1)).view_as(segs).float()

    def attribute(self, images, references=None):
        return self._attribute(images, references).detach()
