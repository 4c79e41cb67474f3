"""Write the known-truth benchmark's measured rates into the table every 6.1 report reads
(``src/falsify/experiments/known_truth_measured.json``), from ``falsify run known-truth`` runs:

    python benchmarks/known_truth_table.py runs/kt-dlib-n100 runs/kt-sface-n60

One entry per (run, configuration of the test it measured): model, alignment, fill, q, target,
criterion and delta; the sensitivity and specificity on the run's CONFIRMATION half of the
composites (the half no configuration was chosen on), with their 95% intervals (Wilson for the
sensitivity; a bootstrap by composite for the specificity, whose maps of one composite are not
independent) and counts; whether the run fixed this configuration on its selection half; the
construction, the split's seed, the date and the command that made the run. The rates pooled over
both halves are kept apart under ``pooled``, never read by a report. Entries of the same model,
alignment and configuration are replaced; older entries of the earlier, pooled schema are marked
``stale`` (a report never prints them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from falsify.choices import TARGETS  # noqa: E402
from falsify.experiments.truth_table import MATCH, SCHEMA, TABLE  # noqa: E402

#: what the intervals of an entry are
INTERVALS = ("sensitivity: Wilson 95% over the truth maps of the confirmation half; specificity: 95% percentile "
             "bootstrap by composite (2000 resamples) over the wrong maps of the confirmation half")
STALE = ("pooled over every kept composite of the earlier average-face design of the benchmark (before issue 28's "
         "seeded split): not confirmation-half rates, never printed by a report")


def command_of(summary: dict) -> str:
    c = summary["config"]
    parts = ["falsify run known-truth", f"--model {c['model']}", f"--n-pairs {c['n_pairs']}"]
    if c.get("data"):
        parts.append(f"--data {Path(c['data']).name if Path(c['data']).is_absolute() else c['data']}")
    for key in ("truth", "truth_parts"):
        if c.get(key):
            parts.append(f"--{key.replace('_', '-')} {c[key]}")
    if c.get("truth_min_effect"):
        parts.append(f"--truth-min-effect {c['truth_min_effect']}")
    if c.get("delta") not in (None, 0, 0.0):
        parts.append(f"--delta {c['delta']}")
    if c.get("seed"):
        parts.append(f"--seed {c['seed']}")
    return " ".join(parts)


def _criterion(e: dict) -> tuple[str, float | str | None]:
    """(criterion, delta) as a 6.1 run names them: the benchmark's 'beyond-prior, delta calibrated'
    is beyond-prior with delta 'calibrated' (a run's --delta calibrated), and so for beyond-mirror."""
    if e["criterion"] == "absolute":
        return "absolute", None
    crit, _, rest = e["criterion"].partition(", delta ")
    if rest == "calibrated":
        return crit, "calibrated"
    return crit, float(e["delta"] or 0.0)


def entries(out: Path) -> list[dict]:
    """The table's entries of the known-truth run in ``out`` (its summary.json)."""
    s = json.loads((out / "summary.json").read_text())
    if s.get("experiment") != "known-truth":
        raise SystemExit(f"{out} is not a known-truth run")
    kt = s["known_truth"]
    split = kt.get("split") or {}
    best = kt.get("best") or {}
    rows = []
    for e in kt["configurations"]:
        conf = e.get("confirmation")
        if conf is None:
            raise SystemExit(f"{out}/summary.json has no confirmation half: rerun 'falsify run known-truth' with "
                             "this version of falsify")
        sens, spec = conf["sensitivity"], conf["specificity"]
        selected = all(best.get(k) == e.get(k) for k in ("fill", "q", "target", "criterion")) if best else False
        if sens["rate"] is None or spec["rate"] is None:
            continue
        if e["q"] is None and not selected:  # q matched to the truth: no 6.1 run's q; the headline's kept
            continue
        if e["target"] not in TARGETS:  # the study's own candidates (cohort-angle): no 6.1 run's target
            continue
        crit, delta = _criterion(e)
        a = e.get("all") or {}
        rows.append({
            "schema": SCHEMA, "half": "confirmation",
            "model": s["model"], "align": kt["align"], "fill": e["fill"],
            "q": None if e["q"] is None else float(e["q"]), "q_label": e.get("q_label"),
            "target": e["target"], "criterion": crit, "delta": delta,
            "delta_value": None if e.get("delta") is None else float(e["delta"]),
            "sensitivity": sens["rate"], "sensitivity_ci": sens["ci"], "sensitivity_k": sens["k"],
            "sensitivity_n": sens["n"],
            "specificity": spec["rate"], "specificity_ci": spec["ci"], "specificity_ci_maps": spec.get("ci_maps"),
            "specificity_k": spec["k"], "specificity_n": spec["n"], "n_composites": split.get("n_confirmation"),
            "n_composites_negative": spec.get("n_composites"), "intervals": INTERVALS, "ties": conf.get("ties"),
            "selected": selected,
            "construction": kt["construction"], "parts": kt["parts"], "split_seed": split.get("seed"),
            "n_selection": split.get("n_selection"),
            "effect_median": (kt.get("strength") or {}).get("effect_median"),
            "pooled": {"sensitivity": (a.get("sensitivity") or {}).get("rate"),
                       "specificity": (a.get("specificity") or {}).get("rate"),
                       "n_positive": (a.get("sensitivity") or {}).get("n"),
                       "n_negative": (a.get("specificity") or {}).get("n")},
            "date": s["created"][:10], "command": command_of(s)})
    return rows


def mark_stale(entry: dict) -> dict:
    """An entry of the earlier schema, its rates moved under ``pooled`` and marked stale."""
    if entry.get("schema") == SCHEMA or entry.get("stale"):
        return entry
    keep = {k: v for k, v in entry.items() if k not in ("sensitivity", "specificity", "n_positive", "n_negative")}
    pooled = {k: entry.get(k) for k in ("sensitivity", "specificity", "n_positive", "n_negative")}
    return {**keep, "stale": STALE, "pooled": pooled}


def update(table: dict, new: list[dict]) -> dict:
    key = lambda e: tuple(e.get(k) for k in MATCH)  # noqa: E731
    fresh = {key(e) for e in new}
    table["measurements"] = [mark_stale(e) for e in table.get("measurements", []) if key(e) not in fresh] + new
    table["about"] = ("Sensitivity and specificity of the falsification test per model and configuration, on the "
                      "confirmation half of the composites of 'falsify run known-truth' (docs/method.md, 'Known "
                      "truth'), with their 95% intervals; written by benchmarks/known_truth_table.py. Entries "
                      "marked 'stale' hold pooled rates of an earlier design and are never printed as measured.")
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="known-truth run folders")
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    table = json.loads(args.table.read_text()) if args.table.is_file() else {"measurements": []}
    new = [e for out in args.runs for e in entries(out)]
    args.table.write_text(json.dumps(update(table, new), indent=1) + "\n")
    pct = lambda x: "  n/a" if x is None else f"{100 * x:4.0f}"  # noqa: E731
    for e in new:
        si, pi = e["sensitivity_ci"] or [None, None], e["specificity_ci"] or [None, None]
        print(f"{e['model']:12s} {e['align']:11s} {e['fill']:5s} q {e['q_label'] or e['q']} {e['target']:11s} "
              f"{e['criterion']:12s} delta {e['delta']}: confirmation ({e['n_composites']} composites) sensitivity "
              f"{pct(e['sensitivity'])}% [{pct(si[0])},{pct(si[1])}] specificity {pct(e['specificity'])}% "
              f"[{pct(pi[0])},{pct(pi[1])}]" + ("  (selected)" if e["selected"] else ""))
    print(f"{len(new)} entries written to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
