"""ONNX face models, converted to hookable PyTorch modules with onnx2torch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import FaceEmbedder, NotAFaceEmbedder, check_input_shape, check_output_shape

#: insightface recognition packs (e.g. ``w600k_r50.onnx``) take RGB (x*255 - 127.5) / 127.5.
ONNX_DEFAULT_MEAN = 0.5
ONNX_DEFAULT_STD = 0.5


def _dims(value_info) -> list[int | str] | None:
    """A graph input's or output's shape: numbers where fixed, names (or "?") where dynamic;
    None when the graph does not say."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


def _shape_text(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _check_graph(model, source: str, input_size) -> tuple[int, int] | None:
    """Refuse (``NotAFaceEmbedder``, one line) a graph whose declared input is not one image batch
    (N, 3, H, W) of a face crop's size or whose declared output is not one embedding (N, D); what
    the graph leaves dynamic is checked by a forward pass after conversion. Returns (H, W) when
    the graph fixes both, else None."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it has {len(inputs)} inputs ({names}), and a face "
                               "embedder takes one image batch (N, 3, H, W)")
    size = None
    dims = _dims(inputs[0])
    if dims is not None:
        if len(dims) != 4:
            raise NotAFaceEmbedder(f"{source} is not a face embedder: its input has shape {_shape_text(dims)}, not an "
                                   "image batch (N, 3, H, W)")
        if _fixed(dims[1]) and dims[1] != 3:
            if dims[3] == 3:
                raise NotAFaceEmbedder(f"{source} takes channels-last images {_shape_text(dims)}; falsify feeds "
                                       "(N, 3, H, W): export the model channels-first")
            raise NotAFaceEmbedder(f"{source} is not a face embedder: it takes {dims[1]}-channel images "
                                   f"{_shape_text(dims)}, and falsify feeds RGB face crops (N, 3, H, W)")
        if _fixed(dims[2]) and _fixed(dims[3]):
            size = (int(dims[2]), int(dims[3]))
            check_input_shape(source, size)
            if input_size is not None and tuple(input_size) != size:
                raise ValueError(f"{source} takes {size[0]}x{size[1]} images (fixed in the graph), but the input "
                                 f"size given is {input_size[0]}x{input_size[1]}; drop --input-size")
    if len(model.graph.output) != 1:
        names = ", ".join(o.name for o in model.graph.output)
        raise NotAFaceEmbedder(f"{source} is not a face embedder falsify can use: it has {len(model.graph.output)} "
                               f"outputs ({names}), and falsify needs one, the embedding (N, D)")
    out = _dims(model.graph.output[0])
    if out is not None and all(_fixed(d) for d in out[1:]):
        check_output_shape(source, out)
    return size


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
    it passed explicitly (a static one must match it). ``mean``/``std`` are in [0, 1] units and
    default to insightface's convention (0.5, 0.5). What the graph declares is checked before
    conversion (``_check_graph``: one (N, 3, H, W) input of a face crop's size, one output, a
    vector when its shape is fixed); ``load_model`` then runs ``check_face_embedder``'s forward
    pass, which also covers dimensions the graph leaves dynamic.
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
    source = f"model {path.name}"
    graph_size = _check_graph(model, source, input_size)
    size = input_size or graph_size
    if size is None:
        raise ValueError(
            f"{path.name} has a dynamic input size; pass input_size=(H, W) "
            "(e.g. (112, 112) for insightface packs)"
        )

    from ..compat import ensure_torchvision_importable

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
