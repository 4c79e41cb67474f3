"""Statistics over falsification verdicts (scipy / statsmodels).

- :func:`wilson_interval`: the Wilson score interval of k successes in n, the one the whole
  package reports (statsmodels ``proportion_confint``).
- :func:`falsification_rate`: falsified / (passed + falsified) with a Wilson 95% interval;
  untestable maps are counted separately, never as passed or falsified.
- :func:`mcnemar_paired`: two methods run on the same pairs -- McNemar's exact test on the pairs
  where both are testable, with Cohen's h between their falsification rates.
- :func:`compare_paired`: every pair of methods by McNemar, Holm-corrected (:func:`holm`).
- :func:`compare_unpaired`: two methods on different pairs -- Fisher's exact test (or chi-square).
- :func:`bootstrap_ci`: a bootstrap interval (BCa by default) for e.g. the mean of d_high - d_low.

Verdict sequences may hold strings (``"passed"``, ``"falsified"``, ``"untestable"``) or objects
with a ``verdict`` attribute (``FalsificationResult``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

_VALID = ("passed", "falsified", "untestable")


def _verdicts(values: Iterable) -> list[str]:
    out = []
    for v in values:
        v = getattr(v, "verdict", v)
        if v not in _VALID:
            raise ValueError(f"verdicts must be one of {_VALID} (or results with .verdict), got {v!r}")
        out.append(v)
    return out


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2)): 0.2 small, 0.5 medium, 0.8 large."""
    if not (0 <= p1 <= 1 and 0 <= p2 <= 1):
        return float("nan")
    return 2.0 * math.asin(math.sqrt(p1)) - 2.0 * math.asin(math.sqrt(p2))


@dataclass(frozen=True)
class RateSummary:
    """Falsification rate among testable maps with its Wilson interval."""

    rate: float  # falsified / (passed + falsified); nan when nothing was testable
    ci_low: float
    ci_high: float
    n_passed: int
    n_falsified: int
    n_untestable: int
    confidence: float = 0.95

    @property
    def n_testable(self) -> int:
        return self.n_passed + self.n_falsified

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def format(self) -> str:
        if self.n_testable == 0:
            return f"falsification rate n/a (0 testable, {self.n_untestable} untestable)"
        return (
            f"falsification rate {self.rate:.1%} (Wilson {self.confidence:.0%} CI {self.ci_low:.1%}-"
            f"{self.ci_high:.1%}; {self.n_falsified} falsified, {self.n_passed} passed, "
            f"{self.n_untestable} untestable)"
        )


def wilson_interval(k, n, confidence: float = 0.95):
    """The Wilson score interval of ``k`` successes in ``n`` trials at ``confidence`` (two-sided),
    from statsmodels' ``proportion_confint(method="wilson")``, clipped to [0, 1]: ``(low, high)``
    as floats, or as arrays when ``k`` (or ``n``) is an array; None when ``n`` is 0 (no trials)."""
    from statsmodels.stats.proportion import proportion_confint

    if np.ndim(n) == 0 and n <= 0:
        return None
    lo, hi = proportion_confint(k, n, alpha=1.0 - confidence, method="wilson")
    lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def wilson(k: int, n: int) -> tuple[float | None, float | None]:
    """The Wilson 95% interval of ``k`` in ``n`` (:func:`wilson_interval`) as ``(low, high)``;
    ``(None, None)`` when n == 0 (the experiments' summaries store both ends)."""
    return wilson_interval(k, n) or (None, None)


