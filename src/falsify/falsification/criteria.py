"""The criterion of the falsification test: the last stage, which turns d_high and d_low into a verdict.

A criterion is a :class:`Criterion` subclass registered under its name with
:func:`register_criterion`; ``FalsificationConfig(criterion=NAME)`` picks it
(:func:`criterion_for`), and ``falsification_test`` only calls its hooks:

- ``thresholds``: the config fields it needs (``FalsificationConfig.has_criterion``), and of
  them ``verdict_thresholds``, those its verdict reads (reports mark the others unused);
- ``needs_prior``: whether the call needs the model's prior map (runs and ``falsify test`` then
  build it), and ``prior_calibrated``: the threshold that can be calibrated on the prior's
  images (:func:`falsify.falsification.prior.calibrate_delta`: ``--delta calibrated``);
- ``fields``: the fields it adds to each result (``FalsificationResult``: its own attributes,
  or for a new criterion ``criterion_fields``, flattened into ``to_dict()``);
- ``monotone``: whether a passing verdict stays passing when d_high grows and d_low shrinks
  (the test's ceiling then stops its search once its sets pass, ``falsify.falsification.ceiling``);
- :meth:`Criterion.check_inputs`: refuse a call that lacks an input it needs (e.g. the prior);
- :meth:`Criterion.prepare`: work done once per call before judging (e.g. the prior's distances,
  or the distances of each map's sets reflected, from ``regions``);
- :meth:`Criterion.judge`: the verdict of one image, the conditions that failed, and the
  criterion's own fields of the result;
- :meth:`Criterion.lines`: its lines in ``FalsificationResult.format``;
- its explanation in reports: ``rule`` (plain text, :meth:`Criterion.describe`), :meth:`Criterion.explain_html`
  and :meth:`Criterion.explain_tex` (a report falls back to the name when they give None).

Three are built in: :class:`Absolute` (``absolute``), :class:`BeyondPrior` (``beyond-prior``) and
:class:`BeyondMirror` (``beyond-mirror``).
Adding one is a subclass with a new name and :func:`register_criterion` (and the name in
``falsify.choices.CRITERIA`` for the command line); nothing in the test, the runner, the CLI or
the report changes: they ask the criterion, never its name.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..choices import CRITERIA
from .stages import BatchedEmbedder, as_tensor, distances, fill_for, regions_for

COND_HIGH = "d_high<=tau_high"
COND_LOW = "d_low>=tau_low"
COND_MARGIN = "margin<epsilon"
COND_PRIOR = "excess<delta"
COND_MIRROR = "mirror-excess<delta"


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


def verdict_beyond_prior(excess: float, delta: float, tie: float = 0.0) -> tuple[str, tuple[str, ...]]:
    """The ``beyond-prior`` criterion: the map's margin must exceed the prior's margin on the same
    image by more than ``delta``: excess = (d_high - d_low) - (prior_high - prior_low) > delta.
    Strict, so the prior itself (excess 0) is falsified at delta = 0. ``tie``: the excess's float32
    rounding (:func:`falsify.geometry.excess_rounding`); an excess within it of delta is a tie and
    falsified, so rounding noise (another thread count, another batch) cannot decide the verdict."""
    if excess > delta + tie:
        return "passed", ()
    return "falsified", (COND_PRIOR,)


@dataclass
class Judgement:
    """A criterion's answer for one image."""

    verdict: str  # "passed" | "falsified"
    failed: tuple[str, ...] = ()  # the conditions that did not hold
    fields: dict = field(default_factory=dict)  # the criterion's own fields of FalsificationResult


