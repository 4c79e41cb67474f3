"""Occlusion (Zeiler & Fergus, 2014) of the similarity target, via captum.

A ``window`` x ``window`` patch (all colour channels) slides with ``stride``; each position is
replaced by the baseline and the drop s(x) - s(x_occluded) is credited to the pixels it
covers, averaged over the windows that cover each pixel (captum's rule). Defaults: window =
round(H / 10) (15 px at 150x150), stride = window // 2, baseline black; positions are
evaluated ``batch_size`` at a time. The map is the mean over colour channels (the drop itself).
"""
from __future__ import annotations

from captum.attr import Occlusion

from ..imageops import make_baseline
from .base import AttributionError, Explainer


class OcclusionExplainer(Explainer):
    name = "occlusion"
    default_normalise = "abs"
    needs_gradients = False

    def __init__(self, model, window: int | None = None, stride: int | None = None,
                 baseline: str | float = "black", batch_size: int = 64, normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        h = model.input_size[0]
        self.window = int(window) if window else max(2, round(h / 10))
        self.stride = int(stride) if stride else max(1, self.window // 2)
        if not 1 <= self.window <= min(model.input_size):
            raise AttributionError(f"window must be between 1 and {min(model.input_size)}, got {self.window}")
        if self.stride < 1:
            raise AttributionError(f"stride must be >= 1, got {self.stride}")
        self.baseline, self.batch_size = baseline, int(batch_size)
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)

    def _attribute(self, images, references):
        attr = Occlusion(self.target.forward_func()).attribute(
            images,
            sliding_window_shapes=(3, self.window, self.window),
            strides=(3, self.stride, self.stride),
            baselines=make_baseline(images, self.baseline),
            additional_forward_args=(references,),
            perturbations_per_eval=self.batch_size,
        )
        return attr.mean(dim=1)
