"""Model-randomisation sanity check (Adebayo et al., 2018), cascading from the top.

The model's parametrised stages are re-initialised one after another, from the output
(the embedding layer) down to the input, each time on top of the previous ones. After each
stage the method's maps are recomputed (references re-embedded by the randomised model, so
the explanation is of that model's own decision) and compared with the original maps by
Spearman rank correlation, per image, then averaged. A method whose maps survive full
randomisation explains the image, not the model.

Re-initialisation draws each parameter tensor from a normal distribution with the original
tensor's mean and standard deviation (seeded), so activations stay in a comparable range.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from ..models.base import randomise_
from . import get_explainer


@dataclass
class SanityStage:
    randomised: str  # the stage randomised at this step (all stages above it are random too)
    spearman: float  # mean over images of Spearman's rho between original and randomised maps
    per_image: list[float]


def randomisation_stages(model: nn.Module) -> list[str]:
    """Names of the backbone's top-level children that hold parameters, output first."""
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    names = [n for n, m in backbone.named_children() if any(True for _ in m.parameters())]
    return [prefix + n for n in reversed(names)]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().cpu().numpy(), b.flatten().cpu().numpy()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map carries no ranking to agree with
    return float(spearmanr(a, b).statistic)


def cascading_randomisation(
    model: nn.Module,
    method: str,
    images: torch.Tensor,
    reference_images: torch.Tensor | None = None,
    seed: int = 0,
    stages: list[str] | None = None,
    **options,
) -> list[SanityStage]:
    """Spearman correlation of ``method``'s maps before/after cascading randomisation.

    Returns one ``SanityStage`` per randomised stage, in cascade order (output first).
    """
    stages = stages or randomisation_stages(model)
    if not stages:
        raise ValueError("the model has no parametrised stages to randomise")

    def maps_of(m: nn.Module) -> torch.Tensor:
        refs = None
        if reference_images is not None:
            with torch.inference_mode():
                refs = m(reference_images).clone()
        return get_explainer(method, m, **options)(images, refs)

    original = maps_of(model)
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    gen = torch.Generator().manual_seed(seed)
    results = []
    for name in stages:
        if name not in modules:
            raise ValueError(f"no stage named {name!r}; stages are {randomisation_stages(model)}")
        randomise_(modules[name], gen)
        rand = maps_of(work)
        rhos = [_spearman(a, b) for a, b in zip(original, rand)]
        results.append(SanityStage(name, float(np.mean(rhos)), rhos))
    return results
