"""Where low precision moves 6.1's verdicts, and how wide a float32 re-check band must be (issue 30).

Reads two 6.1 stores of the same pairs and settings, one run in fp32 and one in low precision
(``--precision bf16``), and prints, row by row (method, pair):

- the distribution of |gap_low - gap_fp32| over every row both tested, overall and per method,
  where a row's *gap* is its distance to the verdict's boundary (``falsify.experiments.recheck.
  boundary_gap``: excess - delta under ``beyond-prior``, the smallest threshold gap under
  ``absolute``);
- each row whose verdict moved: method, pair, both excesses (or gaps), delta, |difference| and
  where that difference lies in the distribution over all rows (its percentile);
- for ``--band`` values (radians), the share of rows whose low-precision |gap| lies within the
  band (those a re-check would compute again in float32), the verdicts that would still differ
  from fp32's after the re-check, and the rows' seconds (the stores' ``seconds``) against fp32's.

A store whose rows were re-checked (``detail.recheck``) is read with its low-precision values
(the row's first result) for the gaps, and with its float32 re-checks for the bands: run it with
the widest band to evaluate (``--recheck-band``) and every narrower band is read from it.

    python benchmarks/precision_gaps.py runs/n40-fp32 runs/n40-bf16 --band 0.01,0.02,0.03
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from pathlib import Path


def rows(folder: Path) -> dict:
    with sqlite3.connect(folder / "results.sqlite") as c:
        c.row_factory = sqlite3.Row
        return {(r["method"], r["pair"]): {**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in c.execute(
            "SELECT method, pair, verdict, seconds, detail FROM results WHERE experiment = '6.1'")}


def low_view(row: dict) -> tuple[str, dict]:
    """(verdict, detail) as the low-precision test gave them (before any float32 re-check)."""
    recheck = row["detail"].get("recheck")
    if recheck:
        return recheck["verdict"], {**row["detail"], **recheck["fields"]}
    return row["verdict"], row["detail"]


def percentile(sorted_values: list[float], x: float) -> float:
    """The share (%) of ``sorted_values`` at or below ``x``."""
    return 100 * sum(v <= x for v in sorted_values) / len(sorted_values)


def main(argv=None) -> int:
    from falsify.experiments.recheck import boundary_gap

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("low", type=Path)
    ap.add_argument("--band", default="0.01,0.02,0.03,0.05", help="re-check bands to evaluate (radians)")
    args = ap.parse_args(argv)
    a, b = rows(args.fp32), rows(args.low)
    common = sorted(k for k in set(a) & set(b) if a[k]["verdict"] in ("passed", "falsified")
                    and low_view(b[k])[0] in ("passed", "falsified"))
    diffs, gaps_low, moved = {}, {}, []
    for k in common:
        ga, gb = boundary_gap(a[k]["detail"]), boundary_gap(low_view(b[k])[1])
        if ga is None or gb is None:
            continue
        diffs[k], gaps_low[k] = abs(gb - ga), gb
        if a[k]["verdict"] != low_view(b[k])[0]:
            moved.append(k)
    if not diffs:
        print("no row was tested in both runs")
        return 1
    values = sorted(diffs.values())
    q = statistics.quantiles(values, n=100, method="inclusive")
    print(f"### |gap_low - gap_fp32|: `{args.fp32}` (fp32) vs `{args.low}` (low), {len(values)} rows tested in both\n")
    print(f"median {q[49]:.4f}, 90% {q[89]:.4f}, 95% {q[94]:.4f}, 99% {q[98]:.4f}, max {values[-1]:.4f} rad\n")
    print("| method | rows | median | 95% | max | verdicts moved | rows' seconds fp32 / low |")
    print("|---|---|---|---|---|---|---|")
    low_secs = lambda k: (b[k]["detail"].get("recheck") or {}).get("seconds", b[k]["seconds"] or 0)
    for m in dict.fromkeys(k[0] for k in diffs):
        v = sorted(d for k, d in diffs.items() if k[0] == m)
        q95 = statistics.quantiles(v, n=20, method="inclusive")[18] if len(v) > 1 else v[0]
        s32, slow = (sum(f(k) for k in diffs if k[0] == m) for f in (lambda k: a[k]["seconds"] or 0, low_secs))
        print(f"| {m} | {len(v)} | {statistics.median(v):.4f} | {q95:.4f} | {v[-1]:.4f} | "
              f"{sum(k[0] == m for k in moved)} | {s32:.1f} / {slow:.1f} |")
    print(f"\n{len(moved)} of {len(diffs)} verdicts moved ({100 * (1 - len(moved) / len(diffs)):.1f}% agree).\n")
    if moved:
        print("| method | pair | fp32 -> low | excess fp32 | excess low | delta | gap fp32 | gap low | "
              "abs(difference) | its percentile over all rows |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for k in moved:
            da, db = a[k]["detail"], low_view(b[k])[1]
            ex = lambda d, key: "-" if d.get(key) is None else f"{d[key]:+.4f}"
            pair = k[1].replace("|", "\\|")  # a pair id is A|B: escaped in the table
            print(f"| {k[0]} | {pair} | {a[k]['verdict']} -> {low_view(b[k])[0]} | {ex(da, 'excess')} | "
                  f"{ex(db, 'excess')} | {ex(da, 'delta')} | {boundary_gap(da):+.4f} | {gaps_low[k]:+.4f} | "
                  f"{diffs[k]:.4f} | {percentile(values, diffs[k]):.1f} |")
    bands(a, b, diffs, gaps_low, moved, [float(x) for x in args.band.split(",")])
    return 0


def bands(a: dict, b: dict, diffs: dict, gaps_low: dict, moved: list, values: list[float]) -> None:
    """Per band: the rows a re-check would compute again, the verdicts that would still differ
    from fp32's, and the rows' seconds against fp32's. A row the low store re-checked counts with
    its stored float32 verdict and its stored seconds (the low-precision row's plus its re-check);
    a row within the band that the store did not re-check (a band wider than the store's) is
    *projected*: counted as agreeing, its re-check costing its fp32 row's seconds."""
    secs32 = sum(a[k]["seconds"] or 0 for k in diffs)
    print("\n| band (rad) | rows with abs(gap low) <= band: re-checked | verdicts that differ from fp32's after the "
          "re-check | agreement | rows' seconds fp32 / low with the re-check | rows projected |")
    print("|---|---|---|---|---|---|")
    for band in values:
        inside = [k for k in diffs if abs(gaps_low[k]) <= band]
        differ, secs, projected = 0, 0.0, 0
        for k in diffs:
            rc = b[k]["detail"].get("recheck")
            low_secs = rc["seconds"] if rc else b[k]["seconds"] or 0
            if abs(gaps_low[k]) > band:
                differ += k in moved
                secs += low_secs
            elif rc:
                differ += b[k]["verdict"] != a[k]["verdict"]
                secs += b[k]["seconds"] or 0
            else:
                projected += 1
                secs += low_secs + (a[k]["seconds"] or 0)
        print(f"| {band:g} | {len(inside)} of {len(diffs)} ({100 * len(inside) / len(diffs):.1f}%) | {differ} | "
              f"{100 * (1 - differ / len(diffs)):.1f}% | {secs32 / secs:.2f}x ({secs32:.1f} s / {secs:.1f} s) | "
              f"{projected} |")
    secs_low = sum((b[k]["detail"].get("recheck") or {}).get("seconds", b[k]["seconds"] or 0) for k in diffs)
    print(f"\nWithout a re-check: rows' seconds fp32 / low {secs32 / secs_low:.2f}x ({secs32:.1f} s / {secs_low:.1f} s).")


if __name__ == "__main__":
    raise SystemExit(main())
