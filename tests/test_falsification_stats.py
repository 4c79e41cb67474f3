"""falsify.falsification.stats against values computed by hand."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from falsify.falsification import stats

Z95 = 1.959963984540054


def _wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_falsification_rate_wilson_and_untestable_apart():
    verdicts = ["falsified"] * 7 + ["passed"] * 13 + ["untestable"] * 5
    r = stats.falsification_rate(verdicts)
    assert (r.n_falsified, r.n_passed, r.n_untestable, r.n_testable) == (7, 13, 5, 20)
    assert r.rate == pytest.approx(0.35)  # untestable is neither passed nor falsified
    lo, hi = _wilson(7, 20)
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert r.ci_low == pytest.approx(0.1812, abs=1e-4) and r.ci_high == pytest.approx(0.5671, abs=1e-4)
    assert "35.0%" in r.format()
    # result objects work too; all-falsified gives a one-sided-looking interval ending at 1
    r = stats.falsification_rate([SimpleNamespace(verdict="falsified")] * 4)
    assert r.rate == 1.0 and r.ci_high == pytest.approx(1.0) and r.ci_low == pytest.approx(_wilson(4, 4)[0])


def _tables_wilson_before(k: int, n: int, z: float = Z95):
    """report/tables.py's own Wilson interval before there was one for the package (issue 20)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _statsmodels_before(k, n, confidence=0.95):
    """stats.py's, exp_6_5.py's and verification.py's call before: statsmodels directly."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=1.0 - confidence, method="wilson")
    return float(lo), float(hi)


def test_one_wilson_interval_equals_each_of_the_old_ones():
    """falsification/stats.py, experiments/exp_6_5.py and report/tables.py computed the interval three
    ways; all now call stats.wilson_interval, equal to each old one to 1e-12 (k = 0 and k = n included)."""
    from falsify.experiments.exp_6_5 import bootstrap_rates
    from falsify.falsification.stats import wilson
    from falsify.report.tables import wilson_ci

    for n in list(range(1, 60)) + [100, 200, 999, 5000]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            new = stats.wilson_interval(k, n)
            assert isinstance(new[0], float) and 0.0 <= new[0] <= new[1] <= 1.0
            for old in (_tables_wilson_before(k, n), _statsmodels_before(k, n)):
                assert new == pytest.approx(old, abs=1e-12, rel=0)
            assert wilson_ci(k, n) == new and wilson(k, n) == new
            r = stats.falsification_rate(["falsified"] * k + ["passed"] * (n - k))
            assert (r.ci_low, r.ci_high) == new
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-15)
    for k, n, conf in ((3, 7, 0.9), (50, 80, 0.99), (0, 5, 0.8)):
        assert stats.wilson_interval(k, n, conf) == pytest.approx(_statsmodels_before(k, n, conf), abs=1e-12, rel=0)
    # no trials: no interval
    assert stats.wilson_interval(0, 0) is None and wilson_ci(0, 0) is None and wilson(0, 0) == (None, None)
    r = stats.falsification_rate([])
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high)
    # arrays (6.5's bootstrap): element by element the same
    ks = np.array([0, 3, 7, 10])
    lo, hi = stats.wilson_interval(ks, 10)
    for i, k in enumerate(ks):
        assert (lo[i], hi[i]) == pytest.approx(_tables_wilson_before(int(k), 10), abs=1e-12, rel=0)
    widths = bootstrap_rates(["falsified", "passed", "passed"] * 5, [10], seed=0, n_boot=50)[0]["ci_width"]
    assert 0 < widths < 1


def test_falsification_rate_nothing_testable():
    r = stats.falsification_rate(["untestable", "untestable"])
    assert math.isnan(r.rate) and r.n_untestable == 2 and "n/a" in r.format()
    assert json.dumps(r.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="verdicts must be one of"):
        stats.falsification_rate(["passed", "maybe"])


def test_mcnemar_exact_by_hand():
    # 16 pairs testable for both, 2 more untestable for B: ff=3, fp=1, pf=8, pp=4
    a = ["falsified"] * 3 + ["falsified"] * 1 + ["passed"] * 8 + ["passed"] * 4 + ["passed", "falsified"]
    b = ["falsified"] * 3 + ["passed"] * 1 + ["falsified"] * 8 + ["passed"] * 4 + ["untestable", "untestable"]
    r = stats.mcnemar_paired(a, b, "A", "B")
    assert r.table == ((3, 1), (8, 4)) and r.n_pairs == 16 and r.n_excluded == 2
    # exact: 1 of 9 discordant pairs one way: p = 2 * (C(9,0) + C(9,1)) / 2^9
    assert r.pvalue == pytest.approx(2 * (1 + 9) / 512)
    assert r.rate_a == pytest.approx(4 / 16) and r.rate_b == pytest.approx(11 / 16)
    h = 2 * math.asin(math.sqrt(4 / 16)) - 2 * math.asin(math.sqrt(11 / 16))
    assert r.cohens_h == pytest.approx(h) and r.cohens_h == pytest.approx(-0.9080, abs=1e-4)
    same = stats.mcnemar_paired(["passed", "falsified"], ["passed", "falsified"])
    assert same.pvalue == 1.0 and same.cohens_h == 0.0
    with pytest.raises(ValueError, match="one verdict per pair"):
        stats.mcnemar_paired(["passed"], ["passed", "passed"])
    with pytest.raises(ValueError, match="no pair has a testable map"):
        stats.mcnemar_paired(["untestable"], ["passed"])


def test_holm_by_hand():
    r = stats.holm([0.01, 0.04, 0.03])
    # sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone: 0.03, 0.06, 0.06
    assert r.pvalues_adjusted == pytest.approx((0.03, 0.06, 0.06))
    assert r.reject == (True, False, False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        stats.holm([0.5, 1.5])


def test_compare_paired_applies_holm_across_method_pairs():
    rng = np.random.default_rng(0)
    methods = {m: list(rng.choice(["passed", "falsified"], size=40, p=[p, 1 - p])) for m, p in
               (("good", 0.8), ("mid", 0.5), ("bad", 0.1))}
    res = stats.compare_paired(methods)
    assert [(r.name_a, r.name_b) for r in res] == [("good", "mid"), ("good", "bad"), ("mid", "bad")]
    adj = stats.holm([r.pvalue for r in res]).pvalues_adjusted
    assert [r.pvalue_holm for r in res] == pytest.approx(list(adj))
    assert all(r.pvalue_holm >= r.pvalue for r in res)


def test_fisher_and_chi2_by_hand():
    a = ["falsified"] * 8 + ["passed"] * 2 + ["untestable"]
    b = ["falsified"] * 1 + ["passed"] * 5
    r = stats.compare_unpaired(a, b)
    assert r.table == ((8, 2), (1, 5))
    # hypergeometric over C(16,10) = 8008 tables: P(k=8) = 189, P(k=9) = 7, P(k=3) = 84 are the
    # tables no more probable than the observed one
    assert r.pvalue == pytest.approx((189 + 7 + 84) / 8008)
    assert r.statistic == pytest.approx(8 * 5 / (2 * 1))  # odds ratio
    c = stats.compare_unpaired(a, b, test="chi2")
    n, row, col = 16, (10, 6), (9, 7)
    obs = np.array([[8, 2], [1, 5]])
    exp = np.outer(row, col) / n
    chi2 = (((np.abs(obs - exp) - 0.5) ** 2) / exp).sum()  # Yates
    assert c.statistic == pytest.approx(chi2)
    from scipy.stats import chi2 as chi2_dist

    assert c.pvalue == pytest.approx(chi2_dist.sf(chi2, 1))
    with pytest.raises(ValueError, match="'fisher' or 'chi2'"):
        stats.compare_unpaired(a, b, test="t")


def test_bootstrap_ci():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 0.1, 400)
    r = stats.bootstrap_ci(v, n=4000, seed=3)
    assert r.estimate == pytest.approx(v.mean()) and r.ci_low < v.mean() < r.ci_high
    half = Z95 * v.std(ddof=1) / math.sqrt(v.size)  # the normal approximation
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half, rel=0.1)
    assert stats.bootstrap_ci(v, n=4000, seed=3) == r  # same seed, same interval
    p = stats.bootstrap_ci(v, stat=np.median, n=2000, seed=0, method="percentile")
    assert p.ci_low < np.median(v) < p.ci_high and p.method == "percentile"
    flat = stats.bootstrap_ci([0.2, 0.2, 0.2, float("nan")])
    assert flat.n == 3 and flat.ci_low == flat.estimate == flat.ci_high == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 2 finite values"):
        stats.bootstrap_ci([1.0])


def test_margin_ci_skips_untestable():
    res = [SimpleNamespace(verdict="passed", margin=m) for m in (0.2, 0.3, 0.25, 0.35)]
    res.append(SimpleNamespace(verdict="untestable", margin=float("nan")))
    r = stats.margin_ci(res, n=1000)
    assert r.n == 4 and r.estimate == pytest.approx(0.275)


def test_cohens_h():
    assert stats.cohens_h(0.5, 0.5) == 0.0
    assert stats.cohens_h(1.0, 0.0) == pytest.approx(math.pi)
    assert math.isnan(stats.cohens_h(1.2, 0.1))
