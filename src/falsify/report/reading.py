"""How far a 6.1 run's falsification rates can be read, from its summary alone.

Two things every 6.1 report prints beside its FR table (docs/method.md, "Reading an FR"):

- **The test's measured validity** (``summary["test_validity"]``, the entry of the known-truth
  benchmark's table for the run's model and configuration): the sensitivity and specificity on
  the benchmark's confirmation half with their 95% intervals and counts, or the one line saying
  why they are not known and the command that measures them. Entries of the earlier schema
  (rates pooled over every composite) are never printed as rates.
- **Each method's FR between two references of the same run**: the share of pairs where the
  test's ceiling is falsified (``summary["ceiling"]``: even the best map the ceiling's search finds
  fails there, so no method can be expected below it) and the FR of null maps, maps that know only
  the prior (``summary["null_maps"]``: a method falsified as often has shown nothing beyond the prior).
"""
from __future__ import annotations

from typing import Any, Mapping

from .tables import as_float, method_rows, rate_of, row_is_control

#: the schema of a known-truth table entry holding confirmation-half rates with their intervals
#: (``falsify.experiments.truth_table``)
CONFIRMATION_SCHEMA = "confirmation-half-v1"


def _pct(x: Any) -> str:
    f = as_float(x)
    return "n/a" if f is None else f"{100 * f:.0f}%"


def _interval(ci: Any) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or as_float(ci[0]) is None or as_float(ci[1]) is None:
        return ""
    return f" [{100 * float(ci[0]):.0f}, {100 * float(ci[1]):.0f}]"


def is_confirmation(tv: Mapping) -> bool:
    """Whether ``tv`` (a known-truth table entry) holds confirmation-half rates with their intervals."""
    return (tv.get("measured") is True and tv.get("schema") == CONFIRMATION_SCHEMA and tv.get("half") == "confirmation"
            and not tv.get("stale") and as_float(tv.get("sensitivity")) is not None
            and as_float(tv.get("specificity")) is not None)


#: what d_high and d_low are under each target of the test (``falsify.choices.TARGETS``)
DISTANCE_WORDS = {
    "embedding": "geodesic embedding shift (radians)",
    "pair": "change of the angle to the other face's embedding, either way (radians)",
    "signed-pair": "growth of the angle to the other face's embedding, a move towards it counted as 0 (radians)",
    "signed-angle": "signed change of the angle to the other face's embedding (radians; negative: towards it)",
}


def target_words(target: str) -> str:
    """What d_high and d_low measure under ``target``."""
    return DISTANCE_WORDS.get(target, f"distance under the target {target!r} (radians)")


def distance_words(summary: Mapping) -> str:
    """What the run's d_high and d_low measure, from its test's target (``embedding`` when the
    summary names none: the runs made before the target was a setting)."""
    fc = summary.get("falsification") or summary.get("falsification_config") or {}
    return target_words(fc.get("target") or "embedding")


#: the benchmark's goals (issue 28): below them an FR is not read as the share of wrong maps
GOAL_SENSITIVITY, GOAL_SPECIFICITY = 0.80, 0.90


def what_an_fr_means(sensitivity: float, specificity: float) -> str:
    """What an FR of this test can and cannot be read as, from its measured rates, in plain words."""
    if sensitivity >= GOAL_SENSITIVITY and specificity >= GOAL_SPECIFICITY:
        return ("At these rates a falsified verdict is good evidence that a map is wrong, and an FR estimates the "
                "share of wrong maps within these intervals.")
    wrong = 100 * (1 - sensitivity)
    return (f"At these rates an FR cannot be read as the share of wrong maps: the test falsifies {wrong:.0f}% of "
            "maps that are right, so a falsified verdict is weak evidence on its own; what an FR can show is how a "
            "method compares with the null maps and the ceiling on the same pairs, and with other methods under "
            "the same test.")


def validity_sentence(summary: Mapping) -> str | None:
    """One sentence on the test's sensitivity and specificity for the run's model and
    configuration (confirmation half, 95% intervals, n), or why they are not known; None for a
    summary that predates the known-truth table."""
    tv = summary.get("test_validity")
    if not isinstance(tv, Mapping):
        return None
    if is_confirmation(tv):
        crit = tv.get("criterion")
        d = tv.get("delta")
        if crit != "absolute" and d is not None:
            crit = f"{crit}, delta {d if isinstance(d, str) else format(float(d), 'g')}"
        q = tv.get("q_label") or tv.get("q")
        n_comp = tv.get("n_composites")
        n_neg_comp = tv.get("n_composites_negative")
        of = f" of {n_neg_comp} composites" if n_neg_comp is not None else ""
        return (f"On the known-truth benchmark's confirmation half ({n_comp} composites, {tv.get('construction')} "
                f"construction, split seed {tv.get('split_seed')}), this test on {tv.get('model')} (fill "
                f"{tv.get('fill')}, q {q}, target {tv.get('target')}, {crit}) passed {_pct(tv['sensitivity'])}"
                f"{_interval(tv.get('sensitivity_ci'))} of maps that are right (sensitivity, Wilson 95%, n = "
                f"{tv.get('sensitivity_n')} truth maps) and falsified {_pct(tv['specificity'])}"
                f"{_interval(tv.get('specificity_ci'))} of maps that are wrong (specificity, 95% bootstrap by "
                f"composite, n = {tv.get('specificity_n')} maps{of}); measured {tv.get('date')} by "
                f"'{tv.get('command')}'. " + what_an_fr_means(float(tv["sensitivity"]), float(tv["specificity"])))
    if tv.get("measured") is True:  # an entry of the earlier schema: pooled rates, not printed
        return ("The known-truth rates stored in this summary are pooled over every composite of an earlier design "
                "of the benchmark, not confirmation-half rates, and are not shown; 'falsify report' with the current "
                "table, or 'falsify run known-truth' for this model and test, gives them.")
    reason = str(tv.get("reason") or "the test's sensitivity and specificity were not measured for this model")
    command = tv.get("command")
    return reason[0].upper() + reason[1:].rstrip(".") + (f"; '{command}' measures them." if command else ".")


