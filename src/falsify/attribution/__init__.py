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
from .captum_methods import CAPTUM_PREFIX, SmoothGradExplainer, VarGradExplainer, captum_class, captum_names
from .centre import CentreExplainer
from .door import explainer_class, import_method, is_import_path
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
        SmoothGradExplainer,
        VarGradExplainer,
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


#: methods registered with :func:`register_method`: name -> (explainer class, what was registered)
_REGISTERED: dict[str, tuple[type[Explainer], object]] = {}
#: methods named by import path (``module.path:callable``), imported on first use
_IMPORTED: dict[str, type[Explainer]] = {}


def register_method(name: str, method) -> type[Explainer]:
    """Register ``method`` under ``name`` for ``get_explainer``, ``--methods`` and every experiment.

    ``method`` is a class in falsify's explainer interface (an :class:`Explainer` subclass whose
    ``_attribute(images, references)`` returns (N, H, W)), or a plain callable
    ``method(model, images, references) -> maps``: images (N, 3, H, W) RGB in [0, 1], reference
    embeddings (N, D) (None without a reference), maps (N, H, W), signed or not. Returns the
    explainer class. A name already registered is replaced; a built-in name is refused."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or any(c in name for c in ",@= "):
        raise AttributionError(f"a method name must be a non-empty string without spaces, ',', '@' or '=', "
                               f"got {name!r}")
    if name in _CLASSES or name.startswith(CAPTUM_PREFIX) or name == "all":
        raise AttributionError(f"{name!r} is a built-in method name; register yours under another name")
    cls = explainer_class(name, method)
    _REGISTERED[name] = (cls, method)
    return cls


def registered_methods() -> dict[str, object]:
    """What :func:`register_method` was given, by name (Ray workers register the same)."""
    return {name: method for name, (_cls, method) in _REGISTERED.items()}


def is_known_method(name: str) -> bool:
    """Whether ``name`` is a built-in or registered method (captum's and import paths are resolved
    by :func:`check_method`)."""
    return name in _CLASSES or name in _REGISTERED


def method_source(name: str) -> str | None:
    """The file of a registered or imported method's code (None for built-ins, captum's, and code
    with no file): its sha256 is part of a run's settings (``method_fingerprints``)."""
    if name in _CLASSES or name.startswith(CAPTUM_PREFIX):
        return None
    return getattr(_method_class(name), "source_file", None)


def method_fingerprints(names) -> dict[str, str]:
    """``{name: sha256 of its file}`` for the registered and imported methods among ``names``."""
    from ..fingerprints import file_fingerprint

    out = {}
    for n in names:
        src = method_source(n)
        if src:
            out[n] = file_fingerprint(src)
    return out


def available_methods() -> dict[str, list[str]]:
    """What ``--methods`` takes: the built-ins, the registered methods and the captum classes."""
    return {"builtin": list(METHODS), "registered": list(_REGISTERED), "captum": [CAPTUM_PREFIX + n for n in captum_names()]}


def method_options(name: str) -> list[str]:
    """The keyword options ``get_explainer(name, model, ...)`` accepts for a method."""
    cls = _method_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]


def check_method(name: str) -> None:
    """Resolve ``name`` now (importing the module it names, if any): one line when it cannot be."""
    _method_class(name)


def _method_class(name: str) -> type[Explainer]:
    if name in _CLASSES:
        return _CLASSES[name]
    if name in _REGISTERED:
        return _REGISTERED[name][0]
    if isinstance(name, str) and name.startswith(CAPTUM_PREFIX):
        return captum_class(name)
    if is_import_path(name):
        if name not in _IMPORTED:
            _IMPORTED[name] = import_method(name)
        return _IMPORTED[name]
    registered = f"; registered: {', '.join(_REGISTERED)}" if _REGISTERED else ""
    raise AttributionError(
        f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}{registered}, captum:NAME (a "
        "captum.attr class, e.g. captum:DeepLift) or module.path:callable (your own; `falsify methods` lists them)")


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
    "available_methods",
    "check_method",
    "is_known_method",
    "get_explainer",
    "method_fingerprints",
    "method_options",
    "register_method",
    "registered_methods",
    "normalise_maps",
]
