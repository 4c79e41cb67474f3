"""insightface's IResNet (``arcface_torch``), for the checkpoints researchers train with it.

``arcface_torch`` (deepinsight/insightface, ``recognition/arcface_torch/backbones/iresnet.py``,
MIT) saves ``backbone.pth`` as ``torch.save(backbone.state_dict())``: a dict of tensors whose
names this module reproduces, so that such a file loads with
``torch.load(path, weights_only=True)`` into :class:`IResNet` and nothing in it is unpickled as
code. The network, on ArcFace-aligned 112x112 faces normalised to ``(x - 0.5) / 0.5`` (RGB,
``x`` in [0, 1]):

    conv1 3x3 3->64, bn1, prelu                                       112 x 112
    layer1..layer4: 64, 128, 256, 512 channels; each stage halves the grid in its first block
        block: bn1, conv1 3x3, bn2, prelu, conv2 3x3 (the stage's stride), bn3, + shortcut
        the shortcut of a stage's first block is downsample = (1x1 conv with the stride, BN);
        of the others, the block's input                          -> 512 x 7 x 7
    bn2, flatten, fc 25088->512, features (BatchNorm1d)              -> the 512-d embedding

The number of blocks per stage names the depth (``IRESNET_BLOCKS``). Every BatchNorm has
eps 1e-5. ``arcface_torch``'s dropout before ``fc`` is the identity at inference and holds no
weights, so it is left out. A block adds its shortcut out of place (``out + shortcut``), so the
output of any layer can be hooked by the CAM methods.
"""
from __future__ import annotations

import torch
import torch.nn as nn

#: blocks per stage (layer1..layer4) of each depth, as arcface_torch defines them
IRESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
IRESNET_INPUT_SIZE = (112, 112)
_WIDTHS = (64, 128, 256, 512)
_EPS = 1e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_EPS)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN, plus the
    shortcut (``downsample`` when the block changes the grid or the width, else the input)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = _bn(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False)
        self.bn3 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """IResNet on normalised ``(B, 3, 112, 112)`` input -> raw ``(B, 512)`` embedding.

    ``blocks``: blocks in layer1..layer4 (``IRESNET_BLOCKS``). Modules are registered in
    ``arcface_torch``'s order, so ``state_dict()`` lists its keys as its checkpoints do.
    """

    def __init__(self, blocks: tuple[int, int, int, int], embedding_dim: int = 512) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"IResNet takes four stage depths >= 1, got {blocks}")
        self.conv1 = nn.Conv2d(3, _WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = _bn(_WIDTHS[0])
        self.prelu = nn.PReLU(_WIDTHS[0])
        cin = _WIDTHS[0]
        for i, (width, n) in enumerate(zip(_WIDTHS, blocks), start=1):
            stage = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            cin = width
        self.bn2 = _bn(cin)
        h, w = IRESNET_INPUT_SIZE
        self.fc = nn.Linear(cin * (h // 16) * (w // 16), embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def iresnet(name: str) -> IResNet:
    """The IResNet of depth ``name`` (``"iresnet50"``, ...), with PyTorch's default init."""
    if name not in IRESNET_BLOCKS:
        raise ValueError(f"unknown IResNet {name!r}; choose from {', '.join(IRESNET_BLOCKS)}")
    return IResNet(IRESNET_BLOCKS[name])


__all__ = ["IBasicBlock", "IRESNET_BLOCKS", "IRESNET_INPUT_SIZE", "IResNet", "iresnet"]