def falsification_rate(verdicts: Iterable, confidence: float = 0.95) -> RateSummary:
    """falsified / (passed + falsified) with its Wilson interval (:func:`wilson_interval`)."""
    v = _verdicts(verdicts)
    n_p, n_f, n_u = v.count("passed"), v.count("falsified"), v.count("untestable")
    n = n_p + n_f
    if n == 0:
        nan = float("nan")
        return RateSummary(nan, nan, nan, n_p, n_f, n_u, confidence)
    lo, hi = wilson_interval(n_f, n, confidence)
    return RateSummary(n_f / n, lo, hi, n_p, n_f, n_u, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """McNemar's exact test of two methods on the same pairs."""

    table: tuple[tuple[int, int], tuple[int, int]]  # rows: A falsified/passed; cols: B falsified/passed
    n_pairs: int  # pairs where both maps were testable
    n_excluded: int  # pairs where either was untestable
    rate_a: float  # falsification rates on those pairs
    rate_b: float
    cohens_h: float  # h(rate_a, rate_b)
    statistic: float  # min of the discordant counts (exact test)
    pvalue: float
    name_a: str = "A"
    name_b: str = "B"
    pvalue_holm: float | None = None  # set by compare_paired

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_paired(a: Sequence, b: Sequence, name_a: str = "A", name_b: str = "B") -> PairedComparison:
    """McNemar's exact (binomial) test between two methods' verdicts on the same pairs.

    ``a[i]`` and ``b[i]`` must be verdicts for the same pair. Pairs where either map is
    untestable are left out (and counted in ``n_excluded``).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    va, vb = _verdicts(a), _verdicts(b)
    if len(va) != len(vb):
        raise ValueError(f"paired verdicts need one verdict per pair in each list, got {len(va)} and {len(vb)}")
    both = [(x, y) for x, y in zip(va, vb) if x != "untestable" and y != "untestable"]
    ff = sum(x == "falsified" and y == "falsified" for x, y in both)
    fp = sum(x == "falsified" and y == "passed" for x, y in both)
    pf = sum(x == "passed" and y == "falsified" for x, y in both)
    pp = sum(x == "passed" and y == "passed" for x, y in both)
    n = len(both)
    if n == 0:
        raise ValueError("no pair has a testable map from both methods; nothing to compare")
    if fp + pf == 0:  # no discordant pair: no evidence of a difference
        stat, p = 0.0, 1.0
    else:
        res = mcnemar(np.array([[ff, fp], [pf, pp]]), exact=True)
        stat, p = float(res.statistic), float(res.pvalue)
    rate_a, rate_b = (ff + fp) / n, (ff + pf) / n
    return PairedComparison(
        table=((ff, fp), (pf, pp)),
        n_pairs=n,
        n_excluded=len(va) - n,
        rate_a=rate_a,
        rate_b=rate_b,
        cohens_h=cohens_h(rate_a, rate_b),
        statistic=stat,
        pvalue=min(1.0, p),
        name_a=name_a,
        name_b=name_b,
    )


@dataclass(frozen=True)
class HolmResult:
    pvalues_adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
    alpha: float


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> HolmResult:
    """Holm's step-down correction (statsmodels ``multipletests(method="holm")``)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("holm needs a non-empty list of p-values")
    if np.any((p < 0) | (p > 1)) or not np.isfinite(p).all():
        raise ValueError(f"p-values must be in [0, 1], got {p.tolist()}")
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return HolmResult(tuple(float(x) for x in adjusted), tuple(bool(x) for x in reject), alpha)


def compare_paired(methods: Mapping[str, Sequence], alpha: float = 0.05) -> list[PairedComparison]:
    """McNemar for every pair of methods run on the same pairs, with Holm-adjusted p-values."""
    names = list(methods)
    if len(names) < 2:
        raise ValueError("compare_paired needs at least two methods")
    results = [mcnemar_paired(methods[a], methods[b], a, b) for a, b in combinations(names, 2)]
    adj = holm([r.pvalue for r in results], alpha).pvalues_adjusted
    return [PairedComparison(**{**asdict(r), "pvalue_holm": p}) for r, p in zip(results, adj)]


@dataclass(frozen=True)
class UnpairedComparison:
    """Two methods tested on different pairs."""

    table: tuple[tuple[int, int], tuple[int, int]]  # rows A, B; cols falsified, passed
    rate_a: float
    rate_b: float
    cohens_h: float
    test: str  # "fisher" or "chi2"
    statistic: float  # odds ratio (fisher) or chi-square statistic
    pvalue: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare_unpaired(a: Sequence, b: Sequence, test: str = "fisher") -> UnpairedComparison:
    """Fisher's exact test (default) or a chi-square test (Yates-corrected) of two rates."""
    from scipy.stats import chi2_contingency, fisher_exact

    if test not in ("fisher", "chi2"):
        raise ValueError(f"test must be 'fisher' or 'chi2', got {test!r}")
    ra, rb = falsification_rate(a), falsification_rate(b)
    if ra.n_testable == 0 or rb.n_testable == 0:
        raise ValueError("each method needs at least one testable map to compare rates")
    table = ((ra.n_falsified, ra.n_passed), (rb.n_falsified, rb.n_passed))
    arr = np.array(table)
    if test == "fisher":
        res = fisher_exact(arr)
        stat, p = float(res.statistic), float(res.pvalue)
    else:
        if (arr.sum(axis=0) == 0).any():  # every map falsified, or every map passed: no difference
            stat, p = 0.0, 1.0
        else:
            res = chi2_contingency(arr, correction=True)
            stat, p = float(res.statistic), float(res.pvalue)
    return UnpairedComparison(table, ra.rate, rb.rate, cohens_h(ra.rate, rb.rate), test, stat, p)


@dataclass(frozen=True)
class BootstrapCI:
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    method: str


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable = np.mean,
    n: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "BCa",
) -> BootstrapCI:
    """A bootstrap confidence interval (``scipy.stats.bootstrap``) of ``stat`` over ``values``.

    E.g. the mean margin d_high - d_low over the testable pairs of one method. NaN values
    (untestable pairs) are dropped. All-equal values give the degenerate interval (v, v).
    """
    from scipy.stats import bootstrap

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 finite values, got {v.size}")
    if n < 100:
        raise ValueError(f"n (bootstrap resamples) should be at least 100, got {n}")
    est = float(stat(v))
    if np.ptp(v) == 0:
        return BootstrapCI(est, est, est, confidence, int(v.size), method)
    res = bootstrap(
        (v,), stat, n_resamples=n, confidence_level=confidence, method=method, rng=np.random.default_rng(seed)
    )
    ci = res.confidence_interval
    return BootstrapCI(est, float(ci.low), float(ci.high), confidence, int(v.size), method)


def margin_ci(results: Iterable, **kwargs) -> BootstrapCI:
    """Bootstrap interval of the mean margin d_high - d_low over the testable results."""
    return bootstrap_ci([r.margin for r in results if getattr(r, "verdict", "") != "untestable"], **kwargs)
