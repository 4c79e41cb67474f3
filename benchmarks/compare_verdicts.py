"""Do two runs of 6.1 reach the same verdicts? Compares the stores of two run folders row by row
(the methods' rows, and the test's ceiling as the row ``ceiling`` when both searched it).

Prints, per method, the verdict counts of each run and the (method, pair) rows whose verdict
differs, with both margins (d_high - d_low) and, under the beyond-prior criterion, by how much
each beat the prior map's margin on the same image (``excess``: a verdict whose excess is near 0
flips with a small change of the map).

    python benchmarks/compare_verdicts.py runs/6.1-n40-v2 runs/6.1-n40-v3
"""
from __future__ import annotations

import argparse
import collections
import json
import sqlite3
from pathlib import Path


def rows(folder: Path) -> dict:
    with sqlite3.connect(folder / "results.sqlite") as c:
        c.row_factory = sqlite3.Row
        return {(r["method"], r["pair"]): dict(r) for r in c.execute(
            "SELECT method, pair, verdict, d_high, d_low, margin, detail FROM results "
            "WHERE experiment IN ('6.1', '6.1-ceiling')")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    a, b = rows(args.before), rows(args.after)
    common = sorted(set(a) & set(b))
    methods = list(dict.fromkeys(m for m, _ in common))
    print(f"### Verdicts: `{args.before}` (before) vs `{args.after}` (after), {len(common)} common rows\n")
    print("| method | before: pass / falsified / untestable | after | rows whose verdict changed |")
    print("|---|---|---|---|")
    changed = []
    for m in methods:
        keys = [k for k in common if k[0] == m]
        ca = collections.Counter(a[k]["verdict"] for k in keys)
        cb = collections.Counter(b[k]["verdict"] for k in keys)
        diff = [k for k in keys if a[k]["verdict"] != b[k]["verdict"]]
        changed += diff
        fmt = lambda c: f"{c.get('passed', 0)} / {c.get('falsified', 0)} / {c.get('untestable', 0)}"
        print(f"| {m} | {fmt(ca)} | {fmt(cb)} | {len(diff)} |")
    rows_m = [k for k in common if k[0] != "ceiling"]
    changed_m = [k for k in changed if k[0] != "ceiling"]
    if len(rows_m) < len(common):
        print(f"\n(method, pair) rows: {len(changed_m)} of {len(rows_m)} verdicts changed "
              f"({100 * (1 - len(changed_m) / max(1, len(rows_m))):.1f}% unchanged); the ceiling: "
              f"{len(changed) - len(changed_m)} of {len(common) - len(rows_m)}.")
    print(f"\n{len(changed)} of {len(common)} verdicts changed.")
    near = []  # beyond-prior rows: how far each excess is from the delta it must beat, in each run
    for k in common:
        da, db = json.loads(a[k]["detail"] or "{}"), json.loads(b[k]["detail"] or "{}")
        if all(d.get("excess") is not None and d.get("delta") is not None for d in (da, db)):
            near.append((min(abs(da["excess"] - da["delta"]), abs(db["excess"] - db["delta"])), k))
    exact = [k for gap, k in near if gap == 0]  # the map deletes what the prior does: a tie, falsified
    if near:
        print(f"Beyond-prior rows: {len(near)}; excess exactly delta in either run (a tie, falsified): "
              f"{len(exact)} ({', '.join(sorted({k[0] for k in exact})) or '-'}).")
    if len(near) > len(exact):
        gap, k = min((g, k) for g, k in near if g > 0)
        print(f"Nearest its verdict's boundary otherwise: {k[0]} on {k[1]}, |excess - delta| = {gap:.2e} rad "
              f"(verdict {a[k]['verdict']} -> {b[k]['verdict']}).")
    for k in changed:
        da = json.loads(a[k]["detail"] or "{}")
        db = json.loads(b[k]["detail"] or "{}")
        ex = (da.get("excess"), db.get("excess"))
        print(f"- {k[0]} on {k[1]}: {a[k]['verdict']} -> {b[k]['verdict']}; margin {a[k]['margin']:.4f} -> "
              f"{b[k]['margin']:.4f}" + (f"; beyond the prior's margin by {ex[0]:+.4f} -> {ex[1]:+.4f}"
                                         if None not in ex else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
