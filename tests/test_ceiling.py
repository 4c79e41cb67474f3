"""The test's ceiling (``falsify.falsification.ceiling``): the greedy search finds a planted best
region, its map reproduces its verdict through the ordinary test, a model that ignores its input
has a falsified ceiling, bad input is refused; and a 6.1 run's summary holds the ceiling."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from falsify.falsification import FalsificationConfig, falsification_test, feature_segments, make_regions
from falsify.falsification.ceiling import CeilingSearch, ceiling_map, ceiling_search, check_searchable

SIZE, GRID = 28, 7  # 7 x 7 cells of 4 x 4 pixels; q = 0.1 takes 5 cells (80 of 784 pixels)
CELL = (1, 5)  # the one cell the toy model sees: row 1, column 5 (off-centre, not a corner)


class OneCell(nn.Module):
    """An embedder whose output depends only on the pixels of one grid cell: a fixed linear map
    of that cell's 48 values plus a constant, L2-normalised."""

    def __init__(self, cell=CELL, dim: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.r, self.c = cell
        self.w = nn.Parameter(torch.randn(48, dim, generator=g), requires_grad=False)
        self.b = nn.Parameter(torch.randn(dim, generator=g), requires_grad=False)
        self.input_size = (SIZE, SIZE)

    def forward(self, x):
        s = SIZE // GRID
        patch = x[:, :, self.r * s:(self.r + 1) * s, self.c * s:(self.c + 1) * s].reshape(x.shape[0], -1)
        return nn.functional.normalize(patch @ self.w + self.b, dim=1)


class Constant(OneCell):
    """An embedder that ignores its input."""

    def forward(self, x):
        return nn.functional.normalize(self.b.expand(x.shape[0], -1) + 0 * x.sum(), dim=1)


def _images(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, SIZE, SIZE, generator=g)


def _config(**kw) -> FalsificationConfig:
    # how far f(x) moves: the planted cell's answers are in embedding distances
    base = dict(grid=GRID, q=0.1, fill="mean", criterion="absolute", tau_high=0.05, tau_low=0.02, epsilon=0.02,
                target="embedding")
    return FalsificationConfig(**{**base, **kw})


def _planted() -> int:
    return CELL[0] * GRID + CELL[1]


def test_the_search_finds_the_planted_cell_and_passes():
    model, x = OneCell(), _images()
    for cfg in (_config(), _config(fill="noise", K=4), _config(fill="blur")):
        res = ceiling_search(model, x, None, cfg)
        for r in res:
            assert _planted() in r.high_features and _planted() not in r.low_features
            assert len(r.high_features) == 5 and len(r.low_features) == 5
            assert r.verdict == "passed", r.result.format()
            # hiding cells the model never sees moves nothing (up to float32 rounding of other batches)
            assert r.d_low_search == pytest.approx(0.0, abs=1e-6)
            assert r.d_high_search > 0.05


def test_the_ceiling_map_reproduces_the_verdict_and_the_distances():
    model, x = OneCell(), _images()
    cfg = _config(fill="noise", K=4)
    res = ceiling_search(model, x, None, cfg, pair_ids=[7, 11])
    again = falsification_test(model, x, None, torch.stack([r.map for r in res]), cfg, pair_ids=[7, 11],
                               keep_examples=True)
    seg = feature_segments(SIZE, SIZE, "grid", grid=GRID)
    for r, t in zip(res, again):
        assert t.verdict == r.verdict and t.failed == r.result.failed
        # the search embeds its counterfactuals in other batches than the test: float32 rounding of
        # an 8-dimensional embedding moves an angle by far less than 1e-5 rad
        assert t.d_high == pytest.approx(r.d_high_search, abs=1e-5)
        assert t.d_low == pytest.approx(r.d_low_search, abs=1e-5)
        assert set(torch.unique(seg[t.high_mask]).tolist()) == set(r.high_features)
        assert set(torch.unique(seg[t.low_mask]).tolist()) == set(r.low_features)


def test_beyond_prior_judges_the_ceiling_against_the_prior():
    model, x = OneCell(), _images(1)
    prior = torch.zeros(SIZE, SIZE)
    prior[10:18, 10:18] = 1.0  # a centre prior: it never ranks the planted cell high
    cfg = _config(criterion="beyond-prior", delta=0.0)
    (r,) = ceiling_search(model, x, None, cfg, prior=prior)
    assert r.verdict == "passed" and r.result.prior_d_high == pytest.approx(0.0, abs=1e-6)
    # a random prior: the prior's own regions start the search too, so the ceiling never falls below it
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        (rr,) = ceiling_search(model, x, None, cfg, prior=torch.rand(SIZE, SIZE, generator=g))
        assert rr.result.excess >= -1e-6
    assert r.result.excess == pytest.approx(r.result.margin)
    # a prior that already ranks the planted cell on top leaves nothing to beat it by
    prior = ceiling_map(feature_segments(SIZE, SIZE, "grid", grid=GRID), r.high_features, r.low_features)
    (r2,) = ceiling_search(model, x, None, cfg, prior=prior)
    assert r2.verdict == "falsified" and r2.result.excess == pytest.approx(0.0, abs=1e-6)


def test_a_model_that_ignores_its_input_has_an_untestable_ceiling():
    """Hiding anything moves nothing: no map can make a prediction the image tests (issue 26; it
    was a falsified ceiling, d_high 0 <= tau_high, before)."""
    (r,) = ceiling_search(Constant(), _images(1), None, _config())
    assert r.verdict == "untestable" and r.d_high_search == pytest.approx(0.0, abs=1e-6)
    assert "within float32 rounding" in r.result.failed[0]


def test_one_feature_is_untestable():
    (r,) = ceiling_search(OneCell(), _images(1), None, _config(grid=1))
    assert r.verdict == "untestable" and r.high_features == ()


def test_ceiling_map_regions_are_the_sets():
    seg = feature_segments(30, 30, "grid", grid=7)  # cells of 4 or 5 pixels per side: unequal sizes
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        perm = torch.randperm(49, generator=g).tolist()
        m = torch.rand(30, 30, generator=g)
        reg = make_regions(m, grid=7, q=0.1, segments=seg, generator=g)
        high = sorted(set(torch.unique(seg[reg.high]).tolist()))
        low = sorted(set(torch.unique(seg[reg.low]).tolist()))
        again = make_regions(ceiling_map(seg, high, low), grid=7, q=0.1, segments=seg, generator=g)
        assert sorted(set(torch.unique(seg[again.high]).tolist())) == high
        assert sorted(set(torch.unique(seg[again.low]).tolist())) == low
        assert perm  # a fresh permutation each time keeps the generator moving


@pytest.mark.parametrize("kw, message", [
    (dict(fill="optimised"), "optimised fill"),
    (dict(granularity="pixel"), "pixel granularity"),
    (dict(region="threshold", theta_high=0.7, theta_low=0.3), "quantile regions"),
])
def test_unsearchable_configs_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        check_searchable(_config(**kw))
    with pytest.raises(ValueError, match=message):
        ceiling_search(OneCell(), _images(1), None, _config(**kw))


def test_bad_search_settings_and_missing_thresholds():
    with pytest.raises(ValueError, match="rounds must be an integer >= 0"):
        CeilingSearch(rounds=-1)
    with pytest.raises(ValueError, match="pool must be an integer >= 1"):
        CeilingSearch(pool=0)
    with pytest.raises(ValueError, match="criterion"):
        ceiling_search(OneCell(), _images(1), None, FalsificationConfig(grid=GRID, criterion="absolute",
                                                                           target="embedding"))
    with pytest.raises(ValueError, match="beyond-prior"):
        ceiling_search(OneCell(), _images(1), None, _config(criterion="beyond-prior", delta=0.0))


def test_refinement_never_lowers_the_screening_start():
    """rounds=0 is the screening's ranking alone; the refinement only keeps swaps that improve."""
    model, x = OneCell(), _images(1)
    (r0,) = ceiling_search(model, x, None, _config(), search=CeilingSearch(rounds=0, stop_margin=None))
    (r2,) = ceiling_search(model, x, None, _config(), search=CeilingSearch(stop_margin=None))
    assert r2.d_high_search >= r0.d_high_search and r2.d_low_search <= r0.d_low_search
    assert math.isfinite(r2.d_high_search)


def test_the_search_stops_once_the_verdict_is_decided():
    """By default the search ends as soon as its sets pass with stop_margin to spare: the verdict of
    the full search at a fraction of the counterfactuals. A ceiling that does not pass early is
    the full search's, sets and distances."""
    model, x = OneCell(), _images()
    full = CeilingSearch(stop_margin=None)
    prior = torch.zeros(SIZE, SIZE)
    prior[10:18, 10:18] = 1.0
    for cfg in (_config(), _config(criterion="beyond-prior", delta=0.0)):
        fast = ceiling_search(model, x, None, cfg, prior=prior)
        slow = ceiling_search(model, x, None, cfg, prior=prior, search=full)
        for a, b in zip(fast, slow):
            assert a.verdict == b.verdict == "passed"
            # the coarse screening (about 2 x 2 cells: 16 blocks of the 7 x 7 grid), two starts per region
            assert a.n_embedded <= 16 + 4 < GRID * GRID < b.n_embedded
            assert _planted() in a.high_features
    cfg = _config(tau_high=3.0)  # no set moves the embedding 3 rad: falsified, never decided early
    fast = ceiling_search(model, x, None, cfg)
    slow = ceiling_search(model, x, None, cfg, search=full)
    for a, b in zip(fast, slow):
        assert a.verdict == b.verdict == "falsified"
        assert (a.high_features, a.low_features) == (b.high_features, b.low_features)
        assert a.d_high_search == pytest.approx(b.d_high_search, abs=1e-6)
        assert a.n_embedded > b.n_embedded  # the coarse screening and the starts, tried first
    with pytest.raises(ValueError, match="stop_margin"):
        CeilingSearch(stop_margin=-0.1)


# --- experiment 6.1 ------------------------------------------------------------------------------

def test_a_6_1_run_has_the_ceiling_and_the_table_its_column(lfw_sample, tmp_path):
    """A small 6.1 run (2 pairs, a 7 x 7 grid, fixed thresholds): the ceiling's rows under their
    own key, never among the methods; the summary's section; table 6.1's column; a rerun resumes."""
    from falsify.experiments import ResultsStore, RunConfig, runner_for
    from falsify.experiments import exp_6_1 as E61
    from falsify.experiments.ceiling import CEILING_OF

    base = dict(data=str(lfw_sample), methods=["saliency", "random"], n_pairs=2, grid=7, out=str(tmp_path / "run"),
                tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=0, preset="plain")
    logs = []
    runner = runner_for(RunConfig(**base), progress=False, log=logs.append)
    summary = runner.run()
    c = summary["ceiling"]
    assert [m["method"] for m in summary["methods"]] == ["saliency", "random"]  # not a method
    assert not any("ceiling" in (x["method"], x["against"]) for x in summary["comparisons"])
    assert c["n_pairs"] == 2 and c["n_error"] == 0 and c["n_passed"] + c["n_falsified"] + c["n_untestable"] == 2
    assert set(c["fr_where_ceiling_passes"]) == {"saliency", "random"}
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        rows = store.rows(CEILING_OF, "dlib-resnet")
        verdicts = {r["pair"]: r["verdict"] for r in rows}
        m_rows = store.rows("6.1", "dlib-resnet", ["saliency"])
    assert len(rows) == 2 and all(r["method"] == "ceiling" for r in rows)
    passes = {p for p, v in verdicts.items() if v == "passed"}
    sal = [r["verdict"] for r in m_rows if r["pair"] in passes and r["verdict"] in ("passed", "falsified")]
    w = c["fr_where_ceiling_passes"]["saliency"]
    assert w["n"] == len(sal) and w["n_falsified"] == sal.count("falsified")
    header, cells = E61.table_6_1_cells(summary)
    assert header[header.index("FR % [95% CI]") + 1] == E61.CEILING_COLUMN
    assert "The test's ceiling" in E61.table_6_1_tex(summary)
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "FR where<br>ceiling passes" in html and "The test&#x27;s ceiling" in html
    text = E61.EXPERIMENT.text(summary)
    assert "FR% where ceiling passes" in text and "\nceiling " in text
    # resuming computes nothing: every ceiling row is stored
    from falsify.experiments.ceiling import RowsCeiling

    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        assert runner.session.compute_rows(store, RowsCeiling(runner.session.context(CEILING_OF))) == 0
    assert any("ceiling of all 2 pairs is already in the store" in str(x) for x in logs)
    # --no-ceiling: nothing searched, no section (the flag reaches RunConfig.ceiling)
    import dataclasses

    from falsify.cli import build_parser

    args = build_parser().parse_args(["run", "6.1", "--no-ceiling"])
    assert args.ceiling is False and build_parser().parse_args(["run", "6.1"]).ceiling is None  # None: not given
    off = dataclasses.replace(runner.session, config=RunConfig(**base, ceiling=False), executor=None)
    section: dict = {}
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        E61.EXPERIMENT.extend(off, store, section)  # the flag ignored, the stored rows would make a section
    assert "ceiling" not in section and "skipped" in section["null_maps"]  # plain preset: no prior, no null maps
    # an older summary, without the ceiling: no column, no sentence
    old = {k: v for k, v in summary.items() if k != "ceiling"}
    assert E61.CEILING_COLUMN not in E61.table_6_1_cells(old)[0]
    assert "ceiling" not in E61.table_6_1_tex(old) and "ceiling" not in E61.EXPERIMENT.text(old)


def test_table_6_1_of_a_run_whose_ceiling_was_not_searched():
    """A test the search does not support: the summary says why, the table has no ceiling column,
    and the text says why; a ceiling whose pairs all failed prints as n/a, not as numbers."""
    from falsify.experiments import exp_6_1 as E61

    method = {"method": "saliency", "n_passed": 1, "n_falsified": 1, "n_untestable": 0, "n_error": 0, "fr": 0.5,
              "ci_low": 0.09, "ci_high": 0.91, "mean_d_high": 0.3, "mean_d_low": 0.1, "mean_d_prime": None,
              "seconds_per_pair": 0.1}
    summary = {"experiment": "6.1", "model": "m", "data": {"n_pairs": 2}, "methods": [method],
               "ceiling": {"skipped": "the ceiling search needs quantile regions"}}
    assert E61.CEILING_COLUMN not in E61.table_6_1_cells(summary)[0]
    assert "the test's ceiling was not searched: the ceiling search needs quantile regions" in E61.EXPERIMENT.text(summary)
    summary["ceiling"] = {"n": 0, "n_passed": 0, "n_falsified": 0, "n_untestable": 0, "n_error": 2,
                          "share_falsified": None, "ci_low": None, "ci_high": None, "fr_where_ceiling_passes": {}}
    header, cells = E61.table_6_1_cells(summary)
    assert cells[0][header.index(E61.CEILING_COLUMN)] is None
    assert E61.ceiling_sentence(summary) == "The test's ceiling: no pair had a testable ceiling."
    assert "ceiling                0     0      0    2    n/a [  n/a,  n/a]" in E61.EXPERIMENT.text(summary)
