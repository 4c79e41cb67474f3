"""The face-embedder contract every model in falsify follows.

Images enter as float tensors ``(B, 3, H, W)``, RGB in ``[0, 1]``, at ``input_size``; the
embedder applies its own normalisation and returns L2-normalised embeddings ``(B, D)``.
The wrapped network stays an ordinary ``nn.Module`` tree (``self.backbone``) so attribution
methods can hook its layers by name.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _triple(values: float | Sequence[float], what: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"{what} needs one value or three (R, G, B); got {len(vals)}: {vals}")
    return vals  # type: ignore[return-value]


class FaceEmbedder(nn.Module):
    """Wraps a backbone with its preprocessing and L2 normalisation.

    Parameters
    ----------
    backbone:
        ``nn.Module`` mapping the *normalised* input ``(B, 3, H, W)`` to raw embeddings ``(B, D)``.
    input_size:
        ``(H, W)`` the backbone expects.
    mean, std:
        Per-channel (R, G, B) normalisation in ``[0, 1]`` units: the backbone sees
        ``(x[:, c] - mean[c]) / std[c]``.
    channel_order:
        ``"RGB"`` (default) or ``"BGR"``: the order the backbone was trained on (insightface packs
        are BGR). Inputs are always RGB; the embedder flips channels for BGR backbones.
    name:
        A human-readable model name, used in reports and result stores.
    threshold:
        The model's decision threshold on cosine similarity (same identity when cos >= it), if
        known; methods that need the decision (e.g. biometric-gradcam) use it by default.
    cam_layer:
        The layer CAM methods use by default, when the model knows a better one than the last
        ``nn.Conv2d`` (see ``docs/method.md``); ``None`` keeps the generic rule.
    """

    #: the precision the backbone runs in (fp32, bf16, fp16): set it with
    #: ``falsify.models.precision.set_precision``, which refuses one the device cannot run
    precision: str = "fp32"

    def __init__(
        self,
        backbone: nn.Module,
        input_size: tuple[int, int],
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        channel_order: str = "RGB",
        name: str = "custom",
        threshold: float | None = None,
        cam_layer: str | None = None,
    ) -> None:
        super().__init__()
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if len(tuple(input_size)) != 2:
            raise ValueError(f"input_size must be (height, width), got {input_size!r}")
        std_t = _triple(std, "std")
        if any(s == 0 for s in std_t):
            raise ValueError(f"std must be non-zero, got {std_t}")
        self.backbone = backbone
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.channel_order = channel_order
        self.name = name
        self.threshold = threshold
        self.cam_layer = cam_layer
        #: the alignment template (None: a plain resize) and its aligner, set by load_model;
        #: the image loaders take ``aligner`` (falsify.data.load_images(..., align=model.aligner))
        self.align: str | None = None
        self.aligner = None
        self.register_buffer("mean", torch.tensor(_triple(mean, "mean")).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_t).view(1, 3, 1, 1), persistent=False)
        self.eval()

    # -- input checking -------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a float (B, 3, H, W) batch at the model's size."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (B,3,H,W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"images must be float in [0,1], got dtype {x.dtype}; divide uint8 images by 255"
            )
        h, w = self.input_size
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (h, w):
            raise ValueError(
                f"images must have shape (B, 3, {h}, {w}) for model {self.name!r}, got "
                f"{tuple(x.shape)}; load them with falsify.data.load_image(path, size={self.input_size})"
            )

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.channel_order == "BGR":
            x = x.flip(1)
        return x

    # -- embeddings -----------------------------------------------------------------------
    def embed_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before L2 normalisation, ``(B, D)``. The backbone runs in
        :attr:`precision` (``falsify.models.precision``); a low-precision output returns as float32."""
        self.check_input(x)
        if self.precision == "fp32":
            return self.backbone(self.normalise_input(x)).flatten(1)
        from .precision import autocast

        with autocast(self.precision, x.device):
            out = self.backbone(self.normalise_input(x))
        return out.flatten(1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_raw(x), dim=1)

    @property
    def embedding_dim(self) -> int:
        dim = getattr(self, "_embedding_dim", None)
        if dim is None:
            with torch.inference_mode():
                dim = int(self(torch.zeros(1, 3, *self.input_size, device=model_device(self))).shape[1])
            self._embedding_dim = dim
        return dim

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, channel_order={self.channel_order}"
        )


