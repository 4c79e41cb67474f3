"""The known-truth benchmark: composites whose evidence is known, localisation scores with known
answers, the sensitivity and specificity from rows, and `falsify run known-truth` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from falsify.experiments import RunConfig
from falsify.experiments.known_truth import (COMPOSITE, Construction, composite, config_key, configs, truth_maps,
                                             truth_summary, wrong_region)
from falsify.experiments.truth_construction import CELL_REGIONS, CellTruth
from falsify.experiments.truth_summary import _verdict, split_halves
from falsify.falsification.localisation import localisation, pointing_hit, rank_share, top_share, truth_auc

SIZE = (112, 112)
# five landmarks of an aligned face at 112 x 112 (arcface-112's template)
POINTS = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])


@pytest.mark.parametrize("parts", ["eyes", "eyes+nose", "inner"])
def test_a_composites_truth_covers_exactly_the_swapped_pixels(parts):
    con = Construction(POINTS, SIZE, parts)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, *SIZE, generator=g) * 0.4
    donor = base + 0.5  # differs from the base at every pixel
    x = composite(base, donor, con.alpha)
    changed = (x != base).any(dim=0).numpy()
    assert np.array_equal(changed, con.truth)  # every changed pixel is in the truth, and only those
    assert torch.equal(x[:, ~torch.from_numpy(con.truth)], base[:, ~torch.from_numpy(con.truth)])
    core = torch.from_numpy(con.core)
    assert con.core.any() and (con.core <= con.truth).all()
    # in the core the donor dominates: alpha >= 1/2
    assert bool(((x - base)[:, core] >= 0.25 - 1e-6).all())


def test_the_wrong_region_has_the_cores_area_and_misses_the_truth():
    for parts in ("eyes", "eyes+nose", "inner"):
        con = Construction(POINTS, SIZE, parts)
        assert con.wrong.sum() == con.core.sum()
        assert not (con.wrong & con.truth).any()
    # eyes mirrored across the face's middle row land low on the face
    con = Construction(POINTS, SIZE, "eyes")
    assert np.nonzero(con.wrong)[0].mean() > np.nonzero(con.core)[0].mean() + 20


def test_wrong_region_refuses_a_truth_that_leaves_no_room():
    truth = np.ones((10, 10), dtype=bool)
    truth[0, 0] = False
    with pytest.raises(ValueError, match="too much of the image"):
        wrong_region(truth, truth, 5.0)


def test_a_map_equal_to_the_truth_localises_perfectly():
    con = Construction(POINTS, SIZE, "eyes+nose")
    m = con.truth.astype(np.float32)
    assert rank_share(m, con.truth) == 1.0
    assert pointing_hit(m, con.truth) is True
    assert truth_auc(m, con.truth) == 1.0
    assert rank_share(1 - m, con.truth) == 0.0 and truth_auc(1 - m, con.truth) == 0.0
    assert pointing_hit(1 - m, con.truth) is False
    # a constant map: the tied pixels are shared out, the maximum is everywhere (a miss), AUC one half
    flat = np.zeros(SIZE)
    assert rank_share(flat, con.truth) == pytest.approx(con.truth.mean())
    assert pointing_hit(flat, con.truth) is False and truth_auc(flat, con.truth) == 0.5
    # the known maps: truth first, then the prior's order
    maps = truth_maps(con.alpha, con.core, con.wrong, torch.rand(*SIZE, generator=torch.Generator().manual_seed(1)))
    assert rank_share(maps["truth"].numpy(), con.truth) == 1.0
    assert localisation(maps["wrong-part"].numpy(), con.truth)["pointing"] is False
    assert top_share(con.core, con.truth) == 1.0 and top_share(np.zeros(SIZE, bool), con.truth) is None


def test_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(0)
    m = np.round(g.random((20, 20)), 1)  # ties
    t = g.random((20, 20)) < 0.3
    assert truth_auc(m, t) == pytest.approx(roc_auc_score(t.ravel(), m.ravel()), abs=1e-12)


def _rows(verdicts: dict[str, dict[str, tuple[float, float]]], effects: dict[str, float]):
    """Rows as the store holds them: per pair a composite row, per (configuration, map) distances."""
    rows = []
    for pid, eff in effects.items():
        rows.append({"method": COMPOSITE, "pair": pid, "verdict": "passed", "d_high": None, "d_low": None,
                     "detail": json.dumps({"effect": eff, "cos_before": 0.5, "cos_after": 0.5 + eff / 2,
                                           "truth_area": 0.2, "core_area": 0.1})})
    for name, by_pair in verdicts.items():
        for pid, (dh, dl) in by_pair.items():
            for cfg in configs():
                rows.append({"method": f"{config_key(*cfg)}|{name}", "pair": pid, "verdict": "falsified",
                             "d_high": dh, "d_low": dl, "detail": json.dumps({"rank_share": 1.0 if name == "truth"
                                                                              else 0.0})})
    return rows


class _P:
    def __init__(self, pid):
        self.id = pid


def test_sensitivity_and_specificity_from_rows():
    pids = [f"p{i}" for i in range(4)]
    prior = {p: (0.30, 0.10) for p in pids}  # the prior's margin: 0.20
    truth = {"p0": (0.50, 0.10), "p1": (0.45, 0.05), "p2": (0.40, 0.10), "p3": (0.20, 0.10)}  # margins .4 .4 .3 .1
    wrong = {p: (0.25, 0.10) for p in pids}  # margin 0.15 < the prior's
    rows = _rows({"truth": truth, "centre": prior, "wrong-part": wrong}, {p: 0.1 for p in pids})
    cal = {"tau_high": 0.35, "tau_low": 0.12, "epsilon": 0.2}
    fc = {"fill": "mean", "q": 0.1, "target": "embedding", "criterion": "beyond-prior", "delta": 0.0}
    s = truth_summary(rows, [_P(p) for p in pids], cal, fc, ["truth", "wrong-part", "centre"], 0.0)
    assert s["sensitivity"] == 0.75  # three of four truth maps beat the prior
    assert s["specificity"] == 1.0  # wrong parts are falsified
    default = s["default_rates"]
    # centre (the prior itself) is a tautology under beyond-prior: reported apart, never counted
    assert default["sensitivity"]["n"] == 4 and default["specificity"]["n"] == 4
    assert "centre" not in default["specificity_by_negative"] and default["apart"]["centre"]["rate"] == 0.0
    for e in s["configurations"]:
        for part in ("selection", "confirmation", "all"):
            assert "centre" not in e[part]["specificity_by_negative"]
    truth_row = next(e for e in s["localisation"] if e["map"] == "truth")
    assert truth_row["top"]["rate"] == 0.75 and truth_row["bottom"]["rate"] == 1.0  # d_low no larger than the prior's
    assert truth_row["rank_share"] == 1.0
    absolute = next(e for e in s["configurations"] if e["criterion"] == "absolute" and e["fill"] == "mean"
                    and e["q"] == 0.1 and e["target"] == "embedding")
    # absolute: d_high > 0.35, d_low < 0.12, margin >= 0.2: p0, p1, p2 pass
    assert absolute["all"]["sensitivity"]["rate"] == 0.75
    # composites below the minimum effect are left out
    effects = {"p0": 0.2, "p1": 0.2, "p2": 0.01, "p3": 0.01}
    s2 = truth_summary(_rows({"truth": truth, "centre": prior, "wrong-part": wrong}, effects),
                       [_P(p) for p in pids], cal, fc, ["truth", "wrong-part", "centre"], 0.1)
    assert s2["strength"]["n_kept"] == 2 and s2["sensitivity"] == 1.0


def test_truth_settings_belong_to_the_benchmark(lfw_sample):
    from falsify.experiments.known_truth import EXPERIMENT
    from falsify.experiments.registry import configure

    with pytest.raises(ValueError, match="setting of the known-truth benchmark"):
        configure(experiment="6.1", truth="swap")
    with pytest.raises(ValueError, match="truth_parts must be one of"):
        configure(experiment="known-truth", truth_parts="ears")
    c = configure(experiment="known-truth", data=str(lfw_sample), n_pairs=6)
    assert c.truth == "lateral" and c.truth_parts == "inner" and "saliency" in c.methods and "ig" not in c.methods
    pairs = EXPERIMENT.pairs(c)
    assert len(pairs) == 6 and pairs.n_impostor == 6  # composites need a donor of another identity


def test_known_truth_end_to_end(lfw_sample, tmp_path, capsys):
    from falsify.cli import main

    out = tmp_path / "kt"
    cfg = tmp_path / "small.toml"  # a small prior and calibration keep the test short
    cfg.write_text("prior_images = 4\nprior_grid = 4\ncalibration_pairs = 24\n")
    argv = ["run", "known-truth", "--data", str(lfw_sample), "--n-pairs", "2", "--out", str(out), "-q",
            "--methods", "saliency,centre", "--config", str(cfg), "--truth-min-effect", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "sensitivity" in text and "| truth | known positive |" in text
    summary = json.loads((out / "summary.json").read_text())
    kt = summary["known_truth"]
    for key in ("sensitivity", "specificity"):
        assert kt[key] is not None and 0.0 <= kt[key] <= 1.0
    assert kt["strength"]["n"] == 2 and kt["strength"]["effect_median"] is not None
    assert len(kt["configurations"]) == len(configs()) * 5  # absolute; beyond-prior and beyond-mirror at the run's delta and calibrated
    conf = kt["confirmation"]
    assert set(conf) >= {"sensitivity", "specificity", "sensitivity_ci", "specificity_ci", "n"}
    assert "centre" not in kt["specificity_by_negative"] and {"mirror", "matched", "null"} <= set(kt["specificity_by_negative"])
    assert 0.0 <= kt["prior_share_in_truth"] <= 1.0
    assert {e["map"] for e in kt["localisation"]} >= {"truth", "wrong-part", "centre", "saliency"}
    truth = next(e for e in kt["localisation"] if e["map"] == "truth")
    assert truth["rank_share"] == pytest.approx(1.0, abs=0.05) and truth["pointing"] == 1.0
    page = (out / "report.html").read_text()
    assert "Known truth" in page and "table-known-truth" in page
    assert (out / "figures" / "fig_known_truth.png").is_file()
    # resumed: nothing computed again; the report rewritten from the summary
    assert main(argv) == 0 and "already in the store" in capsys.readouterr().out
    (out / "known_truth.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "known_truth.md").is_file()


# a 6.1 summary reading the measured rates of its test: tests/test_known_truth_table.py


def test_a_failing_method_gets_an_error_row_per_key(tiny_model):
    """A method that fails on a unit gets an error row under each of its configuration keys (the
    driver checks that every key of every pair is stored); a pair without a composite gets one
    under every key."""
    from types import SimpleNamespace

    from falsify.experiments import known_truth as kt
    from falsify.experiments.rows import ChunkImages
    from falsify.falsification import FalsificationConfig

    size = (32, 32)
    con = Construction(POINTS * 32 / 112, size, "inner")
    ctx = SimpleNamespace(config=RunConfig(experiment="known-truth", methods=["saliency"], seed=0, batch_size=8),
                          model_name="tiny", prior_map=torch.rand(*size), fconfig=FalsificationConfig(),
                          emb={Path(f"/d/C/C_000{i}.jpg"): torch.rand(16) for i in (1, 2)})  # the cohort
    kind = kt.TruthRows(ctx)
    comp = kt.CompositeRows(kind, tiny_model)
    x = torch.rand(3, *size)
    pairs = [SimpleNamespace(id=f"p{i}", index=i, same=False, fold=1, a=None, b=None) for i in range(2)]
    comp.composites = lambda *a: [(con, x, {"identities": ["A", "B"]}, torch.rand(16)), "no composite: a test"]
    comp.maps = lambda name, *a: (None, [{"error": "RuntimeError: boom"}])
    keys = [f"{kt.config_key(*cfg)}|{m}" for cfg in kt.configs() for m in ("saliency", "truth")]
    rows = [r for batch, _ in comp.compute(pairs, None, torch.rand(2, 16), keys, set()) for r in batch]
    got = {(r["method"], r["pair"]): r for r in rows}
    assert set(got) == {(k, p.id) for k in keys for p in pairs}  # every key of every pair, once
    assert all(got[k, "p1"]["verdict"] == "error" for k in keys)
    sal = [got[k, "p0"] for k in keys if k.endswith("|saliency")]
    assert {r["verdict"] for r in sal} == {"error"} and sal[0]["error"] == "RuntimeError: boom"
    assert {got[k, "p0"]["verdict"] for k in keys if k.endswith("|truth")} == {"tested"}


def _prior(size=SIZE):
    from falsify.experiments.validity import gaussian_map

    return gaussian_map(size).numpy() * (1 + 0.2 * np.linspace(0, 1, size[1])[None, :])  # a little asymmetric


@pytest.mark.parametrize("region", CELL_REGIONS["lateral"] + CELL_REGIONS["parts"])
def test_a_lateral_composites_truth_is_the_changed_pixels_and_its_mirror_the_reported_mass(region):
    prior = _prior()
    con = CellTruth(POINTS, SIZE, 14, region, prior)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, *SIZE, generator=g) * 0.4
    x = composite(base, base + 0.5, con.alpha)
    changed = (x != base).any(dim=0).numpy()
    assert np.array_equal(changed, con.truth) and np.array_equal(con.truth, con.cells[con.seg])
    assert con.truth_mass == pytest.approx(prior[con.truth].sum() / prior.sum(), abs=1e-12)
    assert con.matched_mass == pytest.approx(prior[con.matched].sum() / prior.sum(), abs=1e-12)
    assert int(con.matched_cells.sum()) == int(con.cells.sum()) and not (con.matched & con.truth).any()
    if region in CELL_REGIONS["lateral"]:
        assert con.mirror_mass == pytest.approx(prior[con.mirror].sum() / prior.sum(), abs=1e-12)
        assert not (con.mirror & con.truth).any() and not (con.mirror & con.matched).any()
        # the mirror lies on the other side of the face's middle
        xs_t, xs_m = np.nonzero(con.truth)[1].mean(), np.nonzero(con.mirror)[1].mean()
        assert (xs_t - 56) * (xs_m - 56) < 0
    else:
        assert con.mirror is None


@pytest.mark.parametrize("region", ["left half", "right eye", "nose"])
def test_a_truth_maps_s_high_is_the_truth(region):
    from falsify.falsification.regions import make_regions

    prior = _prior()
    con = CellTruth(POINTS, SIZE, 14, region, prior)
    order = np.random.default_rng(0).random(con.cells.size)
    maps = con.maps(torch.from_numpy(prior), order)
    reg = make_regions(maps["truth"], granularity="grid", grid=14, q=con.q, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reg.high, torch.from_numpy(con.truth))
    # its bottom is the prior's bottom: the prior never picks cells inside the truth, nor outside it at the top
    prior_reg = make_regions(torch.from_numpy(prior).float(), granularity="grid", grid=14, q=con.q,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(reg.low, prior_reg.low)
    reg = make_regions(maps["mirror" if con.mirror is not None else "matched"], granularity="grid", grid=14, q=con.q,
                       generator=torch.Generator().manual_seed(0))
    assert not (reg.high & torch.from_numpy(con.truth)).any()


def test_a_tie_gets_the_same_verdict_after_float_noise():
    cal = {"tau_high": 0.1, "tau_low": 0.2, "epsilon": 0.0}
    from falsify.geometry import excess_rounding

    tol = excess_rounding(128)
    prior = (0.3, 0.1)
    for noise in (0.0, 1e-7, -1e-7, 3e-7, -3e-7):
        got = _verdict(0.3 + noise, 0.1, prior, "beyond-prior", 0.0, cal, tol)
        assert got[0] is False and got[3] is True  # equal distances: a tie, falsified on every machine
    assert _verdict(0.3 + 2 * tol, 0.1, prior, "beyond-prior", 0.0, cal, tol)[0] is True
    # the library's criterion decides it the same way
    from falsify.falsification.criteria import verdict_beyond_prior

    assert verdict_beyond_prior(1e-7, 0.0, tol)[0] == verdict_beyond_prior(-1e-7, 0.0, tol)[0] == "falsified"


def test_the_split_is_a_seeded_permutation():
    kept = [f"p{i}" for i in range(21)]
    a, b = split_halves(kept, 0), split_halves(kept, 0)
    assert a == b and set(a) == set(kept)
    sel = [p for p in kept if a[p] == "selection"]
    assert len(sel) == 11 and sel != kept[:11]  # not the first half of the file
    perm = np.random.default_rng([0, 28]).permutation(len(kept))
    assert sel == sorted((kept[i] for i in perm[:11]), key=kept.index)
    assert split_halves(kept, 1) != a
