"""Attribution maps for face verification, with the similarity to a reference as the target.

>>> from falsify.attribution import get_explainer, METHODS
>>> explainer = get_explainer("gradcam", model, layer="layer4.2.conv2")
>>> maps = explainer(images, references)      # (B,H,W) in [0,1]; references (B,D) embeddings
>>> raw = explainer.attribute(images, references)   # signed, unnormalised (B,H,W)
"""
from __future__ import annotations

import inspect

from .base import AttributionError, Explainer, SimilarityTarget, find_layer, normalise_maps
from .biometric_gradcam import BiometricGradCAM
from .geodesic_ig import GeodesicIntegratedGradients
from .gradcam import CAMExplainer, GradCAM
from .gradcam_pp import GradCAMPlusPlus
from .gradient_x_input import GradientXInputExplainer
from .ig import IntegratedGradientsExplainer
from .kernelshap import KernelSHAPExplainer
from .lime import LIMEExplainer
from .occlusion import OcclusionExplainer
from .random_map import RandomExplainer
from .saliency import SaliencyExplainer

_CLASSES: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (
        GradCAM,
        GradCAMPlusPlus,
        BiometricGradCAM,
        IntegratedGradientsExplainer,
        GeodesicIntegratedGradients,
        SaliencyExplainer,
        GradientXInputExplainer,
        OcclusionExplainer,
        KernelSHAPExplainer,
        LIMEExplainer,
        RandomExplainer,
    )
}

#: Method names, in the order reports list them.
METHODS: tuple[str, ...] = tuple(_CLASSES)


def method_options(name: str) -> list[str]:
    """The keyword options ``get_explainer(name, model, ...)`` accepts for a method."""
    cls = _method_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]


def _method_class(name: str) -> type[Explainer]:
    try:
        return _CLASSES[name]
    except KeyError:
        raise AttributionError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}") from None


def get_explainer(name: str, model, **options) -> Explainer:
    """Build the explainer ``name`` for ``model``; unknown options raise a clear error."""
    cls = _method_class(name)
    allowed = method_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AttributionError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(allowed)}"
        )
    return cls(model, **options)


__all__ = [
    "METHODS",
    "AttributionError",
    "CAMExplainer",
    "Explainer",
    "SimilarityTarget",
    "find_layer",
    "get_explainer",
    "method_options",
    "normalise_maps",
]
