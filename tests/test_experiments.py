"""`falsify run`: the store, resuming after SIGKILL, error rows, configs, and 6.2's counting."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from falsify.experiments import ResultsStore, RunConfig, runner_for
from tests.conftest import signal_when, stored_rows

# fixed thresholds skip calibration (tested separately), keeping these runs short
FIXED = ["--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05"]
CHEAP = "gradcam,saliency,random"


def _argv(lfw, out, n_pairs=10, extra=()):
    return ["run", "6.1", "--data", str(lfw), "--n-pairs", str(n_pairs), "--methods", CHEAP,
            "--out", str(out), "--batch-pairs", "2", "--seed", "3", "-q", "--preset", "plain", "--no-ceiling", *FIXED,
            *extra]  # the ceiling's rows and their resumption: tests/test_ceiling.py


def _rows(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT method, pair, verdict, d_high, d_low FROM results ORDER BY method, pair").fetchall()


def _stable(summary: dict) -> dict:
    """The parts of a summary that must not depend on interruptions or timing."""
    methods = [{k: v for k, v in m.items() if k != "seconds_per_pair"} for m in summary["methods"]]
    return {"methods": methods, "comparisons": summary["comparisons"], "n_rows": summary["n_rows"]}


def _assert_close(a, b, path="", tol=1e-6):
    """Equal structure, equal strings/verdicts/counts, floats within ``tol`` (batched float32
    arithmetic may differ in the last bits)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol, (path, a, b)
    else:
        assert a == b, (path, a, b)


