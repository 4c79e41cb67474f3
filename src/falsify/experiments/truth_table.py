"""The known-truth benchmark's measured sensitivity and specificity, per model and test
configuration, for every 6.1 report (``known_truth_measured.json`` beside this module, written by
``benchmarks/known_truth_table.py`` from ``falsify run known-truth`` runs; its entries say which
command made them).

An entry of the current schema (:data:`SCHEMA`) holds the rates of the **confirmation half** of
the run's composites (the half the configuration was not chosen on): the sensitivity with its
Wilson 95% interval, the specificity with its 95% bootstrap-by-composite interval, how many
composites, the construction, the split's seed and the command. Older entries, pooled over every
kept composite of an earlier design of the benchmark (issue 28), are kept in the file marked
``stale`` and are never returned as measured: a 6.1 report then says why it has no rates."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..report.reading import CONFIRMATION_SCHEMA

TABLE = Path(__file__).with_name("known_truth_measured.json")
#: what must match between a run and a measurement
MATCH = ("model", "align", "fill", "q", "target", "criterion", "delta")
#: the schema of a measured entry: confirmation-half rates with their intervals
SCHEMA = CONFIRMATION_SCHEMA


def load_table(path: Path = TABLE) -> list[dict]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.get("measurements", []))


def is_confirmation(entry: Mapping) -> bool:
    """Whether ``entry`` holds confirmation-half rates with their intervals (not a stale pooled entry)."""
    return (entry.get("schema") == SCHEMA and entry.get("half") == "confirmation" and not entry.get("stale")
            and isinstance(entry.get("sensitivity"), (int, float)) and isinstance(entry.get("specificity"), (int, float)))


def command_for(model: str, fill: str, q: float, target: str, criterion: str, delta) -> str:
    """The command that measures this configuration (the benchmark tests every fill, q 0.1 and the
    targets under each criterion; ``--delta`` sets the run's delta of beyond-prior)."""
    extra = f" --delta {delta:g}" if criterion == "beyond-prior" and isinstance(delta, (int, float)) and delta else ""
    return (f"falsify run known-truth --model {model} --n-pairs 100{extra} --out OUT && "
            "python benchmarks/known_truth_table.py OUT")


def measured(model: str, align: str | None, fill: str, q: float, target: str, criterion: str,
             delta: float | str | None = None, path: Path = TABLE) -> dict:
    """The confirmation-half entry of the benchmark for this model and configuration, or
    ``{"measured": False, "reason": ...}`` saying what was not measured (and the command that would
    measure it). ``delta``: the run's beyond-prior margin, or "calibrated"."""
    if criterion == "absolute":
        d = None
    elif delta == "calibrated":
        d = "calibrated"
    else:
        d = float(delta or 0.0)
    want = {"model": model, "align": align or "none", "fill": fill, "q": float(q), "target": target,
            "criterion": criterion, "delta": d}
    entries = load_table(path)
    same = [e for e in entries if all(e.get(k) == want[k] for k in MATCH)]
    for e in same:
        if is_confirmation(e):
            return {"measured": True, **e}
    of_model = [e for e in entries if e.get("model") == model and e.get("align") == want["align"]]
    what = "this configuration of the test" if of_model else "this model"
    dtext = "" if d is None else f", delta {d if isinstance(d, str) else format(d, 'g')}"
    config = f"({model}, align {want['align']}, fill {fill}, q {q:g}, target {target}, {criterion}{dtext})"
    if same:  # only pooled entries of the earlier design
        reason = (f"the known-truth table holds only rates pooled over every composite of an earlier design of the "
                  f"benchmark for {config}, not confirmation-half rates")
    else:
        reason = f"the test's sensitivity and specificity were not measured for {what} {config}"
    return {"measured": False, **want, "reason": reason,
            "command": command_for(model, fill, q, target, criterion, d)}


def for_summary(summary: Mapping) -> dict | None:
    """:func:`measured` for a 6.1 summary (its model, alignment and test), None when it lacks them."""
    fc = summary.get("falsification") or summary.get("falsification_config") or {}
    settings = summary.get("settings") or {}
    config = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    model = summary.get("model")
    if not model or not fc.get("fill") or fc.get("q") is None:
        return None
    align = (summary.get("alignment") or {}).get("template") or settings.get("align") or "none"
    delta = "calibrated" if config.get("delta") == "calibrated" else fc.get("delta")
    return measured(model, align, fc["fill"], fc["q"], fc.get("target", "embedding"), fc.get("criterion", "absolute"),
                    delta)
