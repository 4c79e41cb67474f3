"""Experiment 6.6: the analyses on synthetic verdicts with known answers, the label reader on the
shared labels folder, bad --labels input, and one small real run (a tiny CNN)."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from falsify.data.labels import Labels, load_labels, person_of, stratified_sample
from falsify.data.pairs import DataError, Pair, PairSet
from falsify.experiments import RunConfig, configure, runner_for
from falsify.experiments import exp_6_6 as E

from .conftest import SHARED

LABELS = SHARED / "lfw-labels"


def _verdicts(n_f: int, n_p: int) -> list[str]:
    return ["falsified"] * n_f + ["passed"] * n_p


def test_disparate_impact_ratio_of_exactly_a_half():
    d = E.disparate_impact({"female": _verdicts(2, 8), "male": _verdicts(4, 6)}, seed=0, n_boot=1000)
    assert d["dir"] == 0.5 and d["gap"] == pytest.approx(0.2) and d["gap_groups"] == ["male", "female"]
    assert d["dir_ci_low"] <= 0.5 <= d["dir_ci_high"] and d["n_boot_used"] <= 1000
    from scipy.stats import fisher_exact

    assert d["fisher_p"] == pytest.approx(fisher_exact([[2, 8], [4, 6]]).pvalue) and d["fisher_method"] == "exact"
    assert E.disparate_impact({"a": _verdicts(2, 8), "b": _verdicts(4, 6)}, seed=0, n_boot=1000) == \
        E.disparate_impact({"a": _verdicts(2, 8), "b": _verdicts(4, 6)}, seed=0, n_boot=1000)  # seeded


def test_disparate_impact_equal_rates_no_falsified_and_one_group():
    eq = E.disparate_impact({"a": _verdicts(3, 3), "b": _verdicts(5, 5) + ["untestable"]}, n_boot=200)
    assert eq["dir"] == 1.0 and eq["gap"] == 0.0 and eq["groups"][1]["n_untestable"] == 1
    none = E.disparate_impact({"a": _verdicts(0, 5), "b": _verdicts(0, 4)}, n_boot=200)
    assert none["dir"] is None and none["gap"] == 0.0 and none["fisher_p"] == 1.0 and none["dir_ci_low"] is None
    one = E.disparate_impact({"a": _verdicts(1, 1)}, n_boot=200)
    assert one["dir"] is None and one["fisher_p"] is None and one["groups"][0]["fr"] == 0.5


def test_fisher_on_more_than_two_groups_is_scipys_rxc_test():
    table = np.array([[1, 9], [5, 5], [8, 2]])
    p, how = E.fisher_test(table, seed=0)
    assert how.startswith("Monte Carlo") and p < 0.05
    assert E.fisher_test(np.array([[3, 2], [0, 0]]))[0] is None  # one group with pairs


def test_family_comparison_known_answers():
    from statsmodels.stats.contingency_tables import mcnemar

    pairs = [f"p{i}" for i in range(20)]
    std = {p: ("falsified" if i < 12 else "passed") for i, p in enumerate(pairs)}  # 12/20
    bio = {p: ("falsified" if i < 4 else "passed") for i, p in enumerate(pairs)}  # 4/20: 8 discordant one way
    bio["p19"] = "untestable"
    std["p18"] = "error"
    fam = E.family_comparison({"gradcam": std, "biometric-gradcam": bio, "ig": std, "geodesic-ig": std},
                              [("gradcam", "biometric-gradcam"), ("ig", "geodesic-ig")])
    g, i = fam
    assert g["n_common"] == 19 and g["n_pairs"] == 18 and g["n_excluded"] == 1
    assert g["fr_standard"] == pytest.approx(12 / 18) and g["fr_biometric"] == pytest.approx(4 / 18)
    assert g["reduction"] == pytest.approx(8 / 18) and g["relative_reduction"] == pytest.approx(8 / 12)
    assert g["cohens_h"] == pytest.approx(2 * math.asin(math.sqrt(12 / 18)) - 2 * math.asin(math.sqrt(4 / 18)))
    assert g["p"] == pytest.approx(mcnemar([[4, 8], [0, 6]], exact=True).pvalue)  # 2 * 0.5**8
    assert i["p"] == 1.0 and i["reduction"] == 0.0 and i["cohens_h"] == 0.0
    assert g["p_holm"] == pytest.approx(min(1.0, 2 * g["p"])) and i["p_holm"] == 1.0  # Holm over two families
    assert g["reject"] is True and i["reject"] is False
    empty = E.family_comparison({"gradcam": {"x": "untestable"}, "biometric-gradcam": {"x": "passed"}},
                                [("gradcam", "biometric-gradcam")])
    assert empty[0]["p"] is None and empty[0]["n_pairs"] == 0


def test_identity_summary_known_answers():
    d = [{"method": "gradcam", "ssim_high": s, "ssim_low": 0.9, "survive_high": sh, "survive_low": 1.0,
          "reproduced": True} for s, sh in ((0.5, 1.0), (0.7, 0.5), (0.6, 0.0))]
    (s,) = E.identity_summary(d)
    assert s["n"] == 3 and s["n_reproduced"] == 3
    assert s["high"]["ssim_mean"] == pytest.approx(0.6) and s["high"]["ssim_min"] == 0.5
    assert s["high"]["n_survives"] == 1 and s["high"]["survives"] == pytest.approx(1 / 3)
    assert s["high"]["survive_share_mean"] == pytest.approx(0.5) and s["low"]["survives"] == 1.0
    assert s["high"]["ci_low"] < 1 / 3 < s["high"]["ci_high"]
    two = E.identity_summary([{**d[0], "method": "ig"}, d[0]], order=["gradcam", "ig"])
    assert [e["method"] for e in two] == ["gradcam", "ig"]


def test_group_fairness_by_probe_image_and_unlabelled():
    verdicts = {"gradcam": {"a": "falsified", "b": "passed", "c": "falsified", "d": "error", "e": "passed"}}
    g = E.group_fairness(verdicts, {"a": "female", "b": "female", "c": "male", "d": "male", "e": None}, n_boot=100)
    (m,) = g["methods"]
    assert m["n_unlabelled"] == 1 and [x["n"] for x in m["groups"]] == [2, 1]
    assert m["dir"] == 0.5 and g["groups"] == ["female", "male"]


def test_labels_of_the_shared_folder():
    if not LABELS.is_dir():
        pytest.skip(f"labels not found at {LABELS}")
    lab = load_labels(LABELS)
    assert len(lab.conflicts) == 5 and "Claudia_Coslovich_0001.jpg" in lab.conflicts
    assert len(lab.gender) == 10268 + 2966 - 2 * 5
    assert sum(g == "female" for g in lab.gender.values()) == 2966 - 5
    assert len(lab.race) == 866 and lab.race["Sidney_Poitier"] == "african"
    assert lab.race["Tracee_Ellis_Ross"] == "mixed" and person_of("x/Woody_Allen_0003.jpg") == "Woody_Allen"
    from falsify.data import load_pairs

    pairs = load_pairs(SHARED / "lfw-sample")
    cov = lab.coverage(pairs)
    assert cov["pairs"] == len(pairs) == sum(1 for _ in pairs)
    assert cov["gender"]["labelled"] == sum(cov["gender"]["groups"].values()) <= len(pairs)
    assert cov["gender"]["labelled"] >= len(pairs) - 5  # every LFW image but the conflicts has a gender
    assert 0 < cov["race"]["labelled"] < len(pairs)
    assert cov["race"]["labelled"] == sum(lab.race_of(p) is not None for p in pairs)
    s = stratified_sample(pairs, lab, 10, seed=0)
    assert [lab.gender_of(p) for p in s].count("female") == 5 and len(s) == 10
    assert s.ids() == stratified_sample(pairs, lab, 10, seed=0).ids()


def test_stratified_sample_fills_from_the_other_group(tmp_path):
    pairs = PairSet([Pair(Path(f"P{i}/P{i}_0001.jpg"), Path("Q/Q_0001.jpg"), i % 2 == 0, index=i) for i in range(8)],
                    source="t")
    lab = Labels({"P0_0001.jpg": "female", **{f"P{i}_0001.jpg": "male" for i in range(1, 7)}})
    s = stratified_sample(pairs, lab, 6, seed=0)
    assert len(s) == 6 and [lab.gender_of(p) for p in s].count("female") == 1  # one female A exists
    with pytest.raises(DataError, match="gender label"):
        stratified_sample(pairs, Labels({}), 4)


def test_bad_labels_or_stratify_fail_in_the_config(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        RunConfig(experiment="6.6", labels=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="male_names.txt"):
        RunConfig(experiment="6.6", labels=str(tmp_path))
    with pytest.raises(ValueError, match="labels folder too"):
        RunConfig(stratify="gender")
    with pytest.raises(ValueError, match="stratify must be"):
        RunConfig(stratify="race", labels=str(LABELS))
    assert configure(experiment="6.6").methods == ["gradcam", "biometric-gradcam", "ig", "geodesic-ig"]
    # without --stratify the labels do not change results: a 6.1 store is resumed by 6.6 with labels
    assert RunConfig(labels=str(LABELS)).result_settings()["labels"] is None
    assert RunConfig(labels=str(LABELS), stratify="gender").result_settings()["labels"] == str(LABELS.resolve())
    with pytest.raises(ValueError, match="at least one"):
        runner_for(RunConfig(experiment="6.6", methods=["gradcam", "ig"]))


def test_cli_bad_labels_writes_nothing(tmp_path, capsys, lfw_sample):
    from falsify.cli import main

    out = tmp_path / "run"
    rc = main(["run", "6.6", "--data", str(lfw_sample), "--labels", str(tmp_path / "missing"), "--out", str(out),
               "--n-pairs", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--labels" in err and "not a folder" in err
    assert not out.exists()


def test_run_6_6_small_and_resumes(lfw_sample, tmp_path):
    if not LABELS.is_dir():
        pytest.skip(f"labels not found at {LABELS}")
    from falsify.experiments import runner_for

    from .conftest import TinyNet

    model = tmp_path / "tiny.pt"
    torch.save(TinyNet(), model)
    out = tmp_path / "run"
    cfg = dict(experiment="6.6", data=str(lfw_sample), model=str(model), input_size=[32, 32], trust_pickle=True,
               methods=["gradcam", "biometric-gradcam", "ig", "geodesic-ig", "random"], n_pairs=4, out=str(out),
               preset="plain", calibration_pairs=20, grid_pairs=0, device="cpu", labels=str(LABELS),
               stratify="gender",
               method_options={"biometric-gradcam": {"threshold": 0.5}, "ig": {"steps": 8, "tolerance": None},
                               "geodesic-ig": {"steps": 8, "tolerance": None}})
    summary = runner_for(RunConfig(**cfg), progress=False, log=lambda *a: None).run()
    s = summary["experiment_6_6"]
    assert [(f["standard"], f["biometric"]) for f in s["families"]] == [("gradcam", "biometric-gradcam"),
                                                                         ("ig", "geodesic-ig")]
    ident = {e["method"]: e for e in s["identity"]["methods"]}
    assert set(ident) <= set(cfg["methods"]) and ident
    for e in ident.values():
        assert e["n_reproduced"] == e["n"]  # the rebuilt counterfactuals are the test's
        assert 0 < e["high"]["ssim_mean"] <= 1 and e["high"]["n_decided"] == e["n"]
    fair = s["fairness"]["attributes"]["gender"]
    assert fair["coverage"] == {"female": 2, "male": 2} and fair["n_labelled"] == 4
    with sqlite3.connect(out / "results.sqlite") as c:
        before = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.6' "
                           "ORDER BY method, pair").fetchall()
        assert len(before) == 5 * 4 and len({(m, p) for m, p, *_ in before}) == 20
        c.execute("DELETE FROM results WHERE experiment = '6.6' AND method = 'ig'")
    summary2 = runner_for(RunConfig.resolve(experiment="6.6", out=str(out), trust_pickle=True, device="cpu"),
                          progress=False, log=lambda *a: None).run()
    with sqlite3.connect(out / "results.sqlite") as c:
        after = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.6' "
                          "ORDER BY method, pair").fetchall()
    assert after == before and summary2["experiment_6_6"]["fairness"] == s["fairness"]
    page = (out / "report.html").read_text()
    assert 'id="exp-6-6"' in page and 'id="table-6-6"' in page and 'id="table-6-7"' in page
    assert 'id="fig_6_7_fairness"' in page
    assert (out / "tables" / "table_6_7.tex").is_file() and (out / "figures" / "fig_6_7_fairness.pdf").is_file()
    # without labels: the comparison, and a note that fairness needs them
    cfg2 = {**cfg, "labels": None, "stratify": None, "out": str(tmp_path / "nolabels"), "n_pairs": 2,
            "methods": ["gradcam", "biometric-gradcam"],
            "method_options": {"biometric-gradcam": {"threshold": 0.5}}}
    s2 = runner_for(RunConfig(**cfg2), progress=False, log=lambda *a: None).run()["experiment_6_6"]
    assert s2["fairness"] is None and "needs labels" in s2["fairness_note"]
    assert "needs labels" in (tmp_path / "nolabels" / "report.html").read_text()
