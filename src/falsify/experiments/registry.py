"""The experiments ``falsify run`` knows, in the order the report shows them.

``falsify run NAME`` takes its runner from here, ``falsify report`` and the report page iterate
over these; adding an experiment is one module under ``falsify/experiments`` (and its template
under ``falsify/report/templates``) plus its line below and its name in ``falsify.choices``.
Importing this module does not import torch.
"""
from __future__ import annotations

from typing import Mapping

from ..choices import EXPERIMENTS as NAMES
from . import exp_6_1, exp_6_2, exp_6_3, exp_6_4, exp_6_5, exp_6_6, validity
from .base import Experiment

#: name -> experiment, in report order
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (exp_6_1.EXPERIMENT, exp_6_2.EXPERIMENT, exp_6_3.EXPERIMENT, exp_6_4.EXPERIMENT, exp_6_5.EXPERIMENT,
                      exp_6_6.EXPERIMENT, validity.EXPERIMENT)
}

if tuple(EXPERIMENTS) != NAMES:  # pragma: no cover - a programming error, caught by the tests too
    raise RuntimeError(f"falsify.choices.EXPERIMENTS {NAMES} and the registry {tuple(EXPERIMENTS)} differ")


def get(name: str) -> Experiment:
    """The experiment called ``name`` (``ValueError`` naming the choices otherwise)."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}") from None


def of_summary(summary: Mapping) -> Experiment:
    """The experiment whose run wrote ``summary`` (6.1 when it does not say)."""
    return EXPERIMENTS.get(str(summary.get("experiment") or "6.1"), EXPERIMENTS["6.1"])


def experiments_in(summary: Mapping) -> list[Experiment]:
    """The experiments whose sections ``summary`` holds, in report order."""
    return [e for e in EXPERIMENTS.values() if e.present(summary)]
