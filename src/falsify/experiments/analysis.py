"""The summary of experiment 6.1 from the results store (every experiment that reads 6.1's rows
starts from it). A run's outputs are written by ``registry.write_outputs``.

Every statistic counts **pairs**: one verdict per (method, pair), whatever K was. (The
research code counted each of the K counterfactuals as a sample, inflating n by K and
shrinking p-values: Experiment 6.2's aggregation bug.)
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any, Sequence

import numpy as np

from ..data.pairs import PairSet
from ..choices import RANDOM_MODEL, is_control
from ..falsification import stats
from .store import ResultsStore

#: Methods every other method is compared with (when they were run): the controls first.
BASELINES = ("centre", "random", "gradcam")


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(values: Sequence) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def method_summary(method: str, rows: list[dict]) -> dict:
    """One method's (or control row's) counts, FR with its Wilson CI, mean distances and time."""
    tested = [r for r in rows if r["verdict"] != "error"]
    rate = stats.falsification_rate([r["verdict"] for r in tested]) if tested else None
    testable = [r for r in tested if r["verdict"] != "untestable"]
    ci = [None, None]
    margins = [r["margin"] for r in testable if r["margin"] is not None]
    if len(margins) >= 2:
        b = stats.bootstrap_ci(margins, n=2000, seed=0)
        ci = [_f(b.ci_low), _f(b.ci_high)]
    return {
        "method": method,
        "control": is_control(method),
        "n": len(rows),
        "n_passed": rate.n_passed if rate else 0,
        "n_falsified": rate.n_falsified if rate else 0,
        "n_untestable": rate.n_untestable if rate else 0,
        "n_error": len(rows) - len(tested),
        "fr": _f(rate.rate) if rate else None,
        "ci_low": _f(rate.ci_low) if rate else None,
        "ci_high": _f(rate.ci_high) if rate else None,
        "mean_d_high": _mean([r["d_high"] for r in testable]),
        "mean_d_low": _mean([r["d_low"] for r in testable]),
        "mean_margin": _mean(margins),
        "margin_ci": ci,
        "mean_d_prime": _mean([r["d_prime"] for r in testable]),
        "seconds_per_pair": _mean([r["seconds"] for r in tested]),
        "deletion": _deletion_summary(tested),
    }


def _deletion_summary(rows: list[dict]) -> dict | None:
    """The method's deletion curves (``--deletion``), summarised by ``summarise_curves``."""
    from ..falsification.deletion import summarise_curves

    details = [json.loads(r["detail"]) if isinstance(r.get("detail"), str) else (r.get("detail") or {}) for r in rows]
    return summarise_curves([d["deletion"] for d in details if d.get("deletion")])


def _baselines_of(method: str, by_method: dict) -> list[str]:
    """What ``method`` is compared with: each baseline that was run, and its own control rows
    (``METHOD@random-model``: the same method on a randomised model)."""
    out = [b for b in BASELINES if b in by_method and b != method]
    own = method + RANDOM_MODEL
    if own in by_method:
        out.append(own)
    return out