class Criterion:
    """A falsification criterion (see the module's docstring for the hooks)."""

    #: the name ``FalsificationConfig(criterion=...)`` selects it by
    name: ClassVar[str] = ""
    #: the config fields (radians) that must be set before the test runs
    thresholds: ClassVar[tuple[str, ...]] = ("tau_high", "tau_low", "epsilon")
    #: of ``thresholds``, those the verdict reads (the others are recorded, not used)
    verdict_thresholds: ClassVar[tuple[str, ...]] = ("tau_high", "tau_low", "epsilon")
    #: whether ``falsification_test`` needs the model's prior map (``prior=``)
    needs_prior: ClassVar[bool] = False
    #: the threshold calibrated on the prior's images when asked (``delta="calibrated"``), or None
    prior_calibrated: ClassVar[str | None] = None
    #: the fields :meth:`judge` adds to each result
    fields: ClassVar[tuple[str, ...]] = ()
    #: a passing verdict stays passing when d_high grows and d_low shrinks (False: not promised)
    monotone: ClassVar[bool] = False
    #: its rule in one plain line, for reports (:meth:`describe`)
    rule: ClassVar[str] = ""
    #: the ``centre`` map (the prior itself) is falsified by construction under it (its comparator)
    falsifies_centre: ClassVar[bool] = False

    def __init__(self, config) -> None:
        self.config = config

    def check_inputs(self, *, prior=None) -> None:
        """Raise ValueError when the call lacks an input this criterion needs."""

    def prepare(self, model, images: torch.Tensor, f_x: torch.Tensor, references: torch.Tensor | None,
                pair_ids: Sequence[int], device, *, prior=None, prior_cache: dict | None = None,
                regions: Sequence | None = None) -> None:
        """Work done once per call, before :meth:`judge` (default: none). ``regions``: each image's
        ``Regions`` of the map under test (None where the caller judges sets of its own)."""

    def judge(self, pair_id: int, d_high: float, d_low: float) -> Judgement:
        raise NotImplementedError

    @classmethod
    def lines(cls, result, sd: Callable[[float], str]) -> list[str]:
        """The lines of ``result.format()`` that show this criterion's conditions (``sd(x)`` formats
        a spread)."""
        return []

    @staticmethod
    def ok(result, cond: str) -> str:
        return "FAILED" if cond in result.failed else "ok"

    @classmethod
    def describe(cls) -> str | None:
        """``NAME: rule``, the criterion in one plain line (reports' threshold tables); None
        without a ``rule``."""
        return f"{cls.name}: {cls.rule}" if cls.rule else None

    @classmethod
    def explain_html(cls, c: Mapping[str, Any], n_prior_images: int | None) -> str | None:
        """The report's sentences on the criterion (HTML). ``c``: the run's criterion as
        ``falsify.report.tables.criterion_of`` reads it from the summary (``delta``, ``tau_high``,
        ``tau_low``, ``epsilon``: floats or None; ``calibration``: how a prior-calibrated threshold
        was calibrated, with ``quantile``, ``n`` and ``excess_median`` as numbers or None, or
        None); ``n_prior_images``: the images the prior map averages. None: the report names the
        criterion only."""
        return None

    @classmethod
    def explain_tex(cls, c: Mapping[str, Any]) -> str | None:
        """The table caption's sentence on the criterion (LaTeX), from ``c`` as for
        :meth:`explain_html`; None: the caption names the criterion only."""
        return None


#: criterion name -> its class
CRITERION_CLASSES: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    CRITERION_CLASSES[cls.name] = cls
    return cls


def criterion_for(config) -> Criterion:
    """The criterion of ``config.criterion``, for ``config``."""
    try:
        cls = CRITERION_CLASSES[config.criterion]
    except KeyError:
        raise ValueError(f"unknown criterion {config.criterion!r}; use one of {tuple(CRITERION_CLASSES)}") from None
    return cls(config)


