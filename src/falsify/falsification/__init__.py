"""Falsification tests of attribution maps.

An attribution map predicts that hiding the features it ranks high (S_high) moves the face
embedding far along the hypersphere, and hiding those it ranks low (S_low) barely moves it.

>>> from falsify.falsification import FalsificationConfig, calibrate, falsification_test
>>> config = calibrate(model, pairs).apply(FalsificationConfig())        # per-model thresholds
>>> results = falsification_test(model, images, references, maps, config)
>>> results[0].verdict, results[0].failed, results[0].d_high, results[0].d_low
>>> from falsify.falsification import stats
>>> stats.falsification_rate(results)

See docs/method.md (falsification test) for the criterion and every default.
"""
from . import stats
from .calibration import Calibration, calibrate, calibration_from_angles, occlusion_sensitivity
from .core import (
    COND_HIGH,
    COND_LOW,
    COND_MARGIN,
    COND_PRIOR,
    FalsificationConfig,
    FalsificationResult,
    build_counterfactuals,
    d_prime_of,
    falsification_test,
    regions_for,
    verdict_of,
)
from .counterfactuals import (
    DETERMINISTIC_FILLS,
    FILLS,
    STOCHASTIC_FILLS,
    apply_fill,
    fill_image,
    gaussian_blur,
    optimise_counterfactuals,
)
from .regions import GRANULARITIES, REGION_MODES, Regions, feature_segments, make_regions

__all__ = [
    "COND_HIGH",
    "COND_LOW",
    "COND_MARGIN",
    "COND_PRIOR",
    "Calibration",
    "DETERMINISTIC_FILLS",
    "FILLS",
    "FalsificationConfig",
    "FalsificationResult",
    "GRANULARITIES",
    "REGION_MODES",
    "Regions",
    "STOCHASTIC_FILLS",
    "apply_fill",
    "build_counterfactuals",
    "calibrate",
    "calibration_from_angles",
    "d_prime_of",
    "falsification_test",
    "feature_segments",
    "fill_image",
    "gaussian_blur",
    "make_regions",
    "occlusion_sensitivity",
    "optimise_counterfactuals",
    "regions_for",
    "stats",
    "verdict_of",
]