def comparisons(by_method: dict[str, dict[str, str]]) -> list[dict]:
    """McNemar's exact test of every method against each of its baselines (``centre``,
    ``random``, ``gradcam`` and its own randomised-model rows, when run), on the pairs both
    tested (errors dropped; the test itself leaves out pairs untestable for either),
    Holm-corrected over all the comparisons made. ``beats`` says whether the method is
    falsified significantly less often than that baseline."""
    out, seen = [], set()
    for method, verdicts in by_method.items():
        for base in _baselines_of(method, by_method):
            if frozenset((method, base)) in seen or (base in BASELINES and method in BASELINES
                                                     and BASELINES.index(method) < BASELINES.index(base)):
                continue
            seen.add(frozenset((method, base)))
            common = sorted(set(verdicts) & set(by_method[base]))
            if not any(verdicts[p] != "untestable" and by_method[base][p] != "untestable" for p in common):
                continue  # no pair both could be tested on (e.g. a method untestable everywhere): nothing to compare
            c = stats.mcnemar_paired([verdicts[p] for p in common], [by_method[base][p] for p in common],
                                     name_a=method, name_b=base)
            (a_f_b_f, a_f_b_p), (a_p_b_f, a_p_b_p) = c.table
            out.append({
                "method": method, "against": base, "n_paired": c.n_pairs, "n_excluded": c.n_excluded,
                "n10": int(a_f_b_p), "n01": int(a_p_b_f), "fr": _f(c.rate_a), "fr_against": _f(c.rate_b),
                "p": _f(c.pvalue), "cohens_h": _f(c.cohens_h),
            })
    valid = [i for i, c in enumerate(out) if c["p"] is not None]
    if valid:
        h = stats.holm([out[i]["p"] for i in valid])
        for i, p_adj, rej in zip(valid, h.pvalues_adjusted, h.reject):
            out[i]["p_holm"], out[i]["significant"] = _f(p_adj), bool(rej)
    for c in out:
        c.setdefault("p_holm", None)
        c.setdefault("significant", False)
        c["beats"] = bool(c["significant"] and c["fr"] is not None and c["fr_against"] is not None
                          and c["fr"] < c["fr_against"])
    return out


def control_verdicts(summary_methods: list[dict], comps: list[dict]) -> list[dict]:
    """For each method that is not a control: does it beat ``centre`` and its own randomised-model
    rows (when run)? One entry per method, with a plain sentence when it does not."""
    out = []
    run = {m["method"] for m in summary_methods}
    for m in summary_methods:
        name = m["method"]
        if is_control(name):
            continue
        against = {c["against"]: c for c in comps if c["method"] == name}
        expected = [b for b in ("centre", name + RANDOM_MODEL) if b in run]
        if not expected:
            continue
        checks = [b for b in expected if b in against]
        uncompared = [b for b in expected if b not in against]  # no pair on which both were testable
        failed = [b for b in checks if not against[b]["beats"]] + uncompared
        label = {b: "the centre prior" if b == "centre" else "its own maps on a randomised model" for b in expected}
        sentence = None
        if uncompared:
            sentence = (f"{name} could not be compared with {' or '.join(label[b] for b in uncompared)}: no pair "
                        "had a testable map from both, so nothing shows that it explains this model on these images.")
        elif failed:
            what = " or ".join(label[b] for b in failed)
            sentence = (f"{name} is not falsified significantly less often than {what} (McNemar, Holm-corrected): "
                        "its falsification rate does not show that it explains this model on these images.")
        out.append({"method": name, "checked": checks, "beats_all": not failed, "not_beaten": failed,
                    "sentence": sentence})
    return out


def summarise(store: ResultsStore, config, pairs: PairSet, model_name: str, threshold: float | None,
              elapsed_s: float | None = None, started: str | None = None) -> dict:
    """The summary dict of a run (the schema of OUT/summary.json)."""
    ids = {p.id for p in pairs}
    methods = config.row_methods()
    rows = store.rows("6.1", model_name, methods, pairs=ids)
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    runs = store.runs()
    summary: dict[str, Any] = {
        "experiment": config.experiment,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "started": started,
        "model": model_name,
        "config": config.to_dict(),
        "falsification": store.get_meta("falsification_config"),
        "calibration": store.get_meta("calibration"),
        "environment": runs[-1]["environment"] if runs else {},
        "data": pairs.data_record(examples=5),
        "n_rows": len(rows),
        "n_errors": sum(r["verdict"] == "error" for r in rows),
        "errors": [{"method": r["method"], "pair": r["pair"], "error": r["error"]} for r in rows
                   if r["verdict"] == "error"][:50],
        "elapsed_s": _f(elapsed_s),
        "methods": [method_summary(m, by_method[m]) for m in methods],
        "comparisons": comparisons({m: {r["pair"]: r["verdict"] for r in rs if r["verdict"] != "error"}
                                    for m, rs in by_method.items()}),
        "prior": store.get_meta("prior"),
    }
    summary["controls"] = control_verdicts(summary["methods"], summary["comparisons"])
    return summary
