"""Per-model thresholds for the falsification criterion.

A dlib embedding and an ArcFace embedding live at different angles: dlib calls two faces the
same person below about 0.42 rad, ArcFace-style models near 1.2-1.3 rad. So tau_high, tau_low and
epsilon are derived from the model's own genuine and impostor angle distributions on real pairs:

- theta* -- the verification threshold angle: ``arccos`` of the cosine threshold with the best
  accuracy on the pairs (``falsify.verification.best_threshold``);
- ``tau_high = high_fraction * theta*`` (default 1/2): hiding S_high must move the embedding at
  least half-way to the model's decision boundary;
- ``tau_low = low_fraction * theta*`` (default 1/4): hiding S_low must move it less than a quarter
  of the way;
- ``epsilon = median(impostor angles) - median(genuine angles)``: hiding S_high must move the
  embedding farther than hiding S_low by at least the model's typical gap between "another photo
  of the same person" and "another person".

Why these and not ``tau_high = theta*``: see docs/method.md (falsification test) -- on dlib with blurred 20%
regions even the model's own occlusion map is falsified in most pairs with ``tau_high = theta*``.
``python docs/scripts/calibration_study.py --data DIR`` prints a calibration, and with
``--study N`` reruns the measurements the defaults were chosen from.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..models.base import model_device
from ..verification import best_threshold

QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)


@dataclass(frozen=True)
class Calibration:
    """A model's angle distributions on pairs, and the thresholds derived from them (radians)."""

    model: str
    source: str
    n_genuine: int
    n_impostor: int
    threshold_cos: float  # best-accuracy cosine threshold on the pairs
    threshold_angle: float  # theta* = arccos(threshold_cos)
    accuracy: float  # accuracy at that threshold (on the same pairs: optimistic)
    genuine_quantiles: dict[str, float]  # {"p5": ..., "p50": ..., "p95": ...}
    impostor_quantiles: dict[str, float]
    high_fraction: float
    low_fraction: float
    tau_high: float
    tau_low: float
    epsilon: float
    #: how far theta* (so tau_high and tau_low) and epsilon move between bootstrap resamples of
    #: the pairs (:func:`calibration_spread`); None in calibrations stored by an older falsify
    spread: dict | None = None

    @property
    def genuine_median(self) -> float:
        return self.genuine_quantiles["p50"]

    @property
    def impostor_median(self) -> float:
        return self.impostor_quantiles["p50"]

    def apply(self, config=None):
        """``config`` (default: a fresh FalsificationConfig) with tau_high, tau_low, epsilon set."""
        from .core import FalsificationConfig

        config = config or FalsificationConfig()
        return replace(config, tau_high=self.tau_high, tau_low=self.tau_low, epsilon=self.epsilon)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        def qs(d: dict[str, float]) -> str:
            return " ".join(f"{k}={v:.3f}" for k, v in d.items())

        return "\n".join(
            [
                f"model        {self.model}",
                f"pairs        {self.n_genuine} genuine, {self.n_impostor} impostor ({self.source})",
                f"threshold    cos >= {self.threshold_cos:.4f}, angle theta* = {self.threshold_angle:.4f} rad "
                f"(accuracy {self.accuracy:.2%} on these pairs)",
                f"genuine      {qs(self.genuine_quantiles)}",
                f"impostor     {qs(self.impostor_quantiles)}",
                f"tau_high     {self.tau_high:.4f} rad = {self.high_fraction:g} * theta*",
                f"tau_low      {self.tau_low:.4f} rad = {self.low_fraction:g} * theta*",
                f"epsilon      {self.epsilon:.4f} rad = median impostor - median genuine angle",
            ]
            + ([f"spread       95% of {self.spread['n_boot']} resamples of the pairs: theta* in "
                f"[{self.spread['theta'][0]:.4f}, {self.spread['theta'][1]:.4f}] rad, epsilon in "
                f"[{self.spread['epsilon'][0]:.4f}, {self.spread['epsilon'][1]:.4f}] rad (+/-"
                f"{self.spread['relative']:.1%}; pairs needed for +/-{CALIBRATION_PRECISION:.0%}: "
                f"{self.spread['pairs_needed']})"] if self.spread else [])
        )


