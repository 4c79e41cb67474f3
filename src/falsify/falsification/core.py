"""The falsification test of attribution maps.

An attribution map makes two predictions: hiding the features it ranks high (S_high) moves the
face embedding far along the hypersphere, hiding those it ranks low (S_low) barely moves it.
For each image x with map M:

    d_high = mean_k d_g(f(x), f(C(x, S_high)_k)),   d_low = mean_k d_g(f(x), f(C(x, S_low)_k))

(geodesic distances in radians over K counterfactual samples). The map *passes* when

    d_high > tau_high   and   d_low < tau_low   and   d_high - d_low >= epsilon,

and is *falsified* otherwise (``failed`` names the conditions that did not hold). A map that
makes no prediction (constant, or an empty S_high/S_low) is *untestable*.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..choices import CRITERIA, PRESET_NAMES, TARGETS
from ..geometry import geodesic_distance
from ..models.base import model_device
from .counterfactuals import (
    DETERMINISTIC_FILLS,
    FILLS,
    STOCHASTIC_FILLS,
    OptimisationInfo,
    fill_image,
    optimise_counterfactuals,
)
from .regions import GRANULARITIES, REGION_MODES, Regions, make_regions

VERDICTS = ("passed", "falsified", "untestable")
COND_HIGH = "d_high<=tau_high"
COND_LOW = "d_low>=tau_low"
COND_MARGIN = "margin<epsilon"
COND_PRIOR = "excess<delta"

#: Named test configurations for ``falsify run`` and ``falsify test`` (``--preset``). The default,
#: ``beyond-prior``, is the configuration with the highest discriminative power in the validity
#: study (docs/method.md, "Validity of the test"); ``plain`` is the configuration used before it
#: (the library's ``FalsificationConfig()`` defaults).
PRESETS: dict[str, dict] = {
    "beyond-prior": {"fill": "mean", "q": 0.1, "criterion": "beyond-prior", "delta": 0.0},
    "plain": {"fill": "blur", "q": 0.2, "criterion": "absolute", "delta": None},
}
DEFAULT_PRESET = "beyond-prior"
if tuple(PRESETS) != PRESET_NAMES:
    raise ImportError(f"falsify.choices.PRESET_NAMES {PRESET_NAMES} does not match PRESETS {tuple(PRESETS)}")


def apply_preset(preset: str, fill=None, q=None, criterion=None, delta=None) -> dict:
    """``fill``, ``q``, ``criterion`` and ``delta`` with those not given (None) taken from the
    preset; delta only for the beyond-prior criterion (0 when the preset has none)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = PRESETS[preset]
    out = {"fill": fill, "q": q, "criterion": criterion, "delta": delta}
    for key in ("fill", "q", "criterion"):
        if out[key] is None:
            out[key] = values[key]
    if out["criterion"] == "beyond-prior" and out["delta"] is None:  # absolute has no delta
        out["delta"] = values["delta"] if values["delta"] is not None else 0.0
    return out

# Independent random streams per pair: tie-breaking of the ranking, and the fill's samples.
_STREAM_REGIONS = 0
_STREAM_FILL = 1


