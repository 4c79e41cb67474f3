"""Attribution maps for face verification, with the similarity to a reference as the target.

>>> from falsify.attribution import get_explainer, METHODS
>>> explainer = get_explainer("gradcam", model, layer="layer4.2.conv2")
>>> maps = explainer(images, references)      # (B,H,W) in [0,1]; references (B,D) embeddings
>>> raw = explainer.attribute(images, references)   # signed, unnormalised (B,H,W)
"""
from __future__ import annotations

import inspect
import types
import typing

from ..choices import METHODS as _CHOICES
from .base import AttributionError, Explainer, SimilarityTarget, find_layer, normalise_maps
from .biometric_gradcam import BiometricGradCAM
from .centre import CentreExplainer
from .edge import EdgeExplainer
from .geodesic_ig import GeodesicIntegratedGradients
from .gradcam import CAMExplainer, GradCAM
from .gradcam_pp import GradCAMPlusPlus
from .gradient_x_input import GradientXInputExplainer
from .ig import IntegratedGradientsExplainer
from .kernelshap import KernelSHAPExplainer
from .lime import LIMEExplainer
from .occlusion import OcclusionExplainer
from .random_map import RandomExplainer
from .rise import RISEDissimilarityExplainer, RISEExplainer
from .saliency import SaliencyExplainer
from .similarity_map import SimilarityMapExplainer
from .xssab import XSSABExplainer

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
        SimilarityMapExplainer,
        XSSABExplainer,
        RISEExplainer,
        RISEDissimilarityExplainer,
        RandomExplainer,
        CentreExplainer,
        EdgeExplainer,
    )
}

#: Method names, in the order reports list them (the same tuple as ``falsify.choices.METHODS``,
#: which the CLI reads without importing torch).
METHODS: tuple[str, ...] = tuple(_CLASSES)
if METHODS != _CHOICES:
    raise ImportError(f"falsify.choices.METHODS {_CHOICES} does not match the registered methods {METHODS}")


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
    """Build the explainer ``name`` for ``model``; unknown or mistyped options raise a clear error
    naming ``METHOD.OPTION``."""
    cls = _method_class(name)
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "model")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise AttributionError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(params)}"
        )
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type check, the class still validates
        hints = {}
    for key, value in options.items():
        _check_option_type(name, key, value, hints.get(key))
    try:
        return cls(model, **options)
    except AttributionError:
        raise
    except (ValueError, TypeError) as exc:
        raise AttributionError(f"{name}: {exc}") from None


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _check_option_type(method: str, key: str, value, hint) -> None:
    """An option's value must match its annotation (``int``, ``float``, ``str``, ``bool``, unions
    and ``None``); a float annotation takes whole numbers too, an int one never takes a bool."""
    if hint is None:
        return
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(t in _TYPE_WORDS or t is type(None) for t in allowed):
        return  # richer types (modules, tensors, callables): the class checks them

    def fits(t) -> bool:
        if t is type(None):
            return value is None
        if t is bool or isinstance(value, bool):
            return t is bool and isinstance(value, bool)
        if t is float:
            return isinstance(value, (int, float))
        return isinstance(value, t)

    if not any(fits(t) for t in allowed):
        words = " or ".join(_TYPE_WORDS.get(t, "none") for t in allowed)
        raise AttributionError(f"option {method}.{key} must be {words}, got {value!r}")


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
