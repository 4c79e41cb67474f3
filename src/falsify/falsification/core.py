"""The falsification test of attribution maps.

An attribution map makes two predictions: hiding the features it ranks high (S_high) moves the
face embedding far along the hypersphere, hiding those it ranks low (S_low) barely moves it.
For each image x with map M:

    d_high = mean_k d_g(f(x), f(C(x, S_high)_k)),   d_low = mean_k d_g(f(x), f(C(x, S_low)_k))

(geodesic distances in radians over K counterfactual samples). The map *passes* when

    d_high > tau_high   and   d_low < tau_low   and   d_high - d_low >= epsilon,

and is *falsified* otherwise (``failed`` names the conditions that did not hold). A map that
makes no prediction (constant, or an empty S_high/S_low) is *untestable*, and so is a test in
which no counterfactual of either region moves f(x) by more than float32 rounding
(:func:`falsify.geometry.angle_rounding`): the image gives the map nothing to test (e.g. a
flat-colour image, whose mean fill is the image itself).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch

from ..choices import PAIR_TARGETS, PRESET_NAMES, TARGETS
from ..geometry import angle_rounding, geodesic_distance
from ..models.base import model_device
from .counterfactuals import FILLS, STOCHASTIC_FILLS, OptimisationInfo
from .criteria import (  # noqa: F401 - the conditions and verdict rules are re-exported here
    COND_HIGH,
    COND_LOW,
    COND_MARGIN,
    COND_PRIOR,
    CRITERION_CLASSES,
    criterion_for,
    verdict_beyond_prior,
    verdict_of,
)
from .regions import GRANULARITIES, REGION_MODES
from .stages import (  # noqa: F401 - pair_generator, regions_for, build_counterfactuals: public here since before the stages
    STREAM_FILL,
    STREAM_REGIONS,
    BatchedEmbedder,
    EmbeddingCache,
    as_tensor,
    build_counterfactuals,
    distances,
    embed,
    embedder_for,
    fill_for,
    pair_generator,
    regions_for,
)

VERDICTS = ("passed", "falsified", "untestable")

#: Named test configurations: ``--preset`` of ``falsify run`` and ``falsify test``, and
#: ``FalsificationConfig.preset(name)``. The default, ``beyond-prior``, is the configuration with
#: the highest discriminative power in the validity study (docs/method.md, "Validity of the
#: test"), and the defaults of ``FalsificationConfig()`` too; its target is ``signed-angle``, the
#: target the known-truth benchmark prefers (docs/method.md, "The default target"). ``plain`` is the
#: configuration used before it (fill blur, q 0.2, absolute thresholds on how far f(x) moves),
#: available by name.
PRESETS: dict[str, dict] = {
    "beyond-prior": {"fill": "mean", "q": 0.1, "criterion": "beyond-prior", "delta": 0.0, "target": "signed-angle"},
    "plain": {"fill": "blur", "q": 0.2, "criterion": "absolute", "delta": None, "target": "embedding"},
}
DEFAULT_PRESET = "beyond-prior"
if tuple(PRESETS) != PRESET_NAMES:
    raise ImportError(f"falsify.choices.PRESET_NAMES {PRESET_NAMES} does not match PRESETS {tuple(PRESETS)}")


def apply_preset(preset: str, fill=None, q=None, criterion=None, delta=None, target=None) -> dict:
    """``fill``, ``q``, ``criterion``, ``delta`` and ``target`` with those not given (None) taken
    from the preset; delta only for the beyond-prior criterion (0 when the preset has none)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = PRESETS[preset]
    out = {"fill": fill, "q": q, "criterion": criterion, "delta": delta, "target": target}
    for key in ("fill", "q", "criterion", "target"):
        if out[key] is None:
            out[key] = values[key]
    needs_delta = "delta" in getattr(CRITERION_CLASSES.get(out["criterion"]), "thresholds", ())
    if needs_delta and out["delta"] is None:  # absolute has no delta
        out["delta"] = values["delta"] if values["delta"] is not None else 0.0
    return out


