"""What ``falsify models`` prints: the built-in models and the architectures of ``ARCH:CHECKPOINT``."""
from __future__ import annotations

import dataclasses
import json
import textwrap

from ..choices import RANDOM_SUFFIX
from .checkpoints import ARCHITECTURES, FAMILIES


def models_table() -> str:
    """The built-in models, as ``falsify models`` prints them."""
    from . import MODELS

    lines = []
    for info in MODELS.values():
        h, w = info.input_size
        lines += [
            f"{info.name}",
            f"  {info.description}",
            f"  input        {h}x{w} RGB; alignment {info.align} (--align auto)",
            f"  embedding    {info.embedding_dim}-d, L2-normalised",
            f"  source       {info.source}",
            f"  licence      {info.licence}",
            "  measured on the shared LFW sample (falsify verify, 3 folds; docs/results.md):",
        ]
        for align in sorted(set(info.thresholds) | set(info.accuracy), key=lambda a: a != info.align):
            acc = info.accuracy.get(align)
            th = info.thresholds.get(align)
            lines.append(f"    --align {align:<12} accuracy {'n/a' if acc is None else f'{acc:.2%}'}, "
                         f"threshold cos >= {'n/a' if th is None else f'{th:.4f}'}"
                         + ("  (default)" if align == info.align else ""))
        lines.append(f"  {info.name}{RANDOM_SUFFIX}: the same network with every weight redrawn (seed 0), a control")
        lines.append("")
    lines += architectures_table()
    lines.append("Any other model: a path to an .onnx, a dlib .dat, or a .pt/.pth (--trust-pickle); see --help.")
    return "\n".join(lines)


def architectures_table() -> list[str]:
    """The architectures of ``--model ARCH:CHECKPOINT``, one block per family."""
    lines = [
        "Your own checkpoints: --model ARCH:CHECKPOINT (e.g. iresnet50:/path/backbone.pth). The file is read with",
        "torch.load(weights_only=True): tensors and plain values only, nothing unpickled as code, every key and shape",
        "checked. There is no published threshold for your weights: falsify run and falsify test calibrate one on",
        "the data, falsify verify prints the best one on its pairs. ARCH:CHECKPOINT:random is the randomised control.",
        "",
    ]

    def field(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, 112, initial_indent=f"  {label:<13}", subsequent_indent=" " * 15,
                             break_on_hyphens=False, break_long_words=False)

    for family, title in FAMILIES.items():
        archs = [a for a in ARCHITECTURES.values() if a.family == family]
        a = archs[0]
        h, w = a.input_size
        cams = " / ".join(dict.fromkeys(x.cam_layer for x in archs))
        lines += [", ".join(x.name for x in archs), f"  {title}"]
        if a.blocks:
            lines += field("blocks", "; ".join(f"{x.name} {'-'.join(map(str, x.blocks))}" for x in archs))
        lines += [
            *field("input", f"{h}x{w}; alignment {a.align} (--align auto): {a.alignment_note}"),
            *field("normalised", a.normalisation),
            *field("embedding", f"{a.embedding_dim}-d, L2-normalised"),
            *field("checkpoint", a.checkpoint),
            *field("CAM layer", f"{cams}: {a.cam_note}"),
            *field("key names", a.source),
            "",
        ]
    return lines


def models_json() -> str:
    """The built-in models and the architectures, as ``falsify models --json`` prints them."""
    from . import MODELS

    return json.dumps([{"kind": "model", **dataclasses.asdict(i)} for i in MODELS.values()]
                      + [{"kind": "architecture", **dataclasses.asdict(a)} for a in ARCHITECTURES.values()], indent=2)
