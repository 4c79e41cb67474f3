"""ONNX face models, converted to hookable PyTorch modules with onnx2torch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import FaceEmbedder

#: insightface recognition packs (e.g. ``w600k_r50.onnx``) take RGB (x*255 - 127.5) / 127.5.
ONNX_DEFAULT_MEAN = 0.5
ONNX_DEFAULT_STD = 0.5


def _static_input_size(model) -> tuple[int, int] | None:
    """(H, W) from the graph's first real input when both are fixed numbers, else None."""
    initializers = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 4:
            return None
        h, w = dims[2].dim_value, dims[3].dim_value
        return (int(h), int(w)) if h > 0 and w > 0 else None
    return None


def load_onnx(
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    mean: float | Sequence[float] = ONNX_DEFAULT_MEAN,
    std: float | Sequence[float] = ONNX_DEFAULT_STD,
    channel_order: str = "RGB",
    name: str | None = None,
) -> FaceEmbedder:
    """Load an ONNX face embedder as a ``FaceEmbedder`` whose layers are real ``nn.Conv2d``.

    ``input_size`` defaults to the graph's static input size; a graph with a dynamic size needs
    it passed explicitly. ``mean``/``std`` are in [0, 1] units and default to insightface's
    convention (0.5, 0.5).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, ...
        raise ValueError(
            f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).strip()[:200]}). "
            "Pass the .onnx file of a face recognition network, e.g. insightface's w600k_r50.onnx."
        ) from None
    size = input_size or _static_input_size(model)
    if size is None:
        raise ValueError(
            f"{path.name} has a dynamic input size; pass input_size=(H, W) "
            "(e.g. (112, 112) for insightface packs)"
        )

    from .._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        from onnx2torch import convert
    except ImportError:
        raise ImportError(
            "ONNX models need onnx2torch: pip install --no-deps onnx2torch"
        ) from None
    try:
        backbone = convert(model)
    except NotImplementedError as exc:
        raise ValueError(f"onnx2torch cannot convert {path.name}: {exc}") from None
    return FaceEmbedder(
        backbone,
        input_size=size,
        mean=mean,
        std=std,
        channel_order=channel_order,
        name=name or path.stem,
    )
