"""One parsed model name: :class:`ModelSpec`.

``--model`` (and ``models`` of experiment 6.4) takes a built-in name (``dlib-resnet``, its alias
``dlib``, ``sface``), ``ARCH:PATH`` (a checkpoint of one of ``CHECKPOINT_ARCHS``), a model file
(``.dat``, ``.onnx``, ``.pt``/``.pth``), each optionally followed by ``:random`` (the randomised
control), and an alignment (``--align``). The text is parsed here once; the loader, the alignment,
the model's file and experiment 6.4 read the fields of the result.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..choices import (ALIGN_CHOICES, CHECKPOINT_ARCHS, MODEL_ALIASES, MODEL_NAMES, RANDOM_SUFFIX, split_checkpoint,
                       unknown_architecture)

#: the suffixes of the model files falsify loads
MODEL_FILE_SUFFIXES = (".dat", ".onnx", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    """A model name, parsed: ``ModelSpec.parse("iresnet50:/w/backbone.pth:random")`` has ``arch``
    ``iresnet50``, ``path`` ``/w/backbone.pth``, ``random`` True and ``base``
    ``iresnet50:/w/backbone.pth``."""

    name: str  # as given
    base: str  # without ":random"
    random: bool = False  # NAME:random: the same architecture with every weight redrawn
    builtin: str | None = None  # the built-in model it names (aliases resolved)
    arch: str | None = None  # ARCH of ARCH:PATH, or a bare architecture name given without weights
    path: str | None = None  # PATH of ARCH:PATH, or the model file (any other name with a suffix)
    align: str = "auto"  # the alignment asked for (auto: the model's own)

    @classmethod
    def parse(cls, name: "str | Path | ModelSpec", align: str | None = None) -> "ModelSpec":
        """``name`` parsed (a ``ModelSpec`` is returned as it is, with ``align`` when given)."""
        if isinstance(name, ModelSpec):
            return name if align is None else replace(name, align=align)
        text = str(name)
        random = text.endswith(RANDOM_SUFFIX) and text != RANDOM_SUFFIX
        base = text[: -len(RANDOM_SUFFIX)] if random else text
        checkpoint = split_checkpoint(base)
        key = MODEL_ALIASES.get(base, base)
        if checkpoint is not None:
            arch, path = checkpoint
        elif key in CHECKPOINT_ARCHS:
            arch, path = key, None
        else:
            arch, path = None, base if key not in MODEL_NAMES and Path(base).suffix else None
        return cls(text, base, random, key if key in MODEL_NAMES else None, arch, path, align or "auto")

    @property
    def checkpoint(self) -> tuple[str, str] | None:
        """``(ARCH, PATH)`` of a checkpoint, else None."""
        return (self.arch, self.path) if self.arch is not None and self.path is not None else None

    @property
    def bare_arch(self) -> bool:
        """An architecture named without its checkpoint (``iresnet50``): nothing to load."""
        return self.arch is not None and self.path is None

    @property
    def file(self) -> Path | None:
        """The file named: the checkpoint of ``ARCH:PATH`` (None when PATH is empty), or a model file
        given by path with one of ``MODEL_FILE_SUFFIXES``; None for a built-in name."""
        if self.checkpoint is not None:
            return Path(self.path).expanduser() if self.path.strip() else None
        if self.path is None or Path(self.path).suffix.lower() not in MODEL_FILE_SUFFIXES:
            return None
        return Path(self.path).expanduser()

    @property
    def is_dlib_file(self) -> bool:
        """A dlib ``.dat`` network file (it is dlib-resnet's architecture, with dlib-resnet's defaults)."""
        return self.path is not None and self.checkpoint is None and Path(self.path).suffix.lower() == ".dat"

    def check(self) -> None:
        """Refuse, in one line, a name that cannot name a model whatever the files: an unknown
        architecture in ``ARCH:PATH`` (a typo), an alignment falsify does not have, and ``:random``
        after an architecture without weights or after a name that is neither built in nor a file."""
        typo = unknown_architecture(self.name)
        if typo is not None:  # iresnet51:PATH: the architectures, never "model file not found"
            raise ValueError(typo)
        if self.align not in ALIGN_CHOICES:
            raise ValueError(f"unknown alignment {self.align!r}; choose from {', '.join(ALIGN_CHOICES)}")
        if not self.random:
            return
        if self.bare_arch:
            raise ValueError(f"{self.name}: {self.base} is an architecture without weights; give its checkpoint: "
                             f"{self.base}:/path/to/checkpoint{RANDOM_SUFFIX}")
        if self.builtin is None and self.path is None:
            raise ValueError(f"unknown model {self.base!r} in {self.name!r}: use one of "
                             f"{', '.join(sorted(MODEL_NAMES))} or a model file, followed by {RANDOM_SUFFIX}")
