"""FaceNet's Inception-ResNet-v1, with facenet-pytorch's module names, for its checkpoints.

facenet-pytorch (timesler/facenet-pytorch, MIT) ports David Sandberg's TensorFlow FaceNet
models; its weights, e.g. ``20180402-114759-vggface2.pt``, are state dicts of its
``InceptionResnetV1``, whose key names :class:`InceptionResnetV1` here reproduces so that the
file loads with ``torch.load(path, weights_only=True)``. The released files also hold the
training classifier (``logits.weight``, ``logits.bias``: 8631 VGGFace2 identities), which is
no part of the embedding and is ignored.

Every ``BasicConv2d`` is Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, named ``conv``,
``bn``, ``relu``. On a 160x160 input:

    conv2d_1a 3x3/2 3->32, conv2d_2a 3x3 32->32, conv2d_2b 3x3 pad 1 32->64, maxpool_3a 3/2,
    conv2d_3b 1x1 64->80, conv2d_4a 3x3 80->192, conv2d_4b 3x3/2 192->256        256 x 17 x 17
    repeat_1: 5 x Block35 (scale 0.17)                                            256 x 17 x 17
    mixed_6a (3x3/2 convolutions and a max pool, concatenated)                    896 x 8 x 8
    repeat_2: 10 x Block17 (scale 0.10)                                           896 x 8 x 8
    mixed_7a                                                                     1792 x 3 x 3
    repeat_3: 5 x Block8 (scale 0.20); block8: Block8 (scale 1, no ReLU)         1792 x 3 x 3
    avgpool_1a, dropout, last_linear 1792->512 (no bias), last_bn (BatchNorm1d, eps 1e-3)

A residual block concatenates its branches (``branch0``, ``branch1``, ...), maps them back to
its input width with a 1x1 convolution ``conv2d`` (with bias), and returns
``relu(conv2d(...) * scale + x)``. Input: RGB, facenet-pytorch's fixed standardisation
``(255 x - 127.5) / 128``. facenet-pytorch's own forward ends in an L2 normalisation, which
:class:`~falsify.models.base.FaceEmbedder` applies here.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

FACENET_INPUT_SIZE = (160, 160)
#: facenet-pytorch's ``fixed_image_standardization``, (255 x - 127.5) / 128, in [0, 1] units
FACENET_MEAN = 127.5 / 255.0
FACENET_STD = 128.0 / 255.0


class BasicConv2d(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` (eps 1e-3) -> ``relu``."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
            bn=nn.BatchNorm2d(cout, eps=1e-3),
            relu=nn.ReLU(),
        ))


def _chain(*convs: tuple) -> nn.Module:
    """One ``BasicConv2d`` for a single spec, an ``nn.Sequential`` of them for several."""
    layers = [BasicConv2d(*spec) for spec in convs]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class _Concat(nn.Module):
    """Runs ``branch0``, ``branch1``, ... on the same input and concatenates them (channels)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.n_branches = len(branches)
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches(x)


class _Residual(_Concat):
    """``relu(conv2d(concat(branches(x))) * scale + x)`` (no ReLU when ``relu=False``)."""

    def __init__(self, width: int, branches: list[nn.Module], concat: int, scale: float, relu: bool = True) -> None:
        super().__init__(branches)
        self.scale = float(scale)
        self.conv2d = nn.Conv2d(concat, width, 1)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(self.branches(x)) * self.scale + x
        return out if self.relu is None else self.relu(out)


def block35(scale: float = 0.17) -> _Residual:
    """The 17x17 (35x35 in Inception's 299 input) block: three branches of 32 channels."""
    return _Residual(256, [
        _chain((256, 32, 1)),
        _chain((256, 32, 1), (32, 32, 3, 1, 1)),
        _chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1)),
    ], concat=96, scale=scale)


def block17(scale: float = 0.10) -> _Residual:
    """The 8x8 block: a 1x1 branch and a factorised 1x7 / 7x1 branch of 128 channels."""
    return _Residual(896, [
        _chain((896, 128, 1)),
        _chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)), (128, 128, (7, 1), 1, (3, 0))),
    ], concat=256, scale=scale)


def block8(scale: float = 0.20, relu: bool = True) -> _Residual:
    """The 3x3 block: a 1x1 branch and a factorised 1x3 / 3x1 branch of 192 channels."""
    return _Residual(1792, [
        _chain((1792, 192, 1)),
        _chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)), (192, 192, (3, 1), 1, (1, 0))),
    ], concat=384, scale=scale, relu=relu)


def mixed_6a() -> _Concat:
    """17x17 -> 8x8: 384 + 256 strided convolution channels and the 256 max-pooled ones."""
    return _Concat([
        _chain((256, 384, 3, 2)),
        _chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2)),
        nn.MaxPool2d(3, stride=2),
    ])


def mixed_7a() -> _Concat:
    """8x8 -> 3x3: 384 + 256 + 256 strided convolution channels and the 896 max-pooled ones."""
    return _Concat([
        _chain((896, 256, 1), (256, 384, 3, 2)),
        _chain((896, 256, 1), (256, 256, 3, 2)),
        _chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2)),
        nn.MaxPool2d(3, stride=2),
    ])


class InceptionResnetV1(nn.Module):
    """Inception-ResNet-v1 on standardised ``(B, 3, 160, 160)`` RGB -> raw ``(B, 512)``."""

    def __init__(self, embedding_dim: int = 512) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(block35() for _ in range(5)))
        self.mixed_6a = mixed_6a()
        self.repeat_2 = nn.Sequential(*(block17() for _ in range(10)))
        self.mixed_7a = mixed_7a()
        self.repeat_3 = nn.Sequential(*(block8() for _ in range(5)))
        self.block8 = block8(scale=1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.6)
        self.last_linear = nn.Linear(1792, embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b,
                      self.conv2d_4a, self.conv2d_4b, self.repeat_1, self.mixed_6a, self.repeat_2,
                      self.mixed_7a, self.repeat_3, self.block8, self.avgpool_1a):
            x = stage(x)
        return self.last_bn(self.last_linear(self.dropout(torch.flatten(x, 1))))


__all__ = ["BasicConv2d", "FACENET_INPUT_SIZE", "FACENET_MEAN", "FACENET_STD", "InceptionResnetV1"]
