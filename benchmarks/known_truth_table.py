"""Write the known-truth benchmark's measured rates into the table every 6.1 report reads
(``src/falsify/experiments/known_truth_measured.json``), from ``falsify run known-truth`` runs:

    python benchmarks/known_truth_table.py runs/kt-dlib-n100 runs/kt-sface-n100 --command-of runs/...

One entry per (run, configuration of the test it measured): model, alignment, fill, q, target,
criterion and delta, the sensitivity and specificity on every kept composite, how many, the
construction, the date and the command that made the run. Entries of the same model, alignment
and configuration are replaced.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from falsify.experiments.truth_table import MATCH, TABLE  # noqa: E402


def command_of(summary: dict, out: str) -> str:
    c = summary["config"]
    parts = ["falsify run known-truth", f"--model {c['model']}", f"--n-pairs {c['n_pairs']}"]
    if c.get("data"):
        parts.append(f"--data {Path(c['data']).name if Path(c['data']).is_absolute() else c['data']}")
    for key in ("truth", "truth_parts"):
        parts.append(f"--{key.replace('_', '-')} {c[key]}")
    if c.get("truth_min_effect"):
        parts.append(f"--truth-min-effect {c['truth_min_effect']}")
    if c.get("seed"):
        parts.append(f"--seed {c['seed']}")
    return " ".join(parts)


def entries(out: Path) -> list[dict]:
    s = json.loads((out / "summary.json").read_text())
    if s.get("experiment") != "known-truth":
        raise SystemExit(f"{out} is not a known-truth run")
    kt = s["known_truth"]
    rows = []
    for e in kt["configurations"]:
        a = e["all"]
        if e["q"] is None:  # q matched to the truth: no run's q to match (the q 0.1 rows are what a 6.1 run matches)
            continue
        if a["sensitivity"]["rate"] is None or a["specificity"]["rate"] is None:
            continue
        rows.append({"model": s["model"], "align": kt["align"], "fill": e["fill"], "q": float(e["q"]),
                     "target": e["target"], "criterion": e["criterion"],
                     "delta": None if e["criterion"] == "absolute" else float(e["delta"]),
                     "sensitivity": a["sensitivity"]["rate"], "specificity": a["specificity"]["rate"],
                     "n_positive": a["sensitivity"]["n"], "n_negative": a["specificity"]["n"],
                     "construction": kt["construction"], "parts": kt["parts"],
                     "effect_median": kt["strength"].get("effect_median"),
                     "date": s["created"][:10], "command": command_of(s, str(out))})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="known-truth run folders")
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    table = json.loads(args.table.read_text()) if args.table.is_file() else {"measurements": []}
    new = [e for out in args.runs for e in entries(out)]
    key = lambda e: tuple(e.get(k) for k in MATCH)  # noqa: E731
    fresh = {key(e) for e in new}
    table["measurements"] = [e for e in table["measurements"] if key(e) not in fresh] + new
    table["about"] = ("Sensitivity and specificity of the falsification test per model and configuration, from "
                      "'falsify run known-truth' (docs/method.md, 'Known truth'); written by "
                      "benchmarks/known_truth_table.py")
    args.table.write_text(json.dumps(table, indent=1) + "\n")
    for e in new:
        print(f"{e['model']:12s} {e['align']:11s} {e['fill']:5s} q {e['q']:g} {e['target']:9s} {e['criterion']:12s} "
              f"sensitivity {100 * e['sensitivity']:5.1f}% specificity {100 * e['specificity']:5.1f}%")
    print(f"{len(new)} entries written to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
