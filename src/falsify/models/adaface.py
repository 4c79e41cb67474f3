"""AdaFace's IR networks (mk-minchul/AdaFace ``net.py``, MIT), for its released checkpoints.

AdaFace (Kim et al., CVPR 2022) trains insightface-style IR ResNets, but with its own module
tree, which this module reproduces key for key:

    input_layer: Conv 3x3 3->64, BatchNorm, PReLU                      112 x 112
    body.i: BasicBlockIR, stages of 64, 128, 256, 512 channels (``ADAFACE_BLOCKS``); the first
        block of each stage has stride 2
        res_layer:      BN, Conv 3x3, BN, PReLU, Conv 3x3 (the stride), BN
        shortcut_layer: MaxPool2d(1, stride) (subsampling, no weights) when the width is
                        unchanged, else (Conv 1x1 with the stride, BN)        -> 512 x 7 x 7
    output_layer: BatchNorm2d, Dropout(0.4), Flatten, Linear 25088->512,
                  BatchNorm1d(affine=False)                                 -> the 512-d embedding

AdaFace's network returns the unit embedding and its norm; here the backbone returns the raw
embedding and :class:`~falsify.models.base.FaceEmbedder` normalises it, as for every model.
Its input is BGR (``cv2`` order) normalised to ``(x - 0.5) / 0.5``, on faces aligned to the
ArcFace five points (AdaFace's MTCNN alignment uses the same reference points at 112x112).

Checkpoints: AdaFace publishes PyTorch Lightning ``.ckpt`` files; the network's tensors sit in
``ckpt["state_dict"]`` under ``model.`` (beside ``head.*`` and the training state).
:mod:`falsify.models.checkpoints` reads them with ``weights_only=True``: that succeeds when
the file holds only tensors and plain containers, and is refused otherwise (nothing in it is
unpickled as code).
"""
from __future__ import annotations

import torch
import torch.nn as nn

#: blocks per stage of AdaFace's ``ir_18``, ``ir_34``, ``ir_50`` and ``ir_101`` (net.py's
#: ``get_blocks``; ``ir_101`` is its 100-layer configuration)
ADAFACE_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "adaface-ir18": (2, 2, 2, 2),
    "adaface-ir34": (3, 4, 6, 3),
    "adaface-ir50": (3, 4, 14, 3),
    "adaface-ir101": (3, 13, 30, 3),
}
ADAFACE_INPUT_SIZE = (112, 112)
_WIDTHS = (64, 128, 256, 512)


class BasicBlockIR(nn.Module):
    """``res_layer(x) + shortcut_layer(x)``; the stride sits in the second convolution."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(nn.Module):
    """AdaFace's IR backbone on normalised BGR ``(B, 3, 112, 112)`` -> raw ``(B, 512)``."""

    def __init__(self, blocks: tuple[int, int, int, int], embedding_dim: int = 512) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"AdaFaceIR takes four stage depths >= 1, got {blocks}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, _WIDTHS[0], 3, stride=1, padding=1, bias=False),
                                         nn.BatchNorm2d(_WIDTHS[0]), nn.PReLU(_WIDTHS[0]))
        units, cin = [], _WIDTHS[0]
        for width, n in zip(_WIDTHS, blocks):
            units += [BasicBlockIR(cin, width, 2)] + [BasicBlockIR(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*units)
        h, w = ADAFACE_INPUT_SIZE
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(1),
            nn.Linear(cin * (h // 16) * (w // 16), embedding_dim), nn.BatchNorm1d(embedding_dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def adaface_ir(name: str) -> AdaFaceIR:
    """AdaFace's IR network ``name`` (``"adaface-ir50"``, ...), with PyTorch's default init."""
    if name not in ADAFACE_BLOCKS:
        raise ValueError(f"unknown AdaFace network {name!r}; choose from {', '.join(ADAFACE_BLOCKS)}")
    return AdaFaceIR(ADAFACE_BLOCKS[name])


__all__ = ["ADAFACE_BLOCKS", "ADAFACE_INPUT_SIZE", "AdaFaceIR", "BasicBlockIR", "adaface_ir"]
