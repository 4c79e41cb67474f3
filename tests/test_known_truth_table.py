"""The known-truth table every 6.1 report reads (``falsify.experiments.truth_table``) and its
writer (``benchmarks/known_truth_table.py``): confirmation-half rates with their intervals per
(run, configuration); the earlier pooled entries kept, marked stale and never returned as measured."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def writer():
    spec = importlib.util.spec_from_file_location("known_truth_table", ROOT / "benchmarks" / "known_truth_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(k, n, ci):
    return {"rate": k / n, "n": n, "k": k, "ci": ci}


def _config(fill, q, target, criterion, delta, sens, spec, best=False):
    """One configuration of a known-truth summary, as ``truth_summary.judge_config`` writes it."""
    half = {"sensitivity": _rate(*sens), "specificity": {**_rate(*spec), "ci_maps": [0.8, 0.97], "n_composites": 20},
            "youden": None, "ties": 1}
    return {"fill": fill, "q": q, "q_label": "truth" if q is None else f"{q:g}", "target": target,
            "criterion": criterion, "delta": delta, "selection": half, "confirmation": half,
            "all": {"sensitivity": _rate(30, 40, None), "specificity": _rate(190, 200, None)}}


def kt_summary() -> dict:
    """A known-truth summary.json with the keys the writer reads (numbers made up for the test)."""
    configs = [
        _config("mean", None, "embedding", "beyond-prior", 0.0, (17, 20, [0.64, 0.95]), (95, 100, [0.9, 0.99])),
        _config("mean", 0.1, "embedding", "absolute", None, (12, 20, [0.39, 0.78]), (80, 100, [0.7, 0.88])),
        _config("mean", 0.1, "embedding", "beyond-prior", 0.0, (16, 20, [0.58, 0.92]), (93, 100, [0.87, 0.98])),
        _config("mean", 0.1, "embedding", "beyond-prior, delta calibrated", 0.012, (14, 20, [0.48, 0.85]),
                (97, 100, [0.93, 1.0])),
    ]
    return {"experiment": "known-truth", "model": "dlib-resnet", "created": "2026-12-08T10:00:00",
            "config": {"model": "dlib-resnet", "n_pairs": 40, "data": "/data/lfw-other", "truth": "lateral",
                       "truth_parts": "inner", "truth_min_effect": 0.0, "seed": 3, "delta": 0.0},
            "known_truth": {"align": "dlib-150", "construction": "lateral", "parts": "inner", "configurations": configs,
                            "best": {"fill": "mean", "q": 0.1, "q_label": "0.1", "target": "embedding",
                                     "criterion": "beyond-prior", "delta": 0.0},
                            "split": {"seed": 3, "n_selection": 20, "n_confirmation": 20},
                            "strength": {"effect_median": 0.05}}}


def test_the_writer_keeps_confirmation_rates_and_measured_returns_them(writer, tmp_path):
    from falsify.experiments.truth_table import SCHEMA, measured
    from falsify.report.reading import is_confirmation

    out = tmp_path / "kt"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(kt_summary()))
    table = tmp_path / "table.json"
    assert writer.main([str(out), "--table", str(table)]) == 0
    entries = json.loads(table.read_text())["measurements"]
    # q matched to the truth (no 6.1 run's q) is left out unless it is the selection half's pick
    assert len(entries) == 3 and {e["schema"] for e in entries} == {SCHEMA}
    assert all(e["q"] == 0.1 for e in entries)
    got = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", 0.0, path=table)
    assert got["measured"] and is_confirmation(got) and got["half"] == "confirmation"
    assert (got["sensitivity"], got["sensitivity_ci"], got["sensitivity_n"]) == (0.8, [0.58, 0.92], 20)
    assert (got["specificity"], got["specificity_ci"], got["specificity_n"]) == (0.93, [0.87, 0.98], 100)
    assert got["n_composites"] == 20 and got["split_seed"] == 3 and got["construction"] == "lateral"
    assert got["selected"] is True and got["pooled"]["sensitivity"] == 0.75  # pooled: apart, secondary
    assert got["command"] == ("falsify run known-truth --model dlib-resnet --n-pairs 40 --data lfw-other --truth lateral "
                              "--truth-parts inner --seed 3")
    absolute = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "absolute", None, path=table)
    assert absolute["sensitivity"] == 0.6 and absolute["selected"] is False
    calibrated = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", "calibrated", path=table)
    assert calibrated["specificity"] == 0.97 and calibrated["delta_value"] == 0.012
    other = measured("dlib-resnet", "dlib-150", "blur", 0.1, "embedding", "beyond-prior", 0.0, path=table)
    assert not other["measured"] and "this configuration of the test" in other["reason"]
    assert other["command"].startswith("falsify run known-truth --model dlib-resnet")
    assert "this model" in measured("sface", "arcface-112", "mean", 0.1, "embedding", "absolute", path=table)["reason"]
    # a rerun of the same configurations replaces its entries
    assert writer.main([str(out), "--table", str(table)]) == 0
    assert len(json.loads(table.read_text())["measurements"]) == 3


def test_pooled_entries_are_marked_stale_and_never_measured(writer, tmp_path):
    from falsify.experiments.truth_table import measured

    old = {"model": "dlib-resnet", "align": "dlib-150", "fill": "mean", "q": 0.1, "target": "embedding",
           "criterion": "beyond-prior", "delta": 0.0, "sensitivity": 0.68, "specificity": 0.98, "n_positive": 94,
           "n_negative": 376, "construction": "average", "parts": "inner", "date": "2026-12-02", "command": "c"}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"measurements": [old]}))
    got = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", 0.0, path=table)
    assert not got["measured"] and "pooled" in got["reason"] and "sensitivity" not in got
    assert writer.main(["--table", str(table)]) == 0  # migrated: the rates moved under 'pooled', marked stale
    (e,) = json.loads(table.read_text())["measurements"]
    assert e["stale"] and e["pooled"]["sensitivity"] == 0.68 and "sensitivity" not in e
    assert not measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", 0.0, path=table)["measured"]


def test_a_61_summary_finds_the_entry_of_its_test():
    from falsify.experiments.truth_table import for_summary

    summary = {"model": "m", "alignment": {"template": "dlib-150"}, "config": {"delta": "calibrated"},
               "falsification": {"fill": "mean", "q": 0.1, "target": "embedding", "criterion": "beyond-prior",
                                 "delta": 0.02}}
    got = for_summary(summary)  # the packaged table, whatever it holds
    assert got["measured"] in (True, False) and got["delta"] == "calibrated"
    assert for_summary({"model": "m"}) is None
