"""The known-truth benchmark's measured sensitivity and specificity, per model and test
configuration, for every 6.1 report (``known_truth_measured.json`` beside this module, written by
``benchmarks/known_truth_table.py`` from ``falsify run known-truth`` runs; its entries say which
command made them)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

TABLE = Path(__file__).with_name("known_truth_measured.json")
#: what must match between a run and a measurement
MATCH = ("model", "align", "fill", "q", "target", "criterion", "delta")


def load_table(path: Path = TABLE) -> list[dict]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.get("measurements", []))


def measured(model: str, align: str | None, fill: str, q: float, target: str, criterion: str,
             delta: float | None = None, path: Path = TABLE) -> dict:
    """The entry of the benchmark for this model and configuration, or ``{"measured": False,
    "reason": ...}`` saying what was not measured (and the command that would measure it)."""
    want = {"model": model, "align": align or "none", "fill": fill, "q": float(q), "target": target,
            "criterion": criterion, "delta": None if criterion == "absolute" else float(delta or 0.0)}
    entries = load_table(path)
    for e in entries:
        if all(e.get(k) == want[k] for k in MATCH):
            return {"measured": True, **e}
    of_model = [e for e in entries if e.get("model") == model and e.get("align") == want["align"]]
    what = ("this configuration of the test" if of_model else "this model")
    return {"measured": False, **want,
            "reason": (f"the test's sensitivity and specificity were not measured for {what} "
                       f"({model}, align {want['align']}, fill {fill}, q {q:g}, target {target}, {criterion}); "
                       f"'falsify run known-truth --model {model}' with the same test options measures them")}


def for_summary(summary: Mapping) -> dict | None:
    """:func:`measured` for a 6.1 summary (its model, alignment and test), None when it lacks them."""
    fc = summary.get("falsification") or summary.get("falsification_config") or {}
    settings = summary.get("settings") or {}
    model = summary.get("model")
    if not model or not fc.get("fill"):
        return None
    align = (summary.get("alignment") or {}).get("template") or settings.get("align") or "none"
    return measured(model, align, fc["fill"], fc["q"], fc.get("target", "embedding"), fc.get("criterion", "absolute"),
                    fc.get("delta"))
