"""Falsification tests of attribution maps.

An attribution map predicts that hiding the features it ranks high (S_high) moves the face
embedding far along the hypersphere, and hiding those it ranks low (S_low) barely moves it.

>>> from falsify.falsification import FalsificationConfig, calibrate, falsification_test
>>> from falsify.falsification.prior import occlusion_prior
>>> config = calibrate(model, pairs).apply(FalsificationConfig())        # per-model thresholds
>>> prior = occlusion_prior(model, untested_images).map()                # the model's prior map
>>> results = falsification_test(model, images, references, maps, config, prior=prior)
>>> results[0].verdict, results[0].failed, results[0].d_high, results[0].d_low
>>> from falsify.falsification import stats
>>> stats.falsification_rate(results)

``FalsificationConfig()`` is the test ``falsify run`` and ``falsify test`` use by default (the
``beyond-prior`` preset: a map must beat the model's prior map); the earlier test without the
prior is ``FalsificationConfig.preset("plain")``.

The test is a composition of public stages (``falsify.falsification.stages``): regions
(:func:`regions_for`), a fill strategy (:func:`fill_for`), embedding (:func:`embed`), distances
(:func:`distances`), and a criterion object (``falsify.falsification.criteria``,
:func:`criterion_for`). See docs/method.md (falsification test) for the criterion and every default.

The test's ceiling on an image, the best map its own regions, fill and criterion allow, found by
a greedy search (a lower bound on the best map): :func:`ceiling_search`
(``falsify.falsification.ceiling``).
"""
from . import stats
from .calibration import Calibration, calibrate, calibration_from_angles, occlusion_sensitivity
from .ceiling import CeilingResult, CeilingSearch, ceiling_map, ceiling_search
from .core import FalsificationConfig, FalsificationResult, d_prime_of, falsification_test
from .criteria import (
    COND_HIGH,
    COND_LOW,
    COND_MARGIN,
    COND_PRIOR,
    Absolute,
    BeyondPrior,
    Criterion,
    Judgement,
    criterion_for,
    register_criterion,
    verdict_beyond_prior,
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
from .stages import (
    STREAM_FILL,
    STREAM_REGIONS,
    BatchedEmbedder,
    Counterfactuals,
    DeterministicFill,
    EmbeddingCache,
    Fill,
    NoiseFill,
    OptimisedFill,
    build_counterfactuals,
    counterfactuals_of,
    distances,
    embed,
    fill_for,
    optimised_starts,
    pair_generator,
    regions_for,
    register_fill,
)

__all__ = [
    "Absolute",
    "BatchedEmbedder",
    "BeyondPrior",
    "EmbeddingCache",
    "COND_HIGH",
    "COND_LOW",
    "COND_MARGIN",
    "COND_PRIOR",
    "Calibration",
    "CeilingResult",
    "CeilingSearch",
    "Counterfactuals",
    "Criterion",
    "DETERMINISTIC_FILLS",
    "DeterministicFill",
    "FILLS",
    "FalsificationConfig",
    "FalsificationResult",
    "Fill",
    "GRANULARITIES",
    "Judgement",
    "NoiseFill",
    "OptimisedFill",
    "REGION_MODES",
    "Regions",
    "STOCHASTIC_FILLS",
    "STREAM_FILL",
    "STREAM_REGIONS",
    "apply_fill",
    "build_counterfactuals",
    "calibrate",
    "calibration_from_angles",
    "ceiling_map",
    "ceiling_search",
    "counterfactuals_of",
    "criterion_for",
    "d_prime_of",
    "distances",
    "embed",
    "falsification_test",
    "feature_segments",
    "fill_for",
    "fill_image",
    "gaussian_blur",
    "make_regions",
    "occlusion_sensitivity",
    "optimise_counterfactuals",
    "optimised_starts",
    "pair_generator",
    "regions_for",
    "register_criterion",
    "register_fill",
    "stats",
    "verdict_beyond_prior",
    "verdict_of",
]
