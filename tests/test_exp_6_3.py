"""Experiment 6.3: facial parts, the part-level test, FR per part and group (known answers)."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from falsify.experiments import RunConfig
from falsify.experiments import exp_6_3 as E

from .conftest import SHARED

LABELS = SHARED / "lfw-labels"
# a frontal face in a 112 x 112 frame (ArcFace's template)
POINTS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])


def test_parts_cover_the_image_without_overlap_and_sit_on_their_landmarks():
    lab = E.part_labels(POINTS, (112, 112))
    assert lab.shape == (112, 112) and lab.dtype == np.int8
    assert set(np.unique(lab)) == set(range(len(E.PARTS)))  # every part present, each pixel one label
    at = lambda p: E.PARTS[lab[int(p[1]), int(p[0])]]  # noqa: E731
    assert [at(p) for p in POINTS[:3]] == ["left eye", "right eye", "nose"]
    assert at((POINTS[3] + POINTS[4]) / 2) == "mouth"
    assert at((56, 20)) == "forehead" and at((56, 108)) == "chin/jaw" and at((30, 75)) == "cheeks"
    assert at((2, 2)) == "background"
    # the same face moved and scaled moves its parts with it
    lab2 = E.part_labels(POINTS * 2 + 10, (244, 244))
    assert E.PARTS[lab2[int(POINTS[0, 1] * 2 + 10), int(POINTS[0, 0] * 2 + 10)]] == "left eye"
    with pytest.raises(ValueError, match="five landmarks"):
        E.part_labels(POINTS[:4], (112, 112))
    with pytest.raises(ValueError, match="degenerate"):
        E.part_labels(np.zeros((5, 2)), (112, 112))


@pytest.mark.parametrize("part", ["mouth", "left eye", "chin/jaw", "background"])
def test_a_map_with_all_mass_on_one_part_ranks_it_first(part):
    lab = E.part_labels(POINTS, (112, 112))
    k = E.PARTS.index(part)
    amap = (lab == k).astype(float)
    shares = E.part_shares(amap, lab)
    assert shares[k] == pytest.approx(1.0) and shares.sum() == pytest.approx(1.0)
    effects = [0.1 * (i + 1) for i in range(len(E.PARTS))]
    r = E.rank_test(shares, effects, epsilon=0.05)
    assert r["top"] == part
    # top moves the embedding more than the bottom part by epsilon -> passed; else falsified
    effects[k] = 2.0
    assert E.rank_test(shares, effects, 0.05)["verdict"] == "passed"
    effects[k] = 0.0
    r = E.rank_test(shares, effects, 0.05)
    assert r["verdict"] == "falsified" and r["margin"] < 0


def test_rank_test_correlations_and_untestable():
    shares = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0])
    effects = [None, 1.0, 2.0, 3.0, 4.0, None, None, None]  # only four parts present, same order
    r = E.rank_test(shares, effects, 0.5)
    assert r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
    assert (r["top"], r["bottom"], r["verdict"], r["n_parts"]) == ("nose", "forehead", "passed", 4)
    r = E.rank_test(shares, effects[:1] + [4.0, 3.0, 2.0, 1.0] + effects[5:], 0.5)
    assert r["spearman"] == pytest.approx(-1.0) and r["verdict"] == "falsified"
    assert E.rank_test(np.full(8, 1 / 8), list(range(8)), 0.1)["verdict"] == "untestable"  # flat map
    assert E.part_shares(np.zeros((112, 112)), E.part_labels(POINTS, (112, 112))) is None


def test_chi_square_equals_scipy_and_the_formula():
    from scipy.stats import chi2_contingency

    table = np.array([[8, 2], [3, 7], [5, 5], [0, 0]])  # the empty part is left out
    r = E.chi_square(table)
    t = table[:3]
    expected = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
    assert r["chi2"] == pytest.approx(((t - expected) ** 2 / expected).sum())
    ref = chi2_contingency(t, correction=False)
    assert (r["chi2"], r["df"], r["p"]) == (pytest.approx(ref.statistic), 2, pytest.approx(ref.pvalue))
    assert E.chi_square([[3, 0], [4, 0]]) == {"chi2": 0.0, "df": 1, "p": 1.0, "n_groups": 2}
    assert E.chi_square([[3, 1]])["p"] is None


def test_part_analysis_counts_falsifications_against_the_top_part():
    def d(top, verdict, pair="p"):
        return {"top": top, "verdict": verdict, "pair": pair, "spearman": 0.5, "kendall": None,
                "shares": {p: 1 / 8 for p in E.PARTS}, "areas": {p: 1 / 8 for p in E.PARTS},
                "effects": {p: 0.1 for p in E.PARTS}}

    details = [d("mouth", "falsified"), d("mouth", "falsified"), d("mouth", "passed"), d("nose", "passed"),
               d(None, "untestable")]
    a = E.part_analysis(details)
    by = {p["part"]: p for p in a["parts"]}
    assert (by["mouth"]["n"], by["mouth"]["n_falsified"], by["mouth"]["fr"]) == (3, 2, pytest.approx(2 / 3))
    assert by["nose"]["fr"] == 0 and by["forehead"]["n"] == 0 and by["forehead"]["fr"] is None
    assert (a["n"], a["n_falsified"], a["n_untestable"]) == (4, 2, 1)
    assert a["chi_square"]["df"] == 1 and a["spearman"] == {"mean": 0.5, "n": 5}
    g = E.attribute_rates([("a", "falsified"), ("b", "passed"), ("c", "falsified")], {"a": "f", "b": "m", "c": None})
    assert [(x["group"], x["fr"]) for x in g["groups"]] == [("f", 1.0), ("m", 0.0)] and g["n_unlabelled"] == 1


def test_bad_fill_fails_before_anything_is_written(tmp_path, capsys, lfw_sample):
    from falsify.cli import main

    out = tmp_path / "run"
    rc = main(["run", "6.3", "--data", str(lfw_sample), "--fill", "optimised", "--out", str(out), "--n-pairs", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--fill" in err and "6.3" in err
    assert not out.exists()


def test_run_6_3_small_and_resumes(lfw_sample, tmp_path):
    if not LABELS.is_dir():
        pytest.skip(f"labels not found at {LABELS}")
    from falsify.experiments import runner_for

    from .conftest import TinyNet

    model = tmp_path / "tiny.pt"
    torch.save(TinyNet(), model)
    out = tmp_path / "run"
    cfg = dict(experiment="6.3", data=str(lfw_sample), model=str(model), input_size=[32, 32], trust_pickle=True,
               methods=["gradcam", "random"], n_pairs=3, out=str(out), preset="plain", tau_high=0.2, tau_low=0.1,
               epsilon=0.05, grid_pairs=0, device="cpu", labels=str(LABELS))
    summary = runner_for(RunConfig(**cfg), progress=False, log=lambda *a: None).run()
    s = summary["experiment_6_3"]
    assert s["frame"].startswith("resized") and s["epsilon"] == 0.05 and s["n_errors"] == 0
    with sqlite3.connect(out / "results.sqlite") as c:
        before = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.3' "
                           "ORDER BY method, pair").fetchall()
        assert len(before) == 2 * 3 and len({(m, p) for m, p, *_ in before}) == 6
        for m, p, v, detail in before:
            if v != "error":
                dd = json.loads(detail)
                assert sum(dd["shares"].values()) == pytest.approx(1.0)
                assert v == ("passed" if dd["effects"][dd["top"]] - dd["effects"][dd["bottom"]] >= 0.05
                             else "falsified")
        c.execute("DELETE FROM results WHERE experiment = '6.3' AND method = 'random'")
    summary2 = runner_for(RunConfig.resolve(experiment="6.3", out=str(out), trust_pickle=True, device="cpu"),
                          progress=False, log=lambda *a: None).run()
    with sqlite3.connect(out / "results.sqlite") as c:
        after = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.3' "
                          "ORDER BY method, pair").fetchall()
    assert after == before and summary2["experiment_6_3"]["pooled"] == s["pooled"]
    assert "gender" in s["attributes"]
    page = (out / "report.html").read_text()
    assert 'id="exp-6-3"' in page and 'id="table-6-3"' in page and 'id="fig_6_3_parts"' in page
    assert (out / "tables" / "table_6_3.tex").is_file() and (out / "figures" / "fig_6_3_fr_by_part.pdf").is_file()
    # the parts figure is drawn from the summary (its faces and landmarks), so 'falsify report OUT'
    # redraws it, as every other figure, and the page is the run's
    parts = summary2["experiment_6_3"]["parts_figure"]
    assert parts["size"] == [32, 32] and parts["align"] is None and 1 <= len(parts["faces"]) <= E.FIGURE_FACES
    drawn = {p.name: p.read_bytes() for p in (out / "figures").iterdir() if p.suffix == ".png"}
    assert {"fig_6_3_parts.png", "fig_6_3_fr_by_part.png"} <= set(drawn)
    shutil.rmtree(out / "figures")
    from falsify.cli import main

    assert main(["report", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir() if p.suffix == ".png"} == drawn
    assert (out / "report.html").read_text() == page