def _reference(section: Any, rate_key: str) -> dict | None:
    """(rate, ci_low, ci_high, n) of a reference section, None when it has no testable pair."""
    if not isinstance(section, Mapping) or section.get("skipped"):
        return None
    rate = as_float(section.get(rate_key))
    if rate is None:
        return None
    return {"rate": rate, "ci_low": as_float(section.get("ci_low")), "ci_high": as_float(section.get("ci_high")),
            "n": section.get("n")}


def references(summary: Mapping) -> dict:
    """``{"ceiling": ref | None, "null": ref | None, "missing": {name: why}}``: the run's two
    reference FRs (the share of pairs where the ceiling is falsified; the null maps' FR), each
    ``{"rate", "ci_low", "ci_high", "n"}``, and why one is absent."""
    ceiling = _reference(summary.get("ceiling"), "share_falsified")
    null = _reference(summary.get("null_maps"), "fr")
    missing = {}
    for name, key, ref in (("ceiling", "ceiling", ceiling), ("null maps", "null_maps", null)):
        if ref is None:
            section = summary.get(key)
            if isinstance(section, Mapping) and section.get("skipped"):
                missing[name] = str(section["skipped"])
            elif isinstance(section, Mapping):
                missing[name] = "no pair was testable"
            else:
                missing[name] = "not computed by this run" + (" (--no-ceiling, or a summary before it)"
                                                              if key == "ceiling" else " (a summary before them)")
    return {"ceiling": ceiling, "null": null, "missing": missing}


def _p(x: float) -> str:
    return f"{100 * x:.1f}%"


def place(fr: float | None, ceiling: Mapping | None, null: Mapping | None) -> str:
    """'FR 42.0%, between the ceiling's 10.0% and the null maps' 95.0%' (or below / above them)."""
    if fr is None:
        return "FR n/a (no testable pair)"
    head = f"FR {_p(fr)}"
    c = None if ceiling is None else ceiling["rate"]
    z = None if null is None else null["rate"]
    if c is not None and z is not None:
        lo, hi = (c, z) if c <= z else (z, c)
        names = ("the ceiling's", "the null maps'") if c <= z else ("the null maps'", "the ceiling's")
        if lo <= fr <= hi:
            return f"{head}, between {names[0]} {_p(lo)} and {names[1]} {_p(hi)}"
        if fr < lo:
            return f"{head}, below {names[0]} {_p(lo)} (and {names[1]} {_p(hi)})"
        return f"{head}, above {names[1]} {_p(hi)} (and {names[0]} {_p(lo)})"
    if c is not None:
        return f"{head}; the ceiling's {_p(c)} ({'at or above it' if fr >= c else 'below it'}; no null maps)"
    if z is not None:
        return f"{head}; the null maps' {_p(z)} ({'at or below it' if fr <= z else 'above it'}; no ceiling)"
    return head


def placements(summary: Mapping) -> list[dict]:
    """Per method of 6.1 (not the controls): {method, fr, text}, its FR placed between the run's
    two references (:func:`place`); empty when the run has neither reference."""
    refs = references(summary)
    if refs["ceiling"] is None and refs["null"] is None:
        return []
    out = []
    for r in method_rows(summary):
        if row_is_control(r):
            continue
        fr = rate_of(r)[0]
        out.append({"method": str(r["method"]), "fr": fr, "text": place(fr, refs["ceiling"], refs["null"])})
    return out


def _ref_text(ref: Mapping, what: str) -> str:
    ci = "" if ref["ci_low"] is None or ref["ci_high"] is None else (
        f"95% CI {100 * ref['ci_low']:.1f}-{100 * ref['ci_high']:.1f}%, ")
    return f"{what} {_p(ref['rate'])} ({ci}n = {ref['n']})"


def references_sentence(summary: Mapping) -> str | None:
    """What the two references are and their rates on this run (or why one is absent); None
    when the run has neither and says nothing of them."""
    refs = references(summary)
    parts = []
    if refs["ceiling"] is not None:
        parts.append(_ref_text(refs["ceiling"], "the test's ceiling (the best map its greedy search finds) is "
                                                "falsified on") + " of pairs: no map can be expected below it")
    if refs["null"] is not None:
        parts.append(_ref_text(refs["null"], "null maps (maps that know only the prior) are falsified on")
                     + ": a method as high has shown nothing beyond the prior")
    if not parts:
        return None
    gone = "; ".join(f"{k}: {v}" for k, v in refs["missing"].items())
    return ("References on the same pairs: " + "; ".join(parts) + "." + (f" Not available: {gone}." if gone else ""))


def null_sentence(summary: Mapping) -> str | None:
    """The table caption's line on the null maps of the run; None without them."""
    ref = references(summary)["null"]
    if ref is None:
        return None
    return _ref_text(ref, "Null maps (maps that know only the prior), tested on the same pairs, are falsified on") + "."