def _cli(argv, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "falsify.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(lfw_sample, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _cli(_argv(lfw_sample, killed))
    signal_when(proc, lambda: stored_rows(killed) >= 6, signal.SIGKILL, timeout=240)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed ({stored_rows(killed)} rows)"
    partial = _rows(killed)
    assert 6 <= len(partial) < 30
    assert not (killed / "summary.json").exists()

    resumed = _cli(_argv(lfw_sample, killed))
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    assert f"{30 - len(partial)} of 30 (method, pair) rows to compute" in out
    fresh = _cli(_argv(lfw_sample, clean))
    out2, _ = fresh.communicate(timeout=400)
    assert fresh.returncode == 0, out2

    rows = _rows(killed)
    assert len(rows) == 30 and len({(m, p) for m, p, *_ in rows}) == 30  # one row per (method, pair)
    assert set(partial) <= set(rows)  # what was committed before the kill is kept as it was
    _assert_close(rows, _rows(clean))
    s1 = json.loads((killed / "summary.json").read_text())
    s2 = json.loads((clean / "summary.json").read_text())
    _assert_close(_stable(s1), _stable(s2))
    assert (killed / "report.html").is_file() and (killed / "tables" / "table_6_1.tex").is_file()


def test_error_rows_and_the_run_goes_on(lfw_sample, tmp_path):
    data = tmp_path / "faces"
    names = ["Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn"]
    for n in names:
        shutil.copytree(lfw_sample / n, data / n)
    imgs = {n: sorted((data / n).glob("*.jpg")) for n in names}
    bad = imgs["Amber_Tamblyn"][0]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [(imgs[names[0]][0], imgs[names[0]][1], 1), (imgs[names[1]][0], imgs[names[1]][1], 1),
            (imgs[names[0]][0], imgs[names[1]][0], 0), (bad, imgs[names[0]][1], 0)]
    csv = data / "pairs.csv"
    csv.write_text("a,b,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    config = RunConfig(data=str(csv), methods=["gradcam", "random"], n_pairs=4, out=str(tmp_path / "run"),
                       tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=2, preset="plain")
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    assert summary["n_errors"] == 2 and summary["n_rows"] == 8
    assert all("cannot read image" in e["error"] for e in summary["errors"])
    for m in summary["methods"]:
        assert m["n_error"] == 1 and m["n_passed"] + m["n_falsified"] + m["n_untestable"] == 3
    assert (tmp_path / "run" / "figures" / "fig_6_1_saliency.png").is_file()


def test_other_settings_are_refused_and_nothing_is_lost(lfw_sample, tmp_path):
    out = tmp_path / "run"
    base = dict(data=str(lfw_sample), methods=["random"], n_pairs=4, out=str(out),
                tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=0, preset="plain")
    runner_for(RunConfig(**base), progress=False, log=lambda *a: None).run()
    before = _rows(out)
    with pytest.raises(ValueError, match="other settings.*seed"):
        runner_for(RunConfig(**{**base, "seed": 9}), progress=False, log=lambda *a: None).run()
    assert _rows(out) == before
    # a store made before ig and geodesic-ig integrated by the adaptive trapezoid rule (no
    # path_rules in its settings), or before 16 starting steps, tiled occlusion, 128 coalitions and
    # the ceiling's early stop ("adaptive-trapezoid"), is not resumed: its rows would mix two rules
    for old in (None, "adaptive-trapezoid"):
        with ResultsStore(out / "results.sqlite") as store:
            settings = store.get_meta("settings")
            settings.pop("path_rules", None)
            if old is not None:
                settings["path_rules"] = old
            store.set_meta("settings", settings)
        with pytest.raises(ValueError, match="older falsify whose ig, geodesic-ig, occlusion, kernelshap, lime"):
            runner_for(RunConfig(**base), progress=False, log=lambda *a: None).run()
        assert _rows(out) == before


def test_toml_config_and_flags(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('methods = ["gradcam", "ig"]\nn-pairs = 12\ncounterfactuals = 4\nseed = 5\n')
    c = RunConfig.from_toml(cfg, seed=7)
    assert c.methods == ["gradcam", "ig"] and c.n_pairs == 12 and c.K == 4 and c.seed == 7
    cfg.write_text("n_pairz = 3\n")
    with pytest.raises(ValueError, match="unknown key.*n_pairz"):
        RunConfig.from_toml(cfg)
    cfg.write_text("n_pairs = [\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        RunConfig.from_toml(cfg)
    with pytest.raises(ValueError, match="unknown method"):
        RunConfig(methods="gradcam,nope")
    with pytest.raises(ValueError, match="all of tau_high"):
        RunConfig(tau_high=0.3)
    assert "lime" in RunConfig().methods  # default: every method


def test_experiment_6_2_counts_pairs_not_counterfactuals(lfw_sample, tmp_path):
    """K = 4 noise counterfactuals per region: every statistic still has one unit per pair."""
    config = RunConfig(experiment="6.2", data=str(lfw_sample), methods=["gradcam", "random"], n_pairs=12,
                       K=4, fill="noise", out=str(tmp_path / "run"), calibration_pairs=60, grid_pairs=0, preset="plain")
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    e = summary["experiment_6_2"]
    assert e["unit"] == "pair"
    for method in ("gradcam", "random"):
        strata = [s for s in e["strata"] if s["method"] == method]
        assert len(strata) == 4 and sum(s["n_pairs"] for s in strata) == 12
        assert sum(s["n_passed"] + s["n_falsified"] + s["n_untestable"] for s in strata) == 12
        corr = next(c for c in e["correlation"] if c["method"] == method)
        m = next(m for m in summary["methods"] if m["method"] == method)
        assert corr["n"] == m["n_passed"] + m["n_falsified"] <= 12
    with ResultsStore(tmp_path / "run" / "results.sqlite") as s:
        assert {r["k"] for r in s.rows("6.1", "dlib-resnet")} == {4}
        assert s.get_meta("calibration")["n_genuine"] > 0
    html = (tmp_path / "run" / "report.html").read_text()
    assert "6.2" in html


def test_store_rows_of_a_runs_pairs(tmp_path):
    """``store.rows(..., pairs=ids)``: a run's own pairs only (a store may hold rows of others), in
    the store's order; methods and pairs filter together."""
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.add_rows({"experiment": "6.1", "model": "m", "method": method, "pair": pair, "pair_index": i,
                        "same": True, "fold": 0, "verdict": "passed"}
                       for method in ("a", "b") for i, pair in enumerate(("p0", "p1", "p2")))
        assert [(r["method"], r["pair"]) for r in store.rows("6.1", "m", pairs={"p2", "p0"})] == [
            ("a", "p0"), ("a", "p2"), ("b", "p0"), ("b", "p2")]
        assert [r["pair"] for r in store.rows("6.1", "m", ["b"], pairs={"p1", "other"})] == ["p1"]
        assert store.rows("6.1", "m", pairs=set()) == []
        assert len(store.rows("6.1", "m")) == 6