@register_criterion
class Absolute(Criterion):
    """The map passes when d_high > tau_high, d_low < tau_low and d_high - d_low >= epsilon."""

    name = "absolute"
    monotone = True
    rule = "a map passes when d_high > τ_high, d_low < τ_low and d_high − d_low ≥ ε"

    def judge(self, pair_id, d_high, d_low):
        c = self.config
        return Judgement(*verdict_of(d_high, d_low, c.tau_high, c.tau_low, c.epsilon))

    @classmethod
    def lines(cls, result, sd):
        r = result
        return [
            f"d_high    {r.d_high:.4f} rad{sd(r.sd_high)}   > tau_high {r.tau_high:.4f}   {cls.ok(r, COND_HIGH)}",
            f"d_low     {r.d_low:.4f} rad{sd(r.sd_low)}   < tau_low  {r.tau_low:.4f}   {cls.ok(r, COND_LOW)}",
            f"margin    {r.margin:.4f} rad   >= epsilon {r.epsilon:.4f}   {cls.ok(r, COND_MARGIN)}",
        ]

    @classmethod
    def explain_html(cls, c, n_prior_images):
        values = ""
        if None not in (c["tau_high"], c["tau_low"], c["epsilon"]):
            values = (f" (&tau;<sub>high</sub> = {c['tau_high']:.3f}, &tau;<sub>low</sub> = {c['tau_low']:.3f}, "
                      f"&epsilon; = {c['epsilon']:.3f} rad)")
        return ("Criterion: <b>absolute thresholds</b>. The map <i>passes</i> when hiding the top-ranked features "
                "moves the embedding far (d<sub>high</sub> &gt; &tau;<sub>high</sub>), hiding the bottom-ranked ones "
                "barely moves it (d<sub>low</sub> &lt; &tau;<sub>low</sub>) and the gap is at least &epsilon;"
                f"{values}; otherwise it is <i>falsified</i>.")

    @classmethod
    def explain_tex(cls, c):
        text = (r"Criterion: absolute thresholds; a map passes iff $d_{\mathrm{high}} > \tau_{\mathrm{high}}$,"
                r" $d_{\mathrm{low}} < \tau_{\mathrm{low}}$ and $d_{\mathrm{high}} - d_{\mathrm{low}} \ge \epsilon$")
        if None not in (c["tau_high"], c["tau_low"], c["epsilon"]):
            text += (rf" ($\tau_{{\mathrm{{high}}}} = {c['tau_high']:.3f}$, $\tau_{{\mathrm{{low}}}} = {c['tau_low']:.3f}$,"
                     rf" $\epsilon = {c['epsilon']:.3f}$ rad)")
        return text + "."


@register_criterion
class BeyondPrior(Criterion):
    """The map passes when its margin d_high - d_low exceeds the margin of the model's prior map
    on the same image (same regions rule, same fill, same draws) by more than ``delta``."""

    name = "beyond-prior"
    thresholds = ("tau_high", "tau_low", "epsilon", "delta")
    verdict_thresholds = ("delta",)
    needs_prior = True
    prior_calibrated = "delta"
    fields = ("prior_d_high", "prior_d_low", "excess")
    monotone = True
    falsifies_centre = True
    rule = "a map passes when its margin d_high − d_low exceeds the prior map's margin on the same image by more than δ"

    def check_inputs(self, *, prior=None):
        if prior is None:
            raise ValueError("the 'beyond-prior' criterion needs prior=... (H, W): the model's prior map, from "
                             "falsify.falsification.prior.occlusion_prior(model, images).map()")

    def prepare(self, model, images, f_x, references, pair_ids, device, *, prior=None, prior_cache=None, regions=None):
        self.prior_d = prior_distances(model, images, f_x, prior, self.config, pair_ids, device,
                                       prior_cache if prior_cache is not None else {}, references)
        from ..geometry import excess_rounding

        self.tie = excess_rounding(int(f_x.shape[1]))

    def judge(self, pair_id, d_high, d_low):
        p_high, p_low = self.prior_d[pair_id]
        excess = (d_high - d_low) - (p_high - p_low)
        verdict, failed = verdict_beyond_prior(excess, self.config.delta, getattr(self, "tie", 0.0))
        return Judgement(verdict, failed, dict(prior_d_high=p_high, prior_d_low=p_low, excess=excess))

    @classmethod
    def lines(cls, result, sd):
        r = result
        return [
            f"d_high    {r.d_high:.4f} rad{sd(r.sd_high)}   (prior map: {r.prior_d_high:.4f})",
            f"d_low     {r.d_low:.4f} rad{sd(r.sd_low)}   (prior map: {r.prior_d_low:.4f})",
            f"excess    {r.excess:.4f} rad = margin {r.margin:.4f} - prior's margin "
            f"{r.prior_d_high - r.prior_d_low:.4f}   > delta {r.delta:.4f}   {cls.ok(r, COND_PRIOR)}",
        ]

    @classmethod
    def explain_html(cls, c, n_prior_images):
        e = html.escape
        over = f"over {n_prior_images} untested images" if n_prior_images is not None else "over untested images"
        delta = "&delta;" if c["delta"] is None else f"&delta; = {c['delta']:.3f} rad"
        text = ("Criterion: <b>beyond the prior</b>. The test is also run with the model's <i>prior map</i> (the "
                f"mean of its own occlusion maps {e(over)}: what hiding does to this model on any face); a map "
                "<i>passes</i> when its gap d<sub>high</sub> &minus; d<sub>low</sub> exceeds the prior's gap on the "
                f"same image by more than {delta}, and is <i>falsified</i> otherwise. ")
        cal = c["calibration"]
        if cal is not None:
            q, n, med = cal["quantile"], cal["n"], cal["excess_median"]
            quant = "a high" if q is None else f"the {100 * q:g}%"
            detail = ", ".join(x for x in (None if n is None else f"{n} tests",
                                           None if med is None else f"median excess {med:.3f} rad") if x)
            text += (f"&delta; was calibrated: it is {e(quant)} quantile of the excess over the prior that maps "
                     "knowing only the prior (the prior map, its cells reordered at random within bands of its "
                     "range) reach on those untested images" + (f" ({e(detail)})" if detail else "")
                     + ", so a map passes only if it beats the prior by more than such maps do.")
        elif c["delta"] is not None:
            text += "&delta; was given for the run, not calibrated."
        else:
            text += "&delta; is not recorded."
        return text

    @classmethod
    def explain_tex(cls, c):
        delta = r"$\delta$" if c["delta"] is None else rf"$\delta = {c['delta']:.3f}$ rad"
        text = (r"Criterion: beyond the prior; a map passes iff its margin $d_{\mathrm{high}} - d_{\mathrm{low}}$"
                r" exceeds the margin of the model's prior map on the same image by more than " + delta)
        cal = c["calibration"]
        if cal is not None:
            q, n = cal["quantile"], cal["n"]
            text += (" (calibrated: the " + ("" if q is None else rf"{100 * q:g}\% ") + "quantile of the excess"
                     " reached by maps that know only the prior" + ("" if n is None else f", {n} tests")
                     + ")")
        return text + "."


