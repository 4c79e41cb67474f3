"""The names users choose from (methods, fills, region granularities, experiments).

Kept free of heavy imports so that ``falsify --help`` and argument checking do not load torch;
the packages that implement each choice import their tuples from here, so there is one list.
"""
from __future__ import annotations

#: Attribution methods, in the order reports list them (``falsify.attribution`` checks that its
#: registry matches this tuple).
METHODS: tuple[str, ...] = (
    "gradcam", "gradcam++", "biometric-gradcam", "ig", "geodesic-ig", "saliency",
    "gradient-x-input", "occlusion", "kernelshap", "lime", "random",
)

#: Counterfactual fills: what replaces the hidden pixels.
FILLS: tuple[str, ...] = ("blur", "mean", "zero", "noise", "optimised")
STOCHASTIC_FILLS: tuple[str, ...] = ("noise", "optimised")
DETERMINISTIC_FILLS: tuple[str, ...] = ("blur", "mean", "zero")

#: Feature granularities of the falsification regions.
GRANULARITIES: tuple[str, ...] = ("pixel", "grid", "superpixel")

#: Experiments ``falsify run`` knows.
EXPERIMENTS: tuple[str, ...] = ("6.1", "6.2")