def weights_version(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``module`` is replaced, moved or changed in place
    (its tensors' storage, version counter, device and dtype): the key of caches derived from the
    weights (dlib's fused inference weights, the path methods' embeddings)."""
    return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in (*module.parameters(), *module.buffers()))


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def wrap_model(
    module: nn.Module,
    input_size: tuple[int, int],
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    channel_order: str = "RGB",
    name: str | None = None,
) -> FaceEmbedder:
    """Wrap a user's own ``nn.Module`` (normalised input -> embedding) with its preprocessing.

    >>> model = wrap_model(my_net, input_size=(112, 112), mean=0.5, std=0.5)
    """
    if isinstance(module, FaceEmbedder):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap_model needs a torch.nn.Module, got {type(module).__name__}")
    return FaceEmbedder(
        module,
        input_size=input_size,
        mean=mean,
        std=std,
        channel_order=channel_order,
        name=name or type(module).__name__,
    )


def randomise_(module: nn.Module, gen: torch.Generator) -> None:
    """Redraw every parameter of ``module`` in place: its own mean + its own std x N(0, 1)
    (std 1 for scalars and constant tensors), as the cascading sanity check does per stage."""
    with torch.no_grad():
        for p in module.parameters():
            std = float(p.std()) if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            p.copy_(float(p.mean()) + (std if std > 0 else 1.0) * noise)


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with all weights redrawn (seeded): a network that knows no faces,
    for control maps (``METHOD@random-model``: computed on it, tested on the real model)."""
    work = copy.deepcopy(model).eval()
    randomise_(work, torch.Generator().manual_seed(seed))
    if hasattr(work, "name"):
        work.name = f"{model.name}:random"
    return work


# -- is it a face embedder? ---------------------------------------------------------------------

#: The input sizes and embedding lengths a model must have for falsify to take it as a face
#: embedder (``check_face_embedder``; docs/method.md, "Models falsify accepts"). Published face
#: embedders take crops of 96 to 224 pixels a side (OpenFace 96, SphereFace 112x96, ArcFace and
#: SFace 112, dlib 150, FaceNet 160, VGG-Face 224) and return 64 to 4096 numbers (FaceNet's
#: smallest variant 64, dlib and SFace 128, ArcFace 512, VGG-Face 4096).
MIN_INPUT_SIDE = 32
MAX_INPUT_SIDE = 1024
MIN_EMBEDDING_DIM = 16


class NotAFaceEmbedder(ValueError):
    """A model whose input is not an image of a face crop's size or whose output is not one
    embedding vector per image; the message (one line) says which."""


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def check_input_shape(source: str, size: Sequence[int]) -> None:
    """Refuse (``NotAFaceEmbedder``) an input size (H, W) that is not a face crop's: each side in
    [MIN_INPUT_SIDE, MAX_INPUT_SIDE]."""
    h, w = (int(v) for v in size)
    if not (MIN_INPUT_SIDE <= h <= MAX_INPUT_SIDE and MIN_INPUT_SIDE <= w <= MAX_INPUT_SIDE):
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it takes {h}x{w} images, and falsify needs face "
                               f"crops of {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} pixels a side (face embedders take "
                               "96 to 224)")


def check_output_shape(source: str, shape: Sequence[int | str], batch: int | None = None) -> int:
    """The embedding length of an output of ``shape`` (batch first; the batch may be a name, as
    an ONNX graph declares it), or ``NotAFaceEmbedder`` unless it is one vector of at least
    MIN_EMBEDDING_DIM numbers per image: ``(B, D)``, or ``(B, D, 1, 1)`` (a 1x1 convolution head;
    trailing 1s are dropped). ``batch``: the batch the output must have (None: not checked)."""
    shape = tuple(shape)
    shown = "(" + ", ".join(str(d) for d in shape) + ")"
    if len(shape) < 2 or (batch is not None and shape[0] != batch):
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it returns shape {shown} for "
                               f"{batch or 'a batch of'} images, not one embedding per image (B, D)")
    per_image = tuple(int(d) for d in shape[1:])
    while len(per_image) > 1 and per_image[-1] == 1:
        per_image = per_image[:-1]
    if len(per_image) != 1:
        what = "feature map" if len(per_image) >= 2 else "tensor"
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it outputs a {'x'.join(map(str, per_image))} "
                               f"{what} per image (shape {shown}), not an embedding vector (B, D)")
    dim = per_image[0]
    if dim < MIN_EMBEDDING_DIM:
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it outputs {dim} number{'s' * (dim != 1)} per image "
                               f"(a classifier's or regressor's head?), and a face embedding has at least "
                               f"{MIN_EMBEDDING_DIM} (face embedders: 64 to 4096)")
    return dim


def check_face_embedder(model: FaceEmbedder, source: str | None = None) -> int:
    """Refuse, with one line (``NotAFaceEmbedder``), a model that is not a face embedder falsify
    can use; return its embedding length.

    Its ``input_size`` must be a face crop's (``check_input_shape``), and one forward pass of two
    zero images (on the model's device, without gradients) must give one finite embedding vector
    per image (``check_output_shape``): the backbone's output before the embedder flattens it, so
    a feature map is not taken for a vector. A backbone that fails on a (2, 3, H, W) batch (e.g.
    one made for 1-channel images) is refused with its error. The pass runs in eval mode (each
    module's mode is restored after it), so it changes nothing in the model.
    """
    source = source or f"model {getattr(model, 'name', type(model).__name__)!r}"
    check_input_shape(source, model.input_size)
    h, w = model.input_size
    x = torch.zeros(2, 3, h, w, device=model_device(model))
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the pass must not update BatchNorm statistics or draw dropout masks
    try:
        with torch.no_grad():
            if type(model).embed_raw is FaceEmbedder.embed_raw:  # the backbone's own output, not flattened
                out = model.backbone(model.normalise_input(x))
            else:  # a subclass computes its embedding itself
                out = model.embed_raw(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's network is the message
        raise NotAFaceEmbedder(f"{source} is not a face embedder falsify can use: it fails on two zero images "
                               f"(2, 3, {h}, {w}): {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        for m, training in modes.items():
            m.training = training
    if not isinstance(out, torch.Tensor):
        what = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise NotAFaceEmbedder(f"{source} is not a face embedder: it returns {what}, not one embedding tensor (B, D)")
    dim = check_output_shape(source, out.shape, batch=2)
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise NotAFaceEmbedder(f"{source} is not a face embedder falsify can use: its output on zero images is "
                               f"{'not float' if not out.is_floating_point() else 'not finite (NaN or inf)'}")
    model._embedding_dim = dim
    return dim