@register_criterion
class BeyondMirror(Criterion):
    """The map passes when its margin d_high - d_low exceeds, by more than ``delta``, the margin of
    its own sets reflected left-right (S_high and S_low mirrored across the image's middle column,
    the axis of an aligned face; same fill, same draws): the control has the map's shape, area and
    (on a left-right symmetric prior) its prior mass, on the same image. A map whose sets are their
    own mirror makes no left-right claim: its excess is 0, falsified. See docs/method.md."""

    name = "beyond-mirror"
    thresholds = ("tau_high", "tau_low", "epsilon", "delta")
    verdict_thresholds = ("delta",)
    needs_prior = True  # delta's calibration (maps that know only the prior) and the centre control
    prior_calibrated = "delta"
    fields = ("mirror_d_high", "mirror_d_low", "excess")
    monotone = False  # the control moves with the sets: the ceiling's early stop cannot use it
    rule = ("a map passes when its margin d_high − d_low exceeds the margin of its own sets reflected left-right "
            "on the same image by more than δ")

    def prepare(self, model, images, f_x, references, pair_ids, device, *, prior=None, prior_cache=None, regions=None):
        from ..geometry import excess_rounding

        if regions is None:
            raise ValueError("the 'beyond-mirror' criterion judges a map's own sets: call it through falsification_test")
        self.mirror_d = mirror_distances(model, images, f_x, regions, self.config, pair_ids, device, references)
        self.tie = excess_rounding(int(f_x.shape[1]))

    def judge(self, pair_id, d_high, d_low):
        m_high, m_low = self.mirror_d[pair_id]
        excess = (d_high - d_low) - (m_high - m_low)
        verdict, failed = verdict_beyond_prior(excess, self.config.delta, getattr(self, "tie", 0.0))
        failed = tuple(COND_MIRROR for _ in failed)
        return Judgement(verdict, failed, dict(mirror_d_high=m_high, mirror_d_low=m_low, excess=excess))

    @classmethod
    def lines(cls, result, sd):
        r = result
        f = r.criterion_fields
        return [
            f"d_high    {r.d_high:.4f} rad{sd(r.sd_high)}   (mirrored sets: {f['mirror_d_high']:.4f})",
            f"d_low     {r.d_low:.4f} rad{sd(r.sd_low)}   (mirrored sets: {f['mirror_d_low']:.4f})",
            f"excess    {r.excess:.4f} rad = margin {r.margin:.4f} - mirrored margin "
            f"{f['mirror_d_high'] - f['mirror_d_low']:.4f}   > delta {r.delta:.4f}   {cls.ok(r, COND_MIRROR)}",
        ]

    @classmethod
    def explain_html(cls, c, n_prior_images):
        delta = "&delta;" if c["delta"] is None else f"&delta; = {c['delta']:.3f} rad"
        text = ("Criterion: <b>beyond the mirror</b>. Each map's sets are also tested reflected left-right across "
                "the aligned face's middle (same shape, same area, on a symmetric face the same prior mass); a map "
                "<i>passes</i> when its gap d<sub>high</sub> &minus; d<sub>low</sub> exceeds the mirrored sets' gap by "
                f"more than {delta}. A map whose sets are their own mirror makes no left-right claim and is "
                "<i>falsified</i>. ")
        cal = c["calibration"]
        if cal is not None:
            q, n = cal["quantile"], cal["n"]
            quant = "a high" if q is None else f"the {100 * q:g}%"
            text += (f"&delta; was calibrated: {html.escape(quant)} quantile of the excess that maps knowing only the "
                     "model's prior reach on untested images" + ("" if n is None else f" ({n} tests)") + ".")
        return text

    @classmethod
    def explain_tex(cls, c):
        delta = r"$\delta$" if c["delta"] is None else rf"$\delta = {c['delta']:.3f}$ rad"
        return (r"Criterion: beyond the mirror; a map passes iff its margin $d_{\mathrm{high}} - d_{\mathrm{low}}$"
                r" exceeds the margin of its own sets reflected left-right by more than " + delta + ".")