def calibration_from_angles(
    angles,
    same,
    *,
    model: str = "",
    source: str = "",
    high_fraction: float = 0.5,
    low_fraction: float = 0.25,
) -> Calibration:
    """A :class:`Calibration` from pair angles (radians) and genuine flags."""
    angles = np.asarray(angles, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if angles.shape != same.shape or angles.ndim != 1:
        raise ValueError(f"angles and same must be 1-d and of equal length, got {angles.shape} and {same.shape}")
    if not np.isfinite(angles).all():
        raise ValueError("angles contain NaN or infinite values")
    n_gen, n_imp = int(same.sum()), int((~same).sum())
    if n_gen < 2 or n_imp < 2:
        raise ValueError(
            f"calibration needs genuine and impostor pairs (at least 2 of each, a few hundred "
            f"recommended), got {n_gen} genuine and {n_imp} impostor"
        )
    if not 0 < low_fraction < high_fraction <= 1.5:
        raise ValueError(
            f"need 0 < low_fraction < high_fraction (<= 1.5), got low_fraction={low_fraction}, "
            f"high_fraction={high_fraction}"
        )
    cos = np.cos(angles)
    th_cos = best_threshold(cos, same)
    th_angle = float(np.arccos(np.clip(th_cos, -1.0, 1.0)))
    acc = float(np.mean((cos >= th_cos) == same))
    gq = {f"p{round(q * 100)}": float(np.quantile(angles[same], q)) for q in QUANTILES}
    iq = {f"p{round(q * 100)}": float(np.quantile(angles[~same], q)) for q in QUANTILES}
    gap = iq["p50"] - gq["p50"]
    if not gap > 0:
        raise ValueError(
            f"the model does not separate these pairs (median impostor angle {iq['p50']:.4f} <= median "
            f"genuine angle {gq['p50']:.4f} rad): its thresholds would be meaningless; check the "
            "model, its preprocessing (input size, mean/std, channel order) and the pairs"
        )
    return Calibration(
        spread=calibration_spread(angles, same),
        model=model,
        source=source,
        n_genuine=n_gen,
        n_impostor=n_imp,
        threshold_cos=float(th_cos),
        threshold_angle=th_angle,
        accuracy=acc,
        genuine_quantiles=gq,
        impostor_quantiles=iq,
        high_fraction=float(high_fraction),
        low_fraction=float(low_fraction),
        tau_high=high_fraction * th_angle,
        tau_low=low_fraction * th_angle,
        epsilon=float(gap),
    )


#: Fewer genuine or impostor pairs than this, and the 5% and 95% quantiles of their angles lie
#: outside the data (1 / 0.05 = 20), and a bootstrap of so few values cannot say how precise they are.
MIN_PER_CLASS = 20

#: The relative precision a calibration should reach: the half-width of the 95% bootstrap interval
#: of theta* and of epsilon, as a share of their values (docs/method.md, "Calibration").
CALIBRATION_PRECISION = 0.10


def calibration_spread(angles, same, *, n_boot: int = 200, seed: int = 0,
                       precision: float = CALIBRATION_PRECISION) -> dict:
    """How much the calibration rests on the particular pairs: genuine and impostor pairs are
    resampled with replacement (each class on its own, ``n_boot`` times, seeded), and theta* and
    epsilon recomputed. Returns the 95% percentile intervals, ``relative`` (the larger half-width
    as a share of its value) and ``pairs_needed``: the pairs for ``precision``, assuming the
    half-width shrinks as 1/sqrt(n), at least the pairs used."""
    angles = np.asarray(angles, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    gen, imp = angles[same], angles[~same]
    rng = np.random.default_rng(seed)
    theta, eps = np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        g, m = rng.choice(gen, gen.size), rng.choice(imp, imp.size)
        both = np.concatenate([g, m])
        theta[i] = np.arccos(np.clip(best_threshold(np.cos(both), np.arange(both.size) < g.size), -1.0, 1.0))
        eps[i] = np.median(m) - np.median(g)
    out: dict = {"n_boot": n_boot}
    rel = 0.0
    for name, values, centre in (("theta", theta, np.median(theta)), ("epsilon", eps, np.median(eps))):
        lo, hi = (float(v) for v in np.quantile(values, [0.025, 0.975]))
        out[name] = [lo, hi]
        rel = max(rel, (hi - lo) / 2 / abs(centre) if centre else math.inf)
    out["relative"] = float(rel)
    n = int(angles.size)
    need = n if rel <= precision else int(math.ceil(n * (rel / precision) ** 2 / 10) * 10) if math.isfinite(rel) else None
    if min(gen.size, imp.size) < MIN_PER_CLASS:  # too few for the bootstrap to say how precise they are
        need = max(need or 0, 2 * MIN_PER_CLASS)
    out["pairs_needed"] = need
    return out


def spread_warning(cal: "Calibration", precision: float = CALIBRATION_PRECISION) -> str | None:
    """One line when ``cal`` rests on too few pairs for ``precision``, saying how many it needs."""
    sp = cal.spread
    few = min(cal.n_genuine, cal.n_impostor) < MIN_PER_CLASS
    if not sp or sp["relative"] <= precision and not few:
        return None
    n = cal.n_genuine + cal.n_impostor
    need = f"about {sp['pairs_needed']} pairs" if sp.get("pairs_needed") else "many more pairs"
    how = (f"fewer than {MIN_PER_CLASS} of a kind, too few to tell how far the thresholds could be off" if few else
           f"theta* and epsilon move by up to +/-{sp['relative']:.0%} between resamples of them")
    return (f"the thresholds rest on {n} pairs ({cal.n_genuine} genuine, {cal.n_impostor} impostor): {how}; "
            f"{need} are needed for +/-{precision:.0%} (more pairs in the data, --calibration-pairs, or "
            "--calibrate-on another data set)")


#: The calibration pairs are a seeded balanced sample drawn with ``seed + CALIBRATION_SEED_OFFSET``
#: (``seed`` being the run's or test's seed), so ``falsify run`` and ``falsify test`` with the same
#: seed judge a pair against the same thresholds.
CALIBRATION_SEED_OFFSET = 1


def calibration_pairs(data=None, pairs=None, *, n_pairs: int = 600, seed: int = 0):
    """The pairs thresholds are calibrated on: ``load_pairs(data, pairs)`` sampled to ``n_pairs``
    with ``seed + CALIBRATION_SEED_OFFSET``."""
    from ..data import load_pairs

    return load_pairs(data, pairs, n_pairs=n_pairs, seed=seed + CALIBRATION_SEED_OFFSET)


def calibrate(
    model: torch.nn.Module,
    pairs,
    *,
    batch_size: int = 64,
    progress: bool = False,
    high_fraction: float = 0.5,
    low_fraction: float = 0.25,
) -> Calibration:
    """Calibrate tau_high, tau_low and epsilon for ``model`` on ``pairs`` (a PairSet).

    >>> cal = calibrate(model, load_pairs("lfw-sample", n_pairs=600))
    >>> config = cal.apply(FalsificationConfig.preset("plain"))
    """
    from ..verification import pair_similarities

    usable, _, angles = pair_similarities(model, pairs, batch_size=batch_size, progress=progress)
    return calibration_from_angles(
        angles,
        [p.same for p in usable],
        model=getattr(model, "name", type(model).__name__),
        source=getattr(usable, "source", ""),
        high_fraction=high_fraction,
        low_fraction=low_fraction,
    )


def calibration_pool(data=None, pairs=None, *, calibrate_on=None, n_pairs: int = 600, seed: int = 0):
    """The pairs that the thresholds, the model's prior and delta are calibrated on, for ``falsify
    run`` and ``falsify test`` alike: :func:`calibration_pairs` of ``calibrate_on`` when it is given
    (another data set), else of the tested ``data`` (and its ``pairs`` file)."""
    data, pairs = (calibrate_on, None) if calibrate_on else (data, pairs)
    return calibration_pairs(data, pairs, n_pairs=n_pairs, seed=seed)


def calibrate_thresholds(model, pool, *, batch_size: int = 64, progress: bool = False, warn=None) -> Calibration:
    """:func:`calibrate` on ``pool``, and ``warn(line)`` (when given) with :func:`spread_warning`'s
    line when the thresholds rest on too few pairs."""
    cal = calibrate(model, pool, batch_size=batch_size, progress=progress)
    warning = spread_warning(cal)
    if warning and warn is not None:
        warn(warning)
    return cal


def threshold_placeholder(model, method: str, calibrating: bool) -> dict:
    """The options that let ``method`` be built (its options checked) before the calibration: a
    method that needs the model's decision threshold (``THRESHOLD_METHODS``) on a model without
    one of its own (a user's checkpoint, ``NAME:random``) gets ``threshold=0.0``, replaced by the
    calibrated one (:func:`adopt_threshold`); the method's own options override it."""
    from ..choices import THRESHOLD_METHODS

    needs = method in THRESHOLD_METHODS and getattr(model, "threshold", None) is None and calibrating
    return {"threshold": 0.0} if needs else {}


def adopt_threshold(model, calibration: "Calibration | None") -> float | None:
    """The decision threshold (cosine) of a run or test: the calibrated one when there is a
    calibration, else the model's own. A model without one of its own takes it, so the methods
    that need it (biometric-gradcam, xssab) read it from the model."""
    threshold = calibration.threshold_cos if calibration is not None else getattr(model, "threshold", None)
    if getattr(model, "threshold", None) is None:
        model.threshold = threshold
    return threshold


# --- the measurements behind the defaults --------------------------------------------------------

def occlusion_sensitivity(
    model: torch.nn.Module,
    images: torch.Tensor,
    grid: int = 10,
    fill: str = "blur",
    blur_sigma: float = 0.05,
    batch_size: int = 64,
) -> torch.Tensor:
    """The model's own occlusion map: for each of ``grid x grid`` cells, the geodesic distance
    between f(x) and f(x with that cell filled), painted over the cell. ``(B, H, W)``, radians.

    This is the "oracle" the defaults were tuned against: a map that ranks regions by exactly the
    quantity the test measures (one cell at a time).
    """
    from ..geometry import geodesic_distance
    from .counterfactuals import fill_image
    from .regions import feature_segments

    b, _, h, w = images.shape
    seg = feature_segments(h, w, "grid", grid=grid)
    masks = torch.stack([seg == c for c in range(grid * grid)]).unsqueeze(1)  # (C,1,H,W)
    device = model_device(model)
    maps = []
    with torch.inference_mode():
        for i in range(b):
            x = images[i]
            f0 = model(x.unsqueeze(0).to(device)).float().cpu()
            values = fill_image(x, fill, 1, blur_sigma=blur_sigma)[0]
            cf = torch.where(masks, values, x)
            emb = torch.cat([model(cf[s : s + batch_size].to(device)).float().cpu() for s in range(0, cf.shape[0], batch_size)])
            maps.append(geodesic_distance(f0, emb)[seg])
    return torch.stack(maps)


def _summary(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{np.median(v):.3f} [{np.percentile(v, 10):.3f}, {np.percentile(v, 90):.3f}]"


def study(
    model,
    pairs,
    n_images: int = 40,
    seed: int = 0,
    calibration: Calibration | None = None,
    optimised: int = 0,
    optimised_steps: int = 60,
    out=sys.stdout,
) -> dict:
    """Reruns the measurements in docs/method.md (falsification test); prints tables and returns the numbers.

    For ``n_images`` images (image A of a seeded balanced sample of pairs): the model's 10x10
    blur occlusion map, its inversion (1 - map) and a uniform random map are tested under each
    fill, several blur widths and candidate calibration rules; then the occlusion map with
    increasing cell-wise noise shows how the falsification rate grows as the map degrades.
    """
    from ..data import load_images
    from .core import FalsificationConfig, falsification_test

    def say(*a):
        print(*a, file=out, flush=True)

    sub = pairs.sample(n_images, seed=seed + 1)
    xa, _ = load_images([p.a for p in sub], model.input_size, align=getattr(model, "aligner", None))
    n = xa.shape[0]
    h, w = model.input_size
    t0 = time.time()
    occ = occlusion_sensitivity(model, xa, grid=10, fill="blur")
    say(f"# occlusion maps (10x10 cells, blur fill) for {n} images: {time.time() - t0:.0f} s")
    g = torch.Generator().manual_seed(seed)
    rand = torch.rand(n, h, w, generator=g)
    maps = {"occlusion": occ, "inverted": 1.0 - occ, "random": rand}
    loose = dict(tau_high=0.0, tau_low=math.pi, epsilon=0.0)  # criterion irrelevant: distances only
    record: dict = {"n_images": n, "fills": {}, "blur_sigma": {}, "rules": {}, "degraded": {}}

    _study_distances(model, xa, maps, seed, loose, record, say)
    base = FalsificationConfig.preset("plain", **loose)
    dist = {name: falsification_test(model, xa, None, mp, base) for name, mp in maps.items()}
    if calibration is not None:
        _study_rules(model, xa, occ, dist, calibration, seed, record, say)
    if optimised:
        _study_optimised(model, xa, occ, optimised, optimised_steps, loose, record, say)
    return record


def _study_distances(model, xa, maps, seed, loose, record, say) -> None:
    """The study's distance tables: by fill, by granularity and by blur width."""
    from .core import FalsificationConfig, falsification_test

    say("\n# distances by fill (grid 14, q 0.2): median [p10, p90] in rad")
    for fill, k in (("blur", 1), ("mean", 1), ("zero", 1), ("noise", 4)):
        cfg = FalsificationConfig.preset("plain", fill=fill, K=k, seed=seed, **loose)
        for name, mp in maps.items():
            rs = falsification_test(model, xa, None, mp, cfg)
            dh, dl = [r.d_high for r in rs], [r.d_low for r in rs]
            record["fills"][(fill, name)] = (float(np.median(dh)), float(np.median(dl)))
            spread = ""
            if k > 1:
                spread = f"  median sd over K={k}: {np.median([r.sd_high for r in rs]):.4f}/{np.median([r.sd_low for r in rs]):.4f}"
            say(f"fill={fill:<6} map={name:<9} d_high {_summary(dh)}  d_low {_summary(dl)}{spread}")

    say("\n# granularity (blur fill, q 0.2): median d_high / d_low; max |n_high - n_low| in px")
    for gran, grid in (("grid", 10), ("grid", 14), ("pixel", 14), ("superpixel", 14)):
        cfg = FalsificationConfig.preset("plain", granularity=gran, grid=grid, **loose)
        row = []
        for name, mp in maps.items():
            rs = falsification_test(model, xa, None, mp, cfg)
            dh, dl = float(np.median([r.d_high for r in rs])), float(np.median([r.d_low for r in rs]))
            gap = max(abs(r.n_high - r.n_low) for r in rs)
            record.setdefault("granularity", {})[(gran, grid, name)] = (dh, dl, gap)
            row.append(f"{name} {dh:.3f}/{dl:.3f} (area gap {gap})")
        label = f"{gran} {grid}x{grid}" if gran == "grid" else gran
        say(f"{label:<12} " + "  ".join(row))

    say("\n# blur width (fraction of the shorter side): median d_high / d_low")
    for bs in (0.02, 0.05, 0.1):
        cfg = FalsificationConfig.preset("plain", blur_sigma=bs, **loose)
        row = []
        for name, mp in maps.items():
            rs = falsification_test(model, xa, None, mp, cfg)
            dh, dl = float(np.median([r.d_high for r in rs])), float(np.median([r.d_low for r in rs]))
            record["blur_sigma"][(bs, name)] = (dh, dl)
            row.append(f"{name} {dh:.3f}/{dl:.3f}")
        say(f"blur_sigma={bs:<5} " + "  ".join(row))


def _study_rules(model, xa, occ, dist, calibration, seed, record, say) -> None:
    """The falsification rate of each candidate calibration rule on the maps' distances
    (``dist``), then of the occlusion map degraded by increasing cell-wise noise."""
    from .core import COND_HIGH, COND_LOW, COND_MARGIN, FalsificationConfig, falsification_test, verdict_of
    from .regions import feature_segments

    n = xa.shape[0]
    h, w = model.input_size
    th, gap = calibration.threshold_angle, calibration.epsilon
    rules = {
        "tau_high=theta*, tau_low=theta*/4, eps=theta*/4": (th, th / 4, th / 4),
        "tau_high=theta*/2, tau_low=theta*/4, eps=theta*/4": (th / 2, th / 4, th / 4),
        "tau_high=theta*/2, tau_low=theta*/4, eps=median gap (default)": (th / 2, th / 4, gap),
        "tau_high=median genuine, tau_low=theta*/4, eps=median gap": (calibration.genuine_median, th / 4, gap),
    }
    say(f"\n# falsification rate by calibration rule (theta* = {th:.4f}, median gap = {gap:.4f})")
    for rule, (a, b, c) in rules.items():
        rates = {}
        for name, rs in dist.items():
            rates[name] = float(np.mean([verdict_of(r.d_high, r.d_low, a, b, c)[0] == "falsified" for r in rs]))
        record["rules"][rule] = rates
        say(f"{rule:<62} " + "  ".join(f"{k} {v:.2f}" for k, v in rates.items()))

    say("\n# degraded occlusion maps: map + s * std(map) * N(0,1) per 14x14 cell, calibrated defaults")
    cfg = calibration.apply(FalsificationConfig.preset("plain"))
    seg = feature_segments(h, w, "grid", grid=14)
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        gn = torch.Generator().manual_seed(seed + 7)
        noise = torch.randn(n, 14 * 14, generator=gn)[:, seg]
        mp = occ + s * occ.flatten(1).std(dim=1).view(n, 1, 1) * noise
        rs = falsification_test(model, xa, None, mp, cfg)
        rate = float(np.mean([r.falsified for r in rs]))
        record["degraded"][s] = rate
        conds = {c: sum(c in r.failed for r in rs) for c in (COND_HIGH, COND_LOW, COND_MARGIN)}
        say(
            f"noise s={s:<4} falsified {rate:.2f}  median d_high {np.median([r.d_high for r in rs]):.3f} "
            f"d_low {np.median([r.d_low for r in rs]):.3f} margin {np.median([r.margin for r in rs]):.3f}  "
            "failed: " + ", ".join(f"{c} x{k}" for c, k in conds.items())
        )


def _study_optimised(model, xa, occ, optimised, optimised_steps, loose, record, say) -> None:
    """The optimised fill on the first ``optimised`` images' occlusion maps."""
    from .core import FalsificationConfig, falsification_test

    cfg = FalsificationConfig.preset("plain", fill="optimised", K=2, opt_steps=optimised_steps, **loose)
    say(f"\n# optimised fill (Algorithm 1, K=2, {optimised_steps} steps) on {optimised} images, occlusion map")
    t0 = time.time()
    rs = falsification_test(model, xa[:optimised], None, occ[:optimised], cfg)
    for r in rs:
        say(
            f"d_high {r.d_high:.3f}  d_low {r.d_low:.3f}  converged {r.converged_high:.0%}/{r.converged_low:.0%}  "
            f"steps {r.iterations_high:.0f}/{r.iterations_low:.0f}"
        )
    say(f"({time.time() - t0:.0f} s)")
    record["optimised"] = [(r.d_high, r.d_low) for r in rs]