@dataclass(frozen=True)
class FalsificationConfig:
    """Everything that defines one falsification test. See docs/method.md (falsification test) for the defaults.

    The defaults are the ``beyond-prior`` preset, the test ``falsify run`` and ``falsify test`` use
    by default: fill ``mean``, ``q`` = 0.1, criterion ``beyond-prior`` with ``delta`` = 0 (a
    ``prior`` map must be given to ``falsification_test``). The earlier test is
    ``FalsificationConfig.preset("plain")`` (fill ``blur``, ``q`` = 0.2, criterion ``absolute``).

    Regions
        granularity: "grid" (default), "pixel" or "superpixel"; ``grid`` cells per side (14);
        ``n_segments`` and ``compactness`` for SLIC superpixels. region: "quantile" (default,
        equal area, top/bottom ``q`` = 0.1 of the pixels) or "threshold" (``theta_high``,
        ``theta_low`` on the [0, 1] map).
    Counterfactuals
        fill: "mean" (default), "blur", "zero", "noise", "optimised". ``K`` samples per region
        for stochastic fills (noise, optimised; default 16); deterministic fills always use one
        (``k_effective``). ``noise_sigma`` (std of the additive noise, [0, 1] units),
        ``blur_sigma`` (std of the blur as a fraction of the shorter image side).
        ``opt_*``: Algorithm 1 (steps, Adam step size, lambda, target distance in radians,
        per-sample gradient-norm clip, relative early-stop tolerance and patience, std of the
        starting noise).
    Criterion
        criterion: "beyond-prior" (default: the map's margin d_high - d_low must beat the prior
        map's on the same image by more than ``delta``, default 0) or "absolute" (the thresholds
        below); see ``falsify.falsification.criteria``. ``tau_high``, ``tau_low``, ``epsilon`` in
        radians. They have no default: set them, or derive them for the model with
        ``calibrate(model, pairs).apply(config)``.
    Other
        ``seed`` (ties in the ranking and stochastic fills; results are identical for the same
        seed), ``batch_size`` (images per forward pass).
    """

    granularity: str = "grid"
    grid: int = 14
    n_segments: int = 100
    compactness: float = 10.0
    region: str = "quantile"
    q: float = PRESETS[DEFAULT_PRESET]["q"]
    theta_high: float | None = None
    theta_low: float | None = None
    fill: str = PRESETS[DEFAULT_PRESET]["fill"]
    K: int = 16
    noise_sigma: float = 0.5
    blur_sigma: float = 0.05
    tau_high: float | None = None
    tau_low: float | None = None
    epsilon: float | None = None
    criterion: str = PRESETS[DEFAULT_PRESET]["criterion"]
    delta: float | None = PRESETS[DEFAULT_PRESET]["delta"]
    target: str = PRESETS[DEFAULT_PRESET]["target"]
    seed: int = 0
    batch_size: int = 64
    opt_steps: int = 100
    opt_lr: float = 0.01
    opt_lambda: float = 1.0
    opt_delta_target: float = math.pi / 2
    opt_grad_clip: float = 1.0
    opt_tol: float = 1e-3
    opt_patience: int = 5
    opt_init_sigma: float = 0.05

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; use one of {GRANULARITIES}")
        if self.region not in REGION_MODES:
            raise ValueError(f"unknown region mode {self.region!r}; use one of {REGION_MODES}")
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; use one of {FILLS}")
        if isinstance(self.K, bool) or not isinstance(self.K, (int, np.integer)) or self.K < 1:
            raise ValueError(f"K (counterfactual samples per region) must be an integer >= 1, got {self.K!r}")
        if not isinstance(self.grid, (int, np.integer)) or self.grid < 1:
            raise ValueError(f"grid (cells per side) must be an integer >= 1, got {self.grid!r}")
        if not isinstance(self.n_segments, (int, np.integer)) or self.n_segments < 2:
            raise ValueError(f"n_segments (superpixels) must be an integer >= 2, got {self.n_segments!r}")
        if self.region == "quantile":
            if not 0.0 < self.q <= 0.5:
                raise ValueError(
                    f"q must be in (0, 0.5] (the fraction of pixels in S_high and in S_low, which "
                    f"must not overlap), got {self.q}"
                )
        else:
            if self.theta_high is None or self.theta_low is None:
                raise ValueError("region='threshold' needs theta_high and theta_low (values on the [0, 1] map)")
            if not (0.0 <= self.theta_low <= 1.0 and 0.0 <= self.theta_high <= 1.0):
                raise ValueError(
                    f"theta_high and theta_low are values on the [0, 1] map, got theta_high="
                    f"{self.theta_high}, theta_low={self.theta_low}"
                )
            if self.theta_low >= self.theta_high:
                raise ValueError(
                    f"theta_low must be below theta_high so S_low and S_high are disjoint, got "
                    f"theta_low={self.theta_low} >= theta_high={self.theta_high}"
                )
        if not self.noise_sigma > 0:
            raise ValueError(f"noise_sigma must be > 0 ([0, 1] pixel units), got {self.noise_sigma}")
        if not 0 < self.blur_sigma <= 1:
            raise ValueError(
                f"blur_sigma is a fraction of the shorter image side (0.05 = 7.5 px on 150x150), "
                f"in (0, 1]; got {self.blur_sigma}"
            )
        if self.criterion not in CRITERION_CLASSES:
            raise ValueError(f"unknown criterion {self.criterion!r}; use one of {tuple(CRITERION_CLASSES)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; use one of {TARGETS}")
        for name in ("tau_high", "tau_low", "epsilon", "delta"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= math.pi):
                raise ValueError(f"{name} is an angle in radians in [0, pi], got {v}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.opt_steps < 1 or self.opt_patience < 1:
            raise ValueError("opt_steps and opt_patience must be >= 1")
        if not (self.opt_lr > 0 and self.opt_lambda >= 0 and self.opt_grad_clip > 0 and self.opt_tol >= 0):
            raise ValueError("opt_lr and opt_grad_clip must be > 0, opt_lambda and opt_tol >= 0")
        if not 0 <= self.opt_delta_target <= math.pi:
            raise ValueError(f"opt_delta_target is an angle in [0, pi], got {self.opt_delta_target}")

    @property
    def stochastic(self) -> bool:
        return self.fill in STOCHASTIC_FILLS

    @property
    def k_effective(self) -> int:
        """Samples per region actually drawn: K for stochastic fills, 1 for deterministic ones."""
        return int(self.K) if self.stochastic else 1

    @property
    def has_criterion(self) -> bool:
        """The thresholds the criterion needs are set (given, or from a calibration): tau_high,
        tau_low and epsilon for ``absolute``, delta too for ``beyond-prior``."""
        return all(getattr(self, name) is not None for name in CRITERION_CLASSES[self.criterion].thresholds)

    def replace(self, **changes) -> "FalsificationConfig":
        return replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> "FalsificationConfig":
        """The config of preset ``name`` (:data:`PRESETS`: ``beyond-prior``, the default, or
        ``plain``) with ``changes``; e.g. ``FalsificationConfig.preset("plain", K=8)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FalsificationResult:
    """The test of one map on one image."""

    pair_id: int
    verdict: str  # "passed" | "falsified" | "untestable"
    failed: tuple[str, ...]  # conditions that did not hold; for untestable, the reason
    d_high: float  # mean distance (rad) under the target: d_g(f(x), f(C(x, S_high))) for embedding
    d_low: float
    sd_high: float  # sample std over the K counterfactuals (0 when K = 1)
    sd_low: float
    margin: float  # d_high - d_low
    d_prime: float  # margin / sqrt((sd_high^2 + sd_low^2) / 2); nan when that spread is 0
    n_high: int  # pixels in S_high
    n_low: int
    K: int  # counterfactual samples per region actually drawn
    tau_high: float
    tau_low: float
    epsilon: float
    fill: str
    granularity: str
    separated: bool  # the map ranks every feature of S_high strictly above every one of S_low
    pair_angle: float | None = None  # d_g(f(x), reference): the pair's own angle, for reporting
    criterion: str = "absolute"
    delta: float | None = None  # beyond-prior: the excess the margin must reach
    prior_d_high: float | None = None  # beyond-prior: the prior map's d_high, d_low on this image
    prior_d_low: float | None = None
    excess: float | None = None  # margin - (prior_d_high - prior_d_low)
    distances_high: tuple[float, ...] = ()
    distances_low: tuple[float, ...] = ()
    converged_high: float | None = None  # optimised fill: fraction of samples that converged
    converged_low: float | None = None
    iterations_high: float | None = None  # optimised fill: mean gradient steps
    iterations_low: float | None = None
    high_mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    low_mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    example_high: torch.Tensor | None = field(default=None, repr=False, compare=False)
    example_low: torch.Tensor | None = field(default=None, repr=False, compare=False)
    #: fields a criterion adds that are none of the above (``Criterion.fields``); read as
    #: attributes (``result.NAME``) and written by :meth:`to_dict` among the others
    criterion_fields: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        fields_ = self.__dict__.get("criterion_fields") or {}
        if name in fields_:
            return fields_[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    @property
    def falsified(self) -> bool:
        return self.verdict == "falsified"

    @property
    def testable(self) -> bool:
        return self.verdict != "untestable"

    def to_dict(self) -> dict:
        """JSON-ready: no tensors, NaN and infinities as None."""
        out = {}
        for f in fields(self):
            if f.name in ("high_mask", "low_mask", "example_high", "example_low", "criterion_fields"):
                continue
            k, v = f.name, getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        for k, v in self.criterion_fields.items():
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out

    def format(self) -> str:
        """A few lines for people: the verdict, the distances and each condition."""
        if self.verdict == "untestable":
            return f"verdict   UNTESTABLE ({'; '.join(self.failed)})"

        sd = lambda s: f" (sd {s:.4f}, K={self.K})" if self.K > 1 else ""  # noqa: E731
        dp = "n/a (no spread: deterministic fill, K=1)" if not math.isfinite(self.d_prime) else f"{self.d_prime:.2f}"
        lines = [f"regions   S_high {self.n_high} px, S_low {self.n_low} px ({self.granularity}, fill {self.fill})"]
        lines += CRITERION_CLASSES[self.criterion].lines(self, sd)
        lines.append(f"d'        {dp}")
        if self.converged_high is not None:
            lines.append(
                f"optimised converged {self.converged_high:.0%} (high) / {self.converged_low:.0%} (low) "
                f"of samples; mean steps {self.iterations_high:.1f} / {self.iterations_low:.1f}"
            )
        verdict = self.verdict.upper()
        if self.failed:
            verdict += " (" + ", ".join(self.failed) + ")"
        lines.append(f"verdict   {verdict}")
        return "\n".join(lines)


#: the attributes of FalsificationResult (a criterion's fields outside them go to ``criterion_fields``)
RESULT_FIELDS = frozenset(f.name for f in fields(FalsificationResult)) - {"criterion_fields"}


def d_prime_of(margin: float, sd_high: float, sd_low: float) -> float:
    """Separation in pooled-spread units; nan when both spreads are 0 (e.g. K = 1)."""
    pooled = math.sqrt((sd_high**2 + sd_low**2) / 2.0)
    return margin / pooled if pooled > 0 else float("nan")


# --- input checking ----------------------------------------------------------------------------

def check_inputs(model, images, references, maps) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Validate and normalise shapes: images (B,3,H,W) in [0,1], references (B,D) or None, maps (B,H,W)."""
    images = as_tensor(images, "images")
    maps = as_tensor(maps, "maps")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    size = tuple(getattr(model, "input_size", images.shape[-2:]))
    if not images.is_floating_point():
        raise TypeError(f"images must be float RGB in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != size:
        raise ValueError(
            f"images must have shape (B, 3, {size[0]}, {size[1]}) (the model's input_size), got "
            f"{tuple(images.shape)}; load them with falsify.data.load_image(path, size=model.input_size)"
        )
    if not torch.isfinite(images).all() or float(images.min()) < -1e-6 or float(images.max()) > 1 + 1e-6:
        raise ValueError(
            "images must be RGB in [0, 1] (the model normalises them itself); got values in "
            f"[{float(images.min()):.4g}, {float(images.max()):.4g}]"
        )
    b = images.shape[0]
    if maps.dim() != 3 or maps.shape[0] != b or tuple(maps.shape[-2:]) != size:
        raise ValueError(
            f"maps must have shape (B, H, W) = ({b}, {size[0]}, {size[1]}), one map per image at the "
            f"image's resolution, got {tuple(maps.shape)}; upsample coarse maps to the input size first"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    if references is not None:
        references = as_tensor(references, "references")
        if references.dim() == 1:
            references = references.unsqueeze(0)
        if references.dim() != 2 or references.shape[0] != b:
            raise ValueError(
                f"references must have shape (B, D) = ({b}, embedding dim), one embedding per image "
                f"(the other face of each pair, model(other_images)), got {tuple(references.shape)}"
            )
        references = torch.nn.functional.normalize(references.detach().float().cpu(), dim=1)
    # regions and fills are built on the CPU; the model sees them chunk by chunk on its device
    return images.detach().float().cpu().clamp(0.0, 1.0), references, maps.detach().cpu()


# --- the test ----------------------------------------------------------------------------------

def falsification_test(
    model: torch.nn.Module,
    images: torch.Tensor,
    references: torch.Tensor | None,
    maps: torch.Tensor,
    config: FalsificationConfig | None = None,
    *,
    pair_ids: Sequence[int] | None = None,
    keep_examples: bool = False,
    progress: bool = False,
    prior: torch.Tensor | None = None,
    prior_cache: dict | None = None,
    embedding_cache: EmbeddingCache | None = None,
) -> list[FalsificationResult]:
    """Test one attribution map per image; returns one :class:`FalsificationResult` per image.

    Parameters
    ----------
    model:
        A face embedder: ``(B, 3, H, W)`` RGB in [0, 1] at ``model.input_size`` -> unit ``(B, D)``.
    images:
        ``(B, 3, H, W)`` the explained images (x).
    references:
        ``(B, D)`` the other face's embedding of each pair, or None: with ``target="embedding"``
        only used to report the pair's angle (the distances are measured from f(x) of the image
        itself); ``target="pair"`` needs them.
    maps:
        ``(B, H, W)`` attribution maps at the image's resolution (any real values in quantile
        mode; [0, 1] in threshold mode).
    config:
        :class:`FalsificationConfig` with ``tau_high``, ``tau_low`` and ``epsilon`` set (e.g.
        ``calibrate(model, pairs).apply(FalsificationConfig())``). Its default criterion,
        ``beyond-prior``, needs ``prior``; ``FalsificationConfig.preset("plain")`` does not.
    pair_ids:
        Identifiers seeding each pair's random streams (default ``0 .. B-1``); pass the same ids
        to get the same result for a pair whether it is tested alone or in a batch.
    keep_examples:
        Keep the masks and the first high and low counterfactual in each result (for figures).
    prior:
        ``(H, W)`` the model's prior map (``falsify.falsification.prior``), needed by the
        ``beyond-prior`` criterion: the prior is tested on each image like the map, and the map's
        margin must exceed the prior's by ``delta``.
    prior_cache:
        A dict reused across calls on the same images (keyed by pair id): the prior's distances
        on an image are then computed once, however many methods are tested on it.
    embedding_cache:
        An :class:`EmbeddingCache` reused across calls with the same model: f(x), and the
        counterfactuals of a region another map of the image picked too, are then embedded once
        (the distances are those of a fresh test, up to float32 rounding of the batch).

    The stages (``falsify.falsification.stages``, ``falsify.falsification.criteria``): the
    regions of each map (:func:`regions_for`), the counterfactuals of the testable ones from the
    config's fill strategy (:func:`fill_for`), their embeddings (:class:`BatchedEmbedder`: all 2K
    counterfactuals of every image in batches of ``config.batch_size``; f(x) once per image,
    :func:`embed`), the distances (:func:`distances`), and the criterion's verdict
    (:func:`criterion_for`).
    """
    config = config or FalsificationConfig()
    criterion = criterion_for(config)
    _check_test_call(config, criterion, references, prior)
    images, references, maps = check_inputs(model, images, references, maps)
    b = images.shape[0]
    if pair_ids is None:
        pair_ids = list(range(b))
    pair_ids = [int(p) for p in pair_ids]
    if len(pair_ids) != b:
        raise ValueError(f"pair_ids needs one id per image ({b}), got {len(pair_ids)}")
    device = model_device(model)

    # 1. regions; f(x) once per image
    regions_list = [regions_for(images[i], maps[i], config, pair_ids[i]) for i in range(b)]
    f_x = embed(model, images, config.batch_size, device, embedding_cache)
    if references is not None and references.shape[1] != f_x.shape[1]:
        raise ValueError(
            f"references have {references.shape[1]} dimensions but the model's embeddings have "
            f"{f_x.shape[1]}: pass model(other_images) of the same model"
        )

    # 2. the fill's counterfactuals of every testable image, 3. embedded in batches of batch_size
    embedded = _embed_counterfactuals(model, images, regions_list, f_x, pair_ids, config, device,
                                      keep_examples=keep_examples, progress=progress, cache=embedding_cache)

    pair_angles = None
    if references is not None:
        pair_angles = geodesic_distance(f_x.double(), references.double())
    criterion.prepare(model, images, f_x, references, pair_ids, device, prior=prior, prior_cache=prior_cache,
                      regions=regions_list)

    # 4. distances, 5. the criterion's verdict (untestable when no counterfactual moved f(x))
    results = []
    row = 0
    k = config.k_effective
    for i in range(b):
        reg = regions_list[i]
        common = _common_fields(config, pair_ids[i], None if pair_angles is None else float(pair_angles[i]))
        masks = dict(high_mask=reg.high, low_mask=reg.low) if keep_examples else {}
        if not reg.testable:
            nan = float("nan")
            results.append(
                FalsificationResult(
                    verdict="untestable", failed=(str(reg.reason),), d_high=nan, d_low=nan, sd_high=nan,
                    sd_low=nan, margin=nan, d_prime=nan, n_high=0, n_low=0, K=k, separated=False,
                    **common, **masks,
                )
            )
            continue
        e = embedded.emb[row : row + 2 * k].double()
        row += 2 * k
        ref = None if references is None else references[i]
        results.append(_judged_result(i, reg, f_x[i], e, ref, config, criterion, embedded, common, masks))
    return results


def _check_test_call(config: FalsificationConfig, criterion, references, prior) -> None:
    """Refuse a test that cannot be judged: thresholds unset, a pair target (the default) without
    references, or a criterion's missing input (beyond-prior's prior)."""
    if not config.has_criterion:
        raise ValueError(
            "the criterion needs tau_high, tau_low and epsilon (and delta for 'beyond-prior'; radians): set "
            "them in FalsificationConfig(...) or calibrate them for this model with "
            "config = calibrate(model, pairs).apply(config)"
        )
    if config.target in PAIR_TARGETS and references is None:
        raise ValueError(f"target={config.target!r} measures how each counterfactual moves the pair's angle: pass "
                         "the references (the other face's embedding of each pair), or "
                         "FalsificationConfig(target='embedding') to measure how far f(x) moves")
    criterion.check_inputs(prior=prior)


def _common_fields(config: FalsificationConfig, pair_id: int, pair_angle: float | None) -> dict:
    """The fields every result of one image carries, whatever its verdict."""
    return dict(
        pair_id=pair_id,
        tau_high=float(config.tau_high),
        tau_low=float(config.tau_low),
        epsilon=float(config.epsilon),
        fill=config.fill,
        granularity=config.granularity,
        pair_angle=pair_angle,
        criterion=config.criterion,
        delta=None if config.delta is None else float(config.delta),
    )


@dataclass
class _Embedded:
    """The counterfactuals' embeddings of the testable images, 2K rows each (high then low) in
    image order, with the optimised fill's convergence and the kept examples by image index."""

    emb: torch.Tensor
    opt_info: dict[int, OptimisationInfo]
    cf_keep: dict[int, torch.Tensor]


def _embed_counterfactuals(model, images, regions_list, f_x, pair_ids, config, device, *,
                           keep_examples: bool, progress: bool, cache: EmbeddingCache | None = None) -> _Embedded:
    """The fill's counterfactuals of every testable image, embedded in batches of
    ``config.batch_size`` (those ``cache`` holds read from it)."""
    k = config.k_effective
    testable = [i for i, r in enumerate(regions_list) if r.testable]
    cf_keep: dict[int, torch.Tensor] = {}
    opt_info: dict[int, OptimisationInfo] = {}
    embedder = embedder_for(model, config.batch_size, 2 * k * len(testable), device, cache)
    made = fill_for(config).counterfactuals(model, [images[i] for i in testable], [regions_list[i] for i in testable],
                                            f_x[testable], [pair_ids[i] for i in testable], progress=progress)
    for i, cf in zip(testable, made):
        embedder.add(cf.high)
        embedder.add(cf.low)
        if cf.info is not None:
            opt_info[i] = cf.info
        if keep_examples:
            cf_keep[i] = torch.stack([cf.high[0], cf.low[0]])
    return _Embedded(embedder.finish(), opt_info, cf_keep)


def _judged_result(i: int, reg, f_xi: torch.Tensor, e: torch.Tensor, ref, config: FalsificationConfig, criterion,
                   embedded: _Embedded, common: dict, masks: dict) -> FalsificationResult:
    """The result of testable image ``i``: its distances from ``e`` (its 2K counterfactual
    embeddings, float64) and the criterion's verdict, untestable when none moved f(x)."""
    k = config.k_effective
    d = distances(f_xi.double(), e, ref, config.target)
    dh, dl = d[:k], d[k:]
    d_high, d_low = float(dh.mean()), float(dl.mean())
    sd_high = float(dh.std(unbiased=True)) if k > 1 else 0.0
    sd_low = float(dl.std(unbiased=True)) if k > 1 else 0.0
    margin = d_high - d_low
    moved = d if config.target == "embedding" else distances(f_xi.double(), e, None, "embedding")
    rounding = angle_rounding(f_xi.shape[0])
    if float(moved.max()) <= rounding:  # no counterfactual moved f(x): nothing for the map to predict
        verdict, failed, extra = "untestable", (
            f"hiding S_high or S_low moves the embedding by at most {float(moved.max()):.1e} rad, within "
            f"float32 rounding ({rounding:.1e} rad for {f_xi.shape[0]}-d embeddings): the image gives the map "
            "nothing to test",), {}
    else:
        judged = criterion.judge(common["pair_id"], d_high, d_low)
        verdict, failed = judged.verdict, judged.failed
        # the criterion's fields: the result's own attributes (beyond-prior's), else criterion_fields
        extra = {k: v for k, v in judged.fields.items() if k in RESULT_FIELDS}
        if len(extra) < len(judged.fields):
            extra["criterion_fields"] = {k: v for k, v in judged.fields.items() if k not in RESULT_FIELDS}
    if i in embedded.opt_info:
        info = embedded.opt_info[i]
        extra.update(
            converged_high=float(info.converged[:k].float().mean()),
            converged_low=float(info.converged[k:].float().mean()),
            iterations_high=float(info.iterations[:k].float().mean()),
            iterations_low=float(info.iterations[k:].float().mean()),
        )
    if i in embedded.cf_keep:
        extra.update(example_high=embedded.cf_keep[i][0], example_low=embedded.cf_keep[i][1])
    return FalsificationResult(
        verdict=verdict,
        failed=failed,
        d_high=d_high,
        d_low=d_low,
        sd_high=sd_high,
        sd_low=sd_low,
        margin=margin,
        d_prime=d_prime_of(margin, sd_high, sd_low),
        n_high=reg.n_high,
        n_low=reg.n_low,
        K=k,
        separated=reg.separated,
        distances_high=tuple(float(v) for v in dh),
        distances_low=tuple(float(v) for v in dl),
        **common,
        **masks,
        **extra,
    )
