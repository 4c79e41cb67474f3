"""Experiment 6.5: the sample-size statistics on synthetic verdicts with known answers, the
convergence summary, and one small real run (a tiny CNN, so Algorithm 1's 100 steps are quick)."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
import torch

from falsify.experiments import exp_6_5 as E
from falsify.experiments import RunConfig, runner_for

from .test_experiments import _assert_close


def test_bootstrap_std_is_close_to_the_binomial_at_large_n():
    verdicts = ["falsified"] * 90 + ["passed"] * 210  # p = 0.3
    rows = E.bootstrap_rates(verdicts, [25, 200], seed=0, n_boot=4000)
    for b in rows:
        assert b["binomial_std"] == pytest.approx(math.sqrt(0.3 * 0.7 / b["n"]))
        assert b["mean"] == pytest.approx(0.3, abs=0.01)
        assert b["std"] == pytest.approx(b["binomial_std"], rel=0.08)
    assert rows[0]["ci_width"] > rows[1]["ci_width"] > 0
    assert E.bootstrap_rates(verdicts, [25], seed=0) == E.bootstrap_rates(verdicts, [25], seed=0)  # seeded


def test_mcnemar_power_exact_matches_simulation_and_size():
    from statsmodels.stats.contingency_tables import mcnemar

    n, p10, p01 = 40, 0.25, 0.05
    rng = np.random.default_rng(1)
    hits = 0
    sims = 1500
    for _ in range(sims):
        kinds = rng.choice(3, size=n, p=[p10, p01, 1 - p10 - p01])
        n10, n01 = int((kinds == 0).sum()), int((kinds == 1).sum())
        hits += mcnemar([[0, n10], [n01, 0]], exact=True).pvalue <= 0.05
    assert E.mcnemar_power(n, p10, p01) == pytest.approx(hits / sims, abs=0.04)
    assert E.mcnemar_power(60, 0.1, 0.1) <= 0.05  # no difference: at most the test's size
    assert E.mcnemar_power(200, 0.2, 0.0) > E.mcnemar_power(20, 0.2, 0.0)
    n80 = E.n_for_power(0.15, 0.05)
    assert E.mcnemar_power(n80, 0.15, 0.05) >= 0.8 > E.mcnemar_power(n80 - 1, 0.15, 0.05)


def test_hoeffding_n():
    assert E.hoeffding_n(0.1, 0.05) == math.ceil(math.log(40) / 0.02) == 185
    assert E.hoeffding_n(0.05, 0.01) == 1060


def test_sample_size_analysis_discordance_and_grid():
    pairs = [f"p{i}" for i in range(30)]
    a = {p: ("falsified" if i < 15 else "passed") for i, p in enumerate(pairs)}
    b = {p: ("falsified" if i < 9 else "passed") for i, p in enumerate(pairs)}  # disagree on 6 of 30
    s = E.sample_size_analysis({"gradcam": a, "saliency": b, "random": {p: "falsified" for p in pairs}}, seed=0,
                               n_boot=200)
    assert s["discordance_observed"] == pytest.approx(0.2) and s["n_method_pairs"] == 1  # controls left out
    m = {x["method"]: x for x in s["methods"]}
    assert [b["n"] for b in m["gradcam"]["bootstrap"]] == [10, 25, 30] and m["gradcam"]["fr"] == 0.5
    assert m["random"]["bootstrap"][0]["std"] == 0.0 and m["random"]["control"]
    p = s["power"][0]
    assert p["difference"] == 0.1 and p["p10"] == pytest.approx(0.15) and p["p01"] == pytest.approx(0.05)
    assert s["power_method"] == "exact"


def test_convergence_summary_known_answers():
    d = [{"region": "high", "converged": True, "iterations": it, "final_distance": 0.5, "losses": [1.0, 0.5]}
         for it in (10, 20, 30)]
    d += [{"region": "low", "converged": False, "iterations": 100, "final_distance": 0.2, "losses": [1.0] * 100}]
    s = E.convergence_summary(d, steps=100)
    assert s["all"]["n"] == 4 and s["all"]["n_converged"] == 3 and s["all"]["rate"] == 0.75
    assert s["all"]["iterations_median"] == 20 and s["all"]["iterations_mean"] == 20
    assert s["regions"]["low"]["rate"] == 0.0 and s["regions"]["low"]["iterations_median"] is None
    assert s["regions"]["high"]["final_distance_median"] == 0.5 and s["all"]["ci_low"] < 0.75 < s["all"]["ci_high"]


def test_run_6_5_small_and_resumes(lfw_sample, tmp_path):
    from tests.conftest import TinyNet

    model = tmp_path / "tiny.pt"
    torch.save(TinyNet(), model)
    out = tmp_path / "run"
    cfg = dict(experiment="6.5", data=str(lfw_sample), model=str(model), input_size=[32, 32], trust_pickle=True,
               methods=["gradcam", "saliency", "random"], n_pairs=4, K=2, out=str(out), preset="plain",
               tau_high=0.05, tau_low=0.03, epsilon=0.01, grid_pairs=0, device="cpu")
    summary = runner_for(RunConfig(**cfg), progress=False, log=lambda *a: None).run()
    conv = summary["experiment_6_5"]["convergence"]
    assert conv["method"] == "gradcam" and conv["starts"] == 2 and conv["steps"] == 100
    assert conv["all"]["n"] + conv["n_untestable"] == 4 * 2 * 2 and conv["all"]["n"] > 0
    with sqlite3.connect(out / "results.sqlite") as c:
        before = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.5' "
                           "ORDER BY method, pair").fetchall()
        assert len(before) == 16 and len({(m, p) for m, p, *_ in before}) == 16
        c.execute("DELETE FROM results WHERE experiment = '6.5' AND method LIKE 'low/%'")
    summary2 = runner_for(RunConfig(**cfg), progress=False, log=lambda *a: None).run()
    with sqlite3.connect(out / "results.sqlite") as c:
        after = c.execute("SELECT method, pair, verdict, detail FROM results WHERE experiment = '6.5' "
                          "ORDER BY method, pair").fetchall()
    # the missing rows are computed again from the same seeded starts: the same keys and verdicts;
    # Algorithm 1 then runs in a batch of another size (only the low regions), and float32 results
    # depend on the batch, by ~1e-6 after its 100 steps: numbers are compared to 1e-5
    assert [r[:3] for r in after] == [r[:3] for r in before]
    _assert_close([json.loads(r[3]) for r in after], [json.loads(r[3]) for r in before], tol=1e-5)
    _assert_close(summary2["experiment_6_5"]["convergence"]["all"], conv["all"], tol=1e-5)
    page = (out / "report.html").read_text()
    assert 'id="exp-6-5"' in page and 'id="table-6-5"' in page and 'id="fig_6_5_convergence"' in page
    assert (out / "tables" / "table_6_5.tex").is_file() and (out / "figures" / "fig_6_5_sample_size.pdf").is_file()
    with pytest.raises(ValueError, match="not a control"):
        runner_for(RunConfig(**{**cfg, "methods": ["random"]}))