def pair_generator(seed: int, pair_id: int, stream: int) -> torch.Generator:
    """A CPU generator for one pair and purpose, from (seed, pair id, stream) via SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(pair_id) & 0xFFFFFFFF, stream]).generate_state(2)
    value = (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(value)


@dataclass(frozen=True)
class FalsificationConfig:
    """Everything that defines one falsification test. See docs/method.md (falsification test) for the defaults.

    Regions
        granularity: "grid" (default), "pixel" or "superpixel"; ``grid`` cells per side (14);
        ``n_segments`` and ``compactness`` for SLIC superpixels. region: "quantile" (default,
        equal area, top/bottom ``q`` = 0.2 of the pixels) or "threshold" (``theta_high``,
        ``theta_low`` on the [0, 1] map).
    Counterfactuals
        fill: "blur" (default), "mean", "zero", "noise", "optimised". ``K`` samples per region
        for stochastic fills (noise, optimised; default 16); deterministic fills always use one
        (``k_effective``). ``noise_sigma`` (std of the additive noise, [0, 1] units),
        ``blur_sigma`` (std of the blur as a fraction of the shorter image side).
        ``opt_*``: Algorithm 1 (steps, Adam step size, lambda, target distance in radians,
        per-sample gradient-norm clip, relative early-stop tolerance and patience, std of the
        starting noise).
    Criterion
        ``tau_high``, ``tau_low``, ``epsilon`` in radians. They have no default: set them, or
        derive them for the model with ``calibrate(model, pairs).apply(config)``.
    Other
        ``seed`` (ties in the ranking and stochastic fills; results are identical for the same
        seed), ``batch_size`` (images per forward pass).
    """

    granularity: str = "grid"
    grid: int = 14
    n_segments: int = 100
    compactness: float = 10.0
    region: str = "quantile"
    q: float = 0.2
    theta_high: float | None = None
    theta_low: float | None = None
    fill: str = "blur"
    K: int = 16
    noise_sigma: float = 0.5
    blur_sigma: float = 0.05
    tau_high: float | None = None
    tau_low: float | None = None
    epsilon: float | None = None
    criterion: str = "absolute"
    delta: float | None = None
    target: str = "embedding"
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
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; use one of {CRITERIA}")
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
        need = (self.tau_high, self.tau_low, self.epsilon) + ((self.delta,) if self.criterion == "beyond-prior" else ())
        return None not in need

    def replace(self, **changes) -> "FalsificationConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FalsificationResult:
    """The test of one map on one image."""

    pair_id: int
    verdict: str  # "passed" | "falsified" | "untestable"
    failed: tuple[str, ...]  # conditions that did not hold; for untestable, the reason
    d_high: float  # mean geodesic distance (rad) f(x) -> f(C(x, S_high))
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
            if f.name in ("high_mask", "low_mask", "example_high", "example_low"):
                continue
            k, v = f.name, getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out

    def format(self) -> str:
        """A few lines for people: the verdict, the distances and each condition."""
        if self.verdict == "untestable":
            return f"verdict   UNTESTABLE ({'; '.join(self.failed)})"

        def ok(cond: str) -> str:
            return "FAILED" if cond in self.failed else "ok"

        sd = lambda s: f" (sd {s:.4f}, K={self.K})" if self.K > 1 else ""  # noqa: E731
        dp = "n/a (no spread: deterministic fill, K=1)" if not math.isfinite(self.d_prime) else f"{self.d_prime:.2f}"
        lines = [f"regions   S_high {self.n_high} px, S_low {self.n_low} px ({self.granularity}, fill {self.fill})"]
        if self.criterion == "beyond-prior":
            lines += [
                f"d_high    {self.d_high:.4f} rad{sd(self.sd_high)}   (prior map: {self.prior_d_high:.4f})",
                f"d_low     {self.d_low:.4f} rad{sd(self.sd_low)}   (prior map: {self.prior_d_low:.4f})",
                f"excess    {self.excess:.4f} rad = margin {self.margin:.4f} - prior's margin "
                f"{self.prior_d_high - self.prior_d_low:.4f}   > delta {self.delta:.4f}   {ok(COND_PRIOR)}",
            ]
        else:
            lines += [
                f"d_high    {self.d_high:.4f} rad{sd(self.sd_high)}   > tau_high {self.tau_high:.4f}   {ok(COND_HIGH)}",
                f"d_low     {self.d_low:.4f} rad{sd(self.sd_low)}   < tau_low  {self.tau_low:.4f}   {ok(COND_LOW)}",
                f"margin    {self.margin:.4f} rad   >= epsilon {self.epsilon:.4f}   {ok(COND_MARGIN)}",
            ]
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


def verdict_of(d_high: float, d_low: float, tau_high: float, tau_low: float, epsilon: float) -> tuple[str, tuple[str, ...]]:
    """("passed", ()) or ("falsified", the failed conditions)."""
    failed = []
    if not d_high > tau_high:
        failed.append(COND_HIGH)
    if not d_low < tau_low:
        failed.append(COND_LOW)
    if not (d_high - d_low) >= epsilon:
        failed.append(COND_MARGIN)
    return ("falsified" if failed else "passed"), tuple(failed)


def verdict_beyond_prior(excess: float, delta: float) -> tuple[str, tuple[str, ...]]:
    """The ``beyond-prior`` criterion: the map's margin must exceed the prior's margin on the same
    image by more than ``delta``: excess = (d_high - d_low) - (prior_high - prior_low) > delta.
    Strict, so the prior itself (excess 0) is falsified at delta = 0."""
    if excess > delta:
        return "passed", ()
    return "falsified", (COND_PRIOR,)


def _distances(f_x: torch.Tensor, emb: torch.Tensor, reference: torch.Tensor | None, target: str) -> torch.Tensor:
    """How far each counterfactual embedding in ``emb`` moved, in radians: from f(x) itself
    (``embedding``), or along the pair's own question (``pair``: the change of its angle to the
    reference, |d_g(f(x'), r) - d_g(f(x), r)|)."""
    if target == "pair":
        r = reference.double().unsqueeze(0)
        return (geodesic_distance(emb, r) - geodesic_distance(f_x.unsqueeze(0), r)).abs()
    return geodesic_distance(f_x.unsqueeze(0), emb)


def _prior_distances(model, images, f_x, prior, config, pair_ids, device, cache, references=None) -> dict[int, tuple[float, float]]:
    """(d_high, d_low) of the prior map on each image, from ``cache`` or computed (deterministic
    fills: one forward per region; stochastic fills: the same K draws a map gets)."""
    prior = _as_tensor(prior, "prior").float()
    if tuple(prior.shape) != tuple(images.shape[-2:]):
        raise ValueError(f"prior must be (H, W) = {tuple(images.shape[-2:])}, got {tuple(prior.shape)}")
    k = config.k_effective
    todo = [i for i in range(images.shape[0]) if pair_ids[i] not in cache]
    if todo:
        embedder = _BatchedEmbedder(model, config.batch_size, 2 * k * len(todo), device)
        for i in todo:
            reg = regions_for(images[i], prior, config, pair_ids[i])
            high, low = _counterfactual_halves(images[i], reg, config, pair_ids[i])
            embedder.add(high)
            embedder.add(low)
        emb = embedder.finish()
        for j, i in enumerate(todo):
            ref = None if references is None else references[i]
            d = _distances(f_x[i].double(), emb[2 * k * j : 2 * k * (j + 1)].double(), ref, config.target)
            cache[pair_ids[i]] = (float(d[:k].mean()), float(d[k:].mean()))
    return {pair_ids[i]: cache[pair_ids[i]] for i in range(images.shape[0])}


def d_prime_of(margin: float, sd_high: float, sd_low: float) -> float:
    """Separation in pooled-spread units; nan when both spreads are 0 (e.g. K = 1)."""
    pooled = math.sqrt((sd_high**2 + sd_low**2) / 2.0)
    return margin / pooled if pooled > 0 else float("nan")


# --- input checking ----------------------------------------------------------------------------

def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def check_inputs(model, images, references, maps) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Validate and normalise shapes: images (B,3,H,W) in [0,1], references (B,D) or None, maps (B,H,W)."""
    images = _as_tensor(images, "images")
    maps = _as_tensor(maps, "maps")
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
        references = _as_tensor(references, "references")
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

class _BatchedEmbedder:
    """Collects counterfactuals and embeds them in forward passes of exactly ``batch_size``."""

    def __init__(self, model, batch_size: int, total: int, device: torch.device) -> None:
        self.model, self.batch_size, self.device = model, batch_size, device
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.done = 0
        self.out: torch.Tensor | None = None
        self.total = total

    def add(self, images: torch.Tensor) -> None:
        self.pending.append(images)
        self.n_pending += images.shape[0]
        while self.n_pending >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> torch.Tensor:
        if self.n_pending:
            self._run(self.n_pending)
        if self.out is None:
            return torch.empty(0, 0)
        return self.out

    def _take(self, n: int) -> torch.Tensor:
        """The first ``n`` pending images, copying only when they span several added tensors."""
        parts, got = [], 0
        while got < n:
            head = self.pending[0]
            need = n - got
            if head.shape[0] <= need:
                parts.append(head)
                self.pending.pop(0)
                got += head.shape[0]
            else:
                parts.append(head[:need])
                self.pending[0] = head[need:]
                got = n
        self.n_pending -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, n: int) -> None:
        batch = self._take(n)
        with torch.inference_mode():
            emb = self.model(batch.to(self.device)).float().cpu()
        if self.out is None:
            self.out = torch.empty(self.total, emb.shape[1])
        self.out[self.done : self.done + n] = emb
        self.done += n


def _embed(model, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            outs.append(model(images[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outs)


def regions_for(image: torch.Tensor, attribution: torch.Tensor, config: FalsificationConfig, pair_id: int) -> Regions:
    """S_high and S_low of one map under ``config`` (tie-breaking seeded by seed and pair id)."""
    return make_regions(
        attribution,
        granularity=config.granularity,
        grid=config.grid,
        n_segments=config.n_segments,
        compactness=config.compactness,
        mode=config.region,
        q=config.q,
        theta_high=config.theta_high,
        theta_low=config.theta_low,
        image=image,
        generator=pair_generator(config.seed, pair_id, _STREAM_REGIONS),
    )


def build_counterfactuals(image: torch.Tensor, regions: Regions, config: FalsificationConfig, pair_id: int) -> torch.Tensor:
    """The 2K counterfactuals of one image for a fixed fill: rows 0..K-1 hide S_high, K..2K-1 S_low.

    Stochastic fills draw the high samples, then the low samples, from one generator seeded by
    (seed, pair id): the same pair gives the same counterfactuals in any batch.
    """
    k = config.k_effective
    gen = pair_generator(config.seed, pair_id, _STREAM_FILL)
    kw = dict(generator=gen, noise_sigma=config.noise_sigma, blur_sigma=config.blur_sigma)
    if config.fill in DETERMINISTIC_FILLS:
        values = fill_image(image, config.fill, 1, **kw)
        v_high, v_low = values, values
    else:
        v_high = fill_image(image, config.fill, k, **kw)
        v_low = fill_image(image, config.fill, k, **kw)
    mh = regions.high.view(1, 1, *regions.high.shape)
    ml = regions.low.view(1, 1, *regions.low.shape)
    x = image.unsqueeze(0)
    high = torch.where(mh, v_high, x).expand(k, -1, -1, -1)
    low = torch.where(ml, v_low, x).expand(k, -1, -1, -1)
    return torch.cat([high, low])


def _counterfactual_halves(image, regions, config, pair_id) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`build_counterfactuals` as its (high, low) halves, without the copy into one tensor."""
    k = config.k_effective
    if config.fill != "noise":
        cfs = build_counterfactuals(image, regions, config, pair_id)
        return cfs[:k], cfs[k:]
    gen = pair_generator(config.seed, pair_id, _STREAM_FILL)
    x = image.unsqueeze(0)
    halves = []
    for mask in (regions.high, regions.low):  # the same draws, in the same order, as fill_image
        eps = torch.randn((k, *image.shape), generator=gen, dtype=torch.float32).to(image.device, image.dtype)
        values = eps.mul_(config.noise_sigma).add_(x).clamp_(0.0, 1.0)
        halves.append(torch.where(mask.view(1, 1, *mask.shape), values, x))
    return halves[0], halves[1]


def _optimised_counterfactuals(model, images, regions_list, ref_emb, config, pair_ids, device, progress):
    """Algorithm 1 for every testable pair, in chunks of ``batch_size`` samples.

    Returns {pair index: (counterfactuals (2K,3,H,W), OptimisationInfo over those 2K)}.
    """
    k = config.k_effective
    rows = []  # (pair index, image, mask, init)
    for i, reg in enumerate(regions_list):
        if not reg.testable:
            continue
        gen = pair_generator(config.seed, pair_ids[i], _STREAM_FILL)
        x = images[i]
        for mask in (reg.high, reg.low):
            eps = torch.randn((k, *x.shape), generator=gen)
            init = (x.unsqueeze(0) + config.opt_init_sigma * eps * mask).clamp(0.0, 1.0)
            for j in range(k):
                rows.append((i, x, mask, init[j]))
    out: dict[int, list] = {}
    bar = tqdm(total=len(rows), desc="optimising", unit="cf", disable=not progress, leave=False)
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        idx = [r[0] for r in chunk]
        xs = torch.stack([r[1] for r in chunk]).to(device)
        ms = torch.stack([r[2] for r in chunk]).to(device)
        init = torch.stack([r[3] for r in chunk]).to(device)
        cf, info = optimise_counterfactuals(
            model,
            xs,
            ms,
            ref_emb[idx].to(device),
            init=init,
            steps=config.opt_steps,
            lr=config.opt_lr,
            lam=config.opt_lambda,
            delta_target=config.opt_delta_target,
            grad_clip=config.opt_grad_clip,
            tol=config.opt_tol,
            patience=config.opt_patience,
        )
        for r, i in enumerate(idx):
            out.setdefault(i, []).append((cf[r].cpu(), bool(info.converged[r]), int(info.iterations[r]), float(info.final_loss[r])))
        bar.update(len(chunk))
    bar.close()
    result = {}
    for i, items in out.items():
        cfs = torch.stack([t[0] for t in items])
        info = OptimisationInfo(
            torch.tensor([t[1] for t in items]), torch.tensor([t[2] for t in items]), torch.tensor([t[3] for t in items])
        )
        result[i] = (cfs, info)
    return result


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
) -> list[FalsificationResult]:
    """Test one attribution map per image; returns one :class:`FalsificationResult` per image.

    Parameters
    ----------
    model:
        A face embedder: ``(B, 3, H, W)`` RGB in [0, 1] at ``model.input_size`` -> unit ``(B, D)``.
    images:
        ``(B, 3, H, W)`` the explained images (x).
    references:
        ``(B, D)`` the other face's embedding of each pair (only used to report the pair's
        angle), or None. The distances are measured from f(x) of the image itself.
    maps:
        ``(B, H, W)`` attribution maps at the image's resolution (any real values in quantile
        mode; [0, 1] in threshold mode).
    config:
        :class:`FalsificationConfig` with ``tau_high``, ``tau_low`` and ``epsilon`` set (e.g.
        ``calibrate(model, pairs).apply(FalsificationConfig())``).
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

    All 2K counterfactuals of every image go through the model in batches of
    ``config.batch_size``; f(x) is computed once per image.
    """
    config = config or FalsificationConfig()
    if not config.has_criterion:
        raise ValueError(
            "the criterion needs tau_high, tau_low and epsilon (and delta for 'beyond-prior'; radians): set "
            "them in FalsificationConfig(...) or calibrate them for this model with "
            "config = calibrate(model, pairs).apply(config)"
        )
    if config.target == "pair" and references is None:
        raise ValueError("target='pair' measures how far each counterfactual moves the pair's angle: pass the "
                         "references (the other face's embedding of each pair)")
    if config.criterion == "beyond-prior" and prior is None:
        raise ValueError("the 'beyond-prior' criterion needs prior=... (H, W): the model's prior map, from "
                         "falsify.falsification.prior.occlusion_prior(model, images).map()")
    images, references, maps = check_inputs(model, images, references, maps)
    b = images.shape[0]
    if pair_ids is None:
        pair_ids = list(range(b))
    pair_ids = [int(p) for p in pair_ids]
    if len(pair_ids) != b:
        raise ValueError(f"pair_ids needs one id per image ({b}), got {len(pair_ids)}")
    device = model_device(model)
    k = config.k_effective

    regions_list = [regions_for(images[i], maps[i], config, pair_ids[i]) for i in range(b)]
    f_x = _embed(model, images, config.batch_size, device)  # once per image
    if references is not None and references.shape[1] != f_x.shape[1]:
        raise ValueError(
            f"references have {references.shape[1]} dimensions but the model's embeddings have "
            f"{f_x.shape[1]}: pass model(other_images) of the same model"
        )
    testable = [i for i, r in enumerate(regions_list) if r.testable]

    cf_keep: dict[int, torch.Tensor] = {}
    opt_info: dict[int, OptimisationInfo] = {}
    if config.fill == "optimised":
        optimised = _optimised_counterfactuals(model, images, regions_list, f_x, config, pair_ids, device, progress)
        embedder = _BatchedEmbedder(model, config.batch_size, 2 * k * len(testable), device)
        for i in testable:
            cfs, info = optimised[i]
            opt_info[i] = info
            embedder.add(cfs)
            if keep_examples:
                cf_keep[i] = cfs[[0, k]].clone()
        emb = embedder.finish()
    else:
        embedder = _BatchedEmbedder(model, config.batch_size, 2 * k * len(testable), device)
        bar = tqdm(total=len(testable), desc="counterfactuals", unit="pair", disable=not progress, leave=False)
        for i in testable:
            high, low = _counterfactual_halves(images[i], regions_list[i], config, pair_ids[i])
            embedder.add(high)
            embedder.add(low)
            if keep_examples:
                cf_keep[i] = torch.stack([high[0], low[0]])
            bar.update(1)
        emb = embedder.finish()
        bar.close()

    pair_angles = None
    if references is not None:
        pair_angles = geodesic_distance(f_x.double(), references.double())
    prior_d: dict[int, tuple[float, float]] = {}
    if config.criterion == "beyond-prior":
        prior_d = _prior_distances(model, images, f_x, prior, config, pair_ids, device,
                                   prior_cache if prior_cache is not None else {}, references)

    results = []
    row = 0
    for i in range(b):
        reg = regions_list[i]
        common = dict(
            pair_id=pair_ids[i],
            tau_high=float(config.tau_high),
            tau_low=float(config.tau_low),
            epsilon=float(config.epsilon),
            fill=config.fill,
            granularity=config.granularity,
            pair_angle=None if pair_angles is None else float(pair_angles[i]),
            criterion=config.criterion,
            delta=None if config.delta is None else float(config.delta),
        )
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
        e = emb[row : row + 2 * k].double()
        row += 2 * k
        d = _distances(f_x[i].double(), e, None if references is None else references[i], config.target)
        dh, dl = d[:k], d[k:]
        d_high, d_low = float(dh.mean()), float(dl.mean())
        sd_high = float(dh.std(unbiased=True)) if k > 1 else 0.0
        sd_low = float(dl.std(unbiased=True)) if k > 1 else 0.0
        margin = d_high - d_low
        extra = {}
        if config.criterion == "beyond-prior":
            p_high, p_low = prior_d[pair_ids[i]]
            excess = margin - (p_high - p_low)
            verdict, failed = verdict_beyond_prior(excess, config.delta)
            extra.update(prior_d_high=p_high, prior_d_low=p_low, excess=excess)
        else:
            verdict, failed = verdict_of(d_high, d_low, config.tau_high, config.tau_low, config.epsilon)
        if i in opt_info:
            info = opt_info[i]
            extra.update(
                converged_high=float(info.converged[:k].float().mean()),
                converged_low=float(info.converged[k:].float().mean()),
                iterations_high=float(info.iterations[:k].float().mean()),
                iterations_low=float(info.iterations[k:].float().mean()),
            )
        if keep_examples:
            extra.update(example_high=cf_keep[i][0], example_low=cf_keep[i][1])
        results.append(
            FalsificationResult(
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
        )
    return results
