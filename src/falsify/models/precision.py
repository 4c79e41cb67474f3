"""The precision a model's network runs in: ``fp32`` (the default), ``bf16`` or ``fp16``.

Only the network runs in low precision: :class:`~falsify.models.base.FaceEmbedder` runs its
backbone under ``torch.autocast`` (:func:`autocast`) and returns the raw embedding as float32,
so the L2 normalisation, the distances, angles and statistics stay float32 (or float64, where
the code asks for it). Attribution methods run the model as callers do, so their gradients run
under it too. The hand-written fast paths (dlib's fused inference, SFace's folded slices) obey it:
dlib's calls ``F.conv2d``, which autocast casts; SFace's casts its folded weights and input to the
autocast dtype itself.

Where each precision runs (:func:`precision_problem` says why not, in one line):

- ``fp32``: everywhere.
- ``bf16``: on CUDA devices that support it (``torch.cuda.is_bf16_supported()``), and on CPUs
  with bfloat16 units (AMX or AVX512-BF16 on x86, the ``bf16`` feature on Arm), read from
  ``/proc/cpuinfo``. A CPU without them would emulate bfloat16, slower than float32.
- ``fp16``: on CUDA. Refused on the CPU: oneDNN has float16 kernels only for AMX-FP16 and
  AVX512-FP16 CPUs, and falsify has measured none (docs/results.md, "Precision").
"""
from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

from ..choices import PRECISIONS
DEFAULT_PRECISION = "fp32"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: /proc/cpuinfo flags that mean bfloat16 arithmetic in hardware, and what to call them
_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "BF16 (Arm)"}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``) from /proc/cpuinfo; empty where
    there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_units() -> str | None:
    """The CPU's bfloat16 units (``"AMX"``, ``"AVX512-BF16"``, ...), or None when it has none."""
    flags = _cpu_flags()
    found = [name for flag, name in _BF16_FLAGS.items() if flag in flags]
    return " and ".join(found) or None


def precision_problem(precision: str, device: str | torch.device = "cpu") -> str | None:
    """Why ``precision`` cannot run on ``device`` here (one line naming the fix), or None."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
    if precision == "fp32":
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "--precision bf16: this CUDA device has no bfloat16 support; use --precision fp16 or fp32"
        return None
    if dev.type != "cpu":
        return f"--precision {precision} runs on CUDA or on a CPU with bfloat16 units, not on {dev.type}; use --precision fp32"
    if precision == "fp16":
        units = cpu_bf16_units()
        return ("--precision fp16 runs on CUDA only (float16 on the CPU is emulated or unmeasured); use "
                + (f"--precision bf16 (this CPU has {units}) or fp32" if units else "--precision fp32"))
    if cpu_bf16_units() is None:
        return (f"--precision bf16 needs a CPU with bfloat16 units (AMX or AVX512-BF16), and this one "
                f"({platform.processor() or platform.machine()}) has none: bfloat16 would be emulated, slower than "
                "fp32; use --precision fp32")
    return None


def check_precision(precision: str, device: str | torch.device = "cpu") -> None:
    """Raise ``ValueError`` (one line) unless ``precision`` can run on ``device`` here."""
    problem = precision_problem(precision, device)
    if problem:
        raise ValueError(problem)


def autocast(precision: str, device: str | torch.device):
    """The context the network runs under: ``torch.autocast`` to the precision's dtype on the
    device's type, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def set_precision(model, precision: str):
    """Make ``model`` (a ``FaceEmbedder``) run its network in ``precision`` from now on; refused
    (``ValueError``, one line) where it cannot run on the model's device. Returns the model."""
    weight = next(model.parameters(), None)
    check_precision(precision, weight.device if weight is not None else "cpu")
    model.precision = precision
    return model


__all__ = ["DEFAULT_PRECISION", "DTYPES", "PRECISIONS", "autocast", "check_precision", "cpu_bf16_units",
           "precision_problem", "set_precision"]