def mirrored(regions):
    """``regions`` with S_high and S_low reflected across the image's middle column."""
    from dataclasses import replace

    return replace(regions, high=torch.flip(regions.high, dims=[-1]), low=torch.flip(regions.low, dims=[-1]))


def mirror_distances(model, images, f_x, regions, config, pair_ids, device, references=None) -> dict[int, tuple[float, float]]:
    """(d_high, d_low) of each image's sets reflected left-right (:func:`mirrored`), under the same
    fill with the same draws (the pair id's streams) as the map's own; untestable sets give (nan, nan)."""
    todo = [i for i, r in enumerate(regions) if r.testable]
    out = {pair_ids[i]: (float("nan"), float("nan")) for i in range(len(regions))}
    got = sets_distances(model, images, f_x, todo, [mirrored(regions[i]) for i in todo], config, pair_ids, device,
                         references)
    out.update({pair_ids[i]: d for i, d in zip(todo, got)})
    return out


def prior_distances(model, images, f_x, prior, config, pair_ids, device, cache, references=None) -> dict[int, tuple[float, float]]:
    """(d_high, d_low) of the prior map on each image, from ``cache`` (keyed by pair id) or
    computed: the prior's regions, the same fill with the same draws a map gets, the distances."""
    prior = as_tensor(prior, "prior").float()
    if tuple(prior.shape) != tuple(images.shape[-2:]):
        raise ValueError(f"prior must be (H, W) = {tuple(images.shape[-2:])}, got {tuple(prior.shape)}")
    todo = [i for i in range(images.shape[0]) if pair_ids[i] not in cache]
    regions = [regions_for(images[i], prior, config, pair_ids[i]) for i in todo]
    got = sets_distances(model, images, f_x, todo, regions, config, pair_ids, device, references)
    cache.update({pair_ids[i]: d for i, d in zip(todo, got)})
    return {pair_ids[i]: cache[pair_ids[i]] for i in range(images.shape[0])}


def sets_distances(model, images, f_x, todo: Sequence[int], regions: Sequence, config, pair_ids, device,
                   references=None) -> list[tuple[float, float]]:
    """(d_high, d_low) of ``regions[j]`` on image ``todo[j]``: the config's fill with the pair id's
    draws, every counterfactual embedded in batches of ``config.batch_size``, the mean distances."""
    if not todo:
        return []
    k = config.k_effective
    embedder = BatchedEmbedder(model, config.batch_size, 2 * k * len(todo), device)
    for cf in fill_for(config).counterfactuals(model, [images[i] for i in todo], list(regions), f_x[list(todo)],
                                               [pair_ids[i] for i in todo]):
        embedder.add(cf.high)
        embedder.add(cf.low)
    emb = embedder.finish()
    out = []
    for j, i in enumerate(todo):
        ref = None if references is None else references[i]
        d = distances(f_x[i].double(), emb[2 * k * j : 2 * k * (j + 1)].double(), ref, config.target)
        out.append((float(d[:k].mean()), float(d[k:].mean())))
    return out


_missing = [name for name in CRITERIA if name not in CRITERION_CLASSES]
if _missing:
    raise ImportError(f"falsify.choices.CRITERIA names criteria with no class: {_missing}")
