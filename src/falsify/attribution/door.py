"""The door for methods falsify does not ship: a registered class or callable, or one named by its
import path (``module.path:callable``, the convention of uvicorn and gunicorn).

A plain callable ``method(model, images, references) -> maps`` takes the model (a falsify
``FaceEmbedder``), images ``(N, 3, H, W)`` RGB in [0, 1] and the reference embeddings ``(N, D)``
(L2-normalised; ``None`` when there is no reference) and returns maps ``(N, H, W)``, signed or
not (a tensor or a NumPy array). :class:`CallableExplainer` wraps it in the explainer interface;
the maps are checked (shape, finite values) by ``Explainer.attribute``, like every method's.

A module is imported only because the user named it (``--methods mylab.maps:left_half``):
nothing here imports anything else.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Callable

import torch

from .base import AttributionError, Explainer

#: ``module.path:attribute`` (the attribute may be dotted, e.g. ``Class.method``)
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``module.path:callable`` (``captum:NAME`` is not one)."""
    return isinstance(name, str) and not name.startswith("captum:") and bool(IMPORT_PATH.match(name))


class CallableExplainer(Explainer):
    """A plain callable ``method(model, images, references) -> (N, H, W)`` as an explainer.

    Subclasses made by :func:`callable_explainer` set ``name`` and ``fn``. What the callable raises
    becomes one ``AttributionError`` line naming the method; the default normalisation is ``abs``
    (importance by magnitude, as the gradient methods; ``--option NAME.normalise=signed``)."""

    name = "callable"
    default_normalise = "abs"
    fn: Callable | None = None
    #: the file of the callable's code (its sha256 is part of a run's settings)
    source_file: str | None = None

    def _attribute(self, images, references):
        fn = type(self).fn
        try:
            out = fn(self.model, images, references)
        except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it
            raise AttributionError(f"method {self.name!r} raised {type(exc).__name__}: {one_line(exc)}") from None
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(out)
            except Exception:  # noqa: BLE001
                raise AttributionError(f"method {self.name!r} returned {type(out).__name__}, not maps (N, H, W) "
                                       "(a torch.Tensor or a NumPy array)") from None
        return out.detach().to(self.device, torch.float32)


def source_of(obj) -> str | None:
    """The file holding ``obj``'s code (None for code with no file, e.g. typed in a REPL)."""
    try:
        path = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except TypeError:
        target = getattr(obj, "__call__", None)
        try:
            path = inspect.getsourcefile(type(obj)) if target is not None else None
        except TypeError:
            path = None
    return str(Path(path).resolve()) if path and Path(path).is_file() else None


def callable_explainer(name: str, fn: Callable, source: str | None = None) -> type[Explainer]:
    """An explainer class for the plain callable ``fn`` under ``name``."""
    return type(f"Callable[{name}]", (CallableExplainer,),
                {"name": name, "fn": staticmethod(fn), "source_file": source or source_of(fn),
                 "__module__": __name__})


def explainer_class(name: str, method) -> type[Explainer]:
    """``method`` (an ``Explainer`` subclass, or a callable) as an explainer class named ``name``."""
    if inspect.isclass(method) and issubclass(method, Explainer):
        if method.name == name and getattr(method, "source_file", None):
            return method
        return type(method.__name__, (method,), {"name": name, "source_file": source_of(method),
                                                 "__module__": method.__module__})
    if inspect.isclass(method) and _is_captum_class(method):
        raise AttributionError(f"method {name!r} is captum's {method.__name__} class, not a method(model, images, "
                               f"references) -> maps; name it captum:{method.__name__}")
    if callable(method):
        return callable_explainer(name, method)
    raise AttributionError(f"method {name!r} must be an Explainer subclass or a callable method(model, images, "
                           f"references) -> maps, got {type(method).__name__}")


def _is_captum_class(cls) -> bool:
    return any(getattr(c, "__module__", "").startswith("captum.") for c in inspect.getmro(cls))


def import_method(path: str) -> type[Explainer]:
    """The method at ``module.path:callable``, imported because the user named it; one line when
    the module cannot be imported, lacks the name, or it is not callable."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.split(".")[0] == exc.name.split(".")[0] or exc.name == module_name:
            raise AttributionError(
                f"method {path!r}: no module named {module_name!r} to import (put the folder that holds "
                f"{module_name.replace('.', '/')}.py on PYTHONPATH, or install its package)") from None
        raise AttributionError(f"method {path!r}: importing {module_name} failed: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        raise AttributionError(f"method {path!r}: importing {module_name} failed: {type(exc).__name__}: "
                               f"{one_line(exc)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributionError(f"method {path!r}: {module_name} has no {attr!r} "
                                   f"(in {getattr(module, '__file__', module_name)})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AttributionError(f"method {path!r}: {attr} in {module_name} is not callable ({type(obj).__name__}); "
                               "name a function method(model, images, references) -> maps or an Explainer class")
    cls = explainer_class(path, obj)
    if cls.source_file is None and getattr(module, "__file__", None):
        cls.source_file = str(Path(module.__file__).resolve())
    return cls

