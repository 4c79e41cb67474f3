"""Experiment 6.4 (across models): Cochran's Q, the common-pairs rule, --models checks, a real run."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import cochrans_q as sm_cochrans_q

from falsify.cli import main
from falsify.experiments import RunConfig
from falsify.experiments.exp_6_4 import across_models, cochrans_q, coefficient_of_variation, usable_pairs


def test_cochrans_q_hand_computed():
    # k = 3 models, column sums C = (4, 2, 1), N = 7, row sums R = (2, 1, 3, 0, 1), sum R^2 = 15:
    # Q = (k - 1)(k sum C^2 - N^2) / (k N - sum R^2) = 2 (3 * 21 - 49) / (21 - 15) = 14/3
    x = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]]
    r = cochrans_q(x)
    assert r["q"] == pytest.approx(14 / 3)
    assert r["df"] == 2
    assert r["p"] == pytest.approx(math.exp(-7 / 3))  # chi-square with 2 df: p = exp(-Q/2)


def test_cochrans_q_equals_statsmodels_on_verdicts():
    rng = np.random.default_rng(3)
    models = ["m1", "m2", "m3", "m4"]
    pairs = [f"p{i}" for i in range(40)]
    rates = {"m1": 0.2, "m2": 0.5, "m3": 0.7, "m4": 0.4}
    verdicts = {m: {"gradcam": {p: "falsified" if rng.random() < rates[m] else "passed" for p in pairs}}
                for m in models}
    s = across_models(verdicts, pairs, ["gradcam"])
    e = s["per_method"][0]
    x = np.array([[verdicts[m]["gradcam"][p] == "falsified" for m in models] for p in pairs], dtype=int)
    want = sm_cochrans_q(x)
    assert e["n_paired"] == 40 and e["models"] == models
    assert e["q"] == pytest.approx(float(want.statistic))
    assert e["p"] == pytest.approx(float(want.pvalue))
    frs = [x[:, j].mean() for j in range(4)]
    assert e["cv"] == pytest.approx(np.std(frs) / np.mean(frs))
    assert len(s["pairwise"]) == 6 and all(c["p_holm"] >= c["p"] for c in s["pairwise"])


def test_cochrans_q_no_discordant_pair_is_no_evidence():
    assert cochrans_q([[1, 1], [0, 0], [1, 1]]) == {"q": 0.0, "df": 1, "p": 1.0}


def test_pair_unusable_by_one_model_is_dropped_for_all():
    pairs = ["p1", "p2", "p3", "p4"]
    verdicts = {
        "a": {"gradcam": {"p1": "falsified", "p2": "passed", "p3": "falsified", "p4": "passed"}},
        "b": {"gradcam": {"p1": "passed", "p2": "error", "p3": "falsified", "p4": "untestable"}},
        "a:random": {"gradcam": {"p1": "falsified", "p2": "falsified", "p3": "falsified", "p4": "falsified"}},
    }
    kept, dropped = usable_pairs(verdicts, pairs)
    assert kept == ["p1", "p3", "p4"] and dropped == {"a": [], "b": ["p2"], "a:random": []}
    s = across_models(verdicts, pairs, ["gradcam"])
    assert s["n_dropped"] == 1 and s["dropped_by_model"]["b"] == 1
    fr = {r["model"]: r for r in s["rates"]}
    assert (fr["a"]["n_falsified"], fr["a"]["n"]) == (2, 3)  # p2 is gone for a too
    assert (fr["b"]["n"], fr["b"]["n_untestable"]) == (2, 1)
    e = s["per_method"][0]
    assert e["models"] == ["a", "b"]  # the randomised control is not in Q
    assert (e["n_paired"], e["n_excluded"]) == (2, 1)  # p4 untestable on b


def test_random_model_maps_on_the_real_model_are_a_control_row():
    pairs = ["p1", "p2"]
    verdicts = {"a": {"saliency": {"p1": "passed", "p2": "passed"}},
                "a:random": {"saliency": {"p1": "falsified", "p2": "passed"}}}
    s = across_models(verdicts, pairs, ["saliency"], controls={"a": {"saliency": {"p1": "falsified", "p2": "falsified"}}})
    on_real = [r for r in s["rates"] if r["maps_of"] == "a:random" and r["model"] == "a"]
    assert len(on_real) == 1 and on_real[0]["control"] and on_real[0]["fr"] == 1.0
    assert s["per_method"][0]["models"] == ["a", "a:random"]  # one real model: Q across all given


def test_coefficient_of_variation():
    assert coefficient_of_variation([0.2, 0.4]) == pytest.approx(0.1 / 0.3)
    assert coefficient_of_variation([0.3]) is None and coefficient_of_variation([0.0, 0.0]) is None


@pytest.mark.parametrize("models, needle", [("dlib-resnet,nope", "unknown model 'nope'"),
                                            ("nope:random,sface", "unknown model 'nope:random'"),
                                            ("sface", "at least two")])
def test_bad_models_one_line_error_writes_nothing(tmp_path, capsys, models, needle):
    out = tmp_path / "run"
    rc = main(["run", "6.4", "--models", models, "--out", str(out), "--n-pairs", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_models_only_for_6_4():
    from falsify.experiments.registry import configure

    with pytest.raises(ValueError, match=r"models \(--models\) is a setting of experiment 6.4"):
        RunConfig(experiment="6.1", models=["dlib-resnet", "sface"])
    assert configure(experiment="6.4").models == ["dlib-resnet", "sface", "dlib-resnet:random"]


def _rows(path, experiment="6.1"):
    with sqlite3.connect(path) as db:
        return db.execute("select model, method, pair, count(*) from results where experiment = ? "
                          "group by model, method, pair", (experiment,)).fetchall()


def test_real_run_resumes(lfw_sample, tmp_path, capsys):
    out = tmp_path / "r64"
    argv = ["run", "6.4", "--data", str(lfw_sample), "--models", "dlib-resnet,dlib-resnet:random",
            "--methods", "gradcam,random", "--n-pairs", "2", "--preset", "plain", "--tau-high", "0.2",
            "--tau-low", "0.1", "--epsilon", "0.05", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    real, rand = out / "models" / "dlib-resnet" / "results.sqlite", out / "models" / "dlib-resnet_random" / "results.sqlite"
    rows_real, rows_rand = _rows(real), _rows(rand)
    # the real model: gradcam, random, gradcam@random-model; the randomised one: gradcam, random
    assert len(rows_real) == 2 * 3 and len(rows_rand) == 2 * 2
    assert all(n == 1 for *_, n in rows_real + rows_rand)
    # each model's 6.1 run searches the test's ceiling of every pair, under its own key
    assert len(_rows(real, "6.1-ceiling")) == 2 and len(_rows(rand, "6.1-ceiling")) == 2
    summary = json.loads((out / "summary.json").read_text())
    s = summary["experiment_6_4"]
    assert s["n_kept"] + s["n_dropped"] == 2 and s["models"] == ["dlib-resnet", "dlib-resnet:random"]
    assert {(r["model"], r["maps_of"]) for r in s["rates"]} == {
        ("dlib-resnet", "dlib-resnet"), ("dlib-resnet:random", "dlib-resnet:random"),
        ("dlib-resnet", "dlib-resnet:random")}
    assert "table-6-4" in (out / "report.html").read_text()
    assert (out / "tables" / "table_6_4.tex").is_file() and (out / "figures" / "fig_6_4_heatmap.png").is_file()
    assert "experiment 6.4 on" in first
    # the same command again computes nothing and keeps one row per (model, method, pair)
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("all rows are already in the store") == 2
    assert _rows(real) == rows_real and _rows(rand) == rows_rand
    # another setting on the same folder is refused before anything is written
    rc = main([a if a != "2" else "3" for a in argv])  # --n-pairs 3
    assert rc == 2 and "other settings" in capsys.readouterr().err


def test_each_model_keeps_its_own_alignment_on_resume(lfw_sample, tmp_path):
    """6.4 stores --align as given (auto): each model's own run resolves it (SFace arcface-112,
    dlib dlib-150), also when the 6.4 run is resumed from its store."""
    from falsify.experiments.exp_6_4 import EXPERIMENT, sub_config
    from falsify.experiments.registry import configure

    c = configure(experiment="6.4", models=["dlib-resnet", "sface"], data=str(lfw_sample), out=str(tmp_path / "o"))
    assert EXPERIMENT.result_settings(c)["align"] == "auto"
    assert sub_config(c, "sface").result_settings()["align"] == "arcface-112"
    assert sub_config(c, "dlib-resnet").result_settings()["align"] == "dlib-150"
    pinned = configure(experiment="6.4", models=["dlib-resnet", "sface"], data=str(lfw_sample), align="none",
                       out=str(tmp_path / "p"))
    assert {sub_config(pinned, m).result_settings()["align"] for m in pinned.models} == {"none"}
