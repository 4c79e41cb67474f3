"""Compatibility shims for optional third-party packages."""
from __future__ import annotations

import importlib
import sys
import types


def _unavailable(name: str):
    def fn(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.{name} was called, but torchvision is not usable in this environment "
            "(falsify runs on the CPU torch build without torchvision). The model uses an "
            "operator (e.g. NMS or RoIAlign) that face embedders do not need."
        )

    return fn


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` succeed for packages that import it but do not need it.

    onnx2torch (NMS/RoIAlign converters) and pytorch-grad-cam (image utilities) import
    torchvision at module level, yet neither path that falsify uses touches it, and PyPI's
    torchvision cannot be loaded beside the pinned CPU torch build. When the real package
    imports, it is used; otherwise a stub module whose functions raise a clear error is
    registered. Returns True when the real torchvision is available.
    """
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]

    class _Stub(types.ModuleType):
        def __getattr__(self, attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            if attr[:1].isupper():  # classes such as Compose, Normalize
                return _unavailable(f"{self.__name__[len('torchvision.'):]}.{attr}".strip("."))
            return _unavailable(attr)

    for name in (
        "torchvision",
        "torchvision.ops",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ):
        mod = _Stub(name)
        mod.__falsify_stub__ = True  # type: ignore[attr-defined]
        sys.modules[name] = mod
    sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]  # type: ignore[attr-defined]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    sys.modules["torchvision.transforms"].functional = sys.modules[  # type: ignore[attr-defined]
        "torchvision.transforms.functional"
    ]
    return False
