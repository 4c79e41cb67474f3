"""Do two known-truth runs (e.g. fp32 and bf16) give each map the same verdict? (issue 30)

Reads the stores of two ``falsify run known-truth`` folders made with the same settings but the
precision, and prints, for one configuration of the test (``--config FILL/qQ/TARGET``) under a
criterion (``--criterion absolute``: d_high > tau_high, d_low < tau_low, margin >= epsilon with
each run's calibrated thresholds; ``beyond-prior``: the excess over the centre (prior) map's
margin on the same composite beats 0 by more than the excess's rounding), the verdict of every
(map, composite) row both runs tested, and how many agree, per map. Every composite of the runs
counts (the summary's rates keep only those whose effect reaches ``--truth-min-effect``).

    python benchmarks/known_truth_precision.py runs/kt-fp32 runs/kt-bf16 --config mean/q0.1/embedding --criterion absolute
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path


def load(folder: Path, config: str) -> tuple[dict, dict]:
    """({(map, pair): (d_high, d_low)}, calibration) of one store, for ``config``'s rows."""
    with sqlite3.connect(folder / "results.sqlite") as c:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        rows = c.execute("SELECT method, pair, verdict, d_high, d_low FROM results WHERE method LIKE ?",
                         (config + "|%",)).fetchall()
    dist = {(m.split("|", 1)[1], p): (dh, dl) for m, p, v, dh, dl in rows
            if v not in ("error", "untestable", "skipped") and dh is not None}
    return dist, json.loads(meta["calibration"])


def verdicts(dist: dict, cal: dict, criterion: str) -> dict:
    from falsify.geometry import excess_rounding

    out = {}
    tie = excess_rounding(128)
    for (name, pair), (dh, dl) in dist.items():
        if criterion == "absolute":
            out[name, pair] = dh > cal["tau_high"] and dl < cal["tau_low"] and dh - dl >= cal["epsilon"]
        elif ("centre", pair) in dist:
            ph, pl = dist["centre", pair]
            out[name, pair] = (dh - dl) - (ph - pl) > tie
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--config", default="mean/q0.1/embedding")
    ap.add_argument("--criterion", choices=["absolute", "beyond-prior"], default="absolute")
    args = ap.parse_args(argv)
    (da, ca), (db, cb) = load(args.a, args.config), load(args.b, args.config)
    va, vb = verdicts(da, ca, args.criterion), verdicts(db, cb, args.criterion)
    common = sorted(set(va) & set(vb))
    print(f"#### Known truth, {args.config}, {args.criterion}: `{args.a}` vs `{args.b}`, {len(common)} rows\n")
    print("| map | rows | passed (a) | passed (b) | same verdict |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(k[0] for k in common):
        keys = [k for k in common if k[0] == name]
        print(f"| {name} | {len(keys)} | {sum(va[k] for k in keys)} | {sum(vb[k] for k in keys)} | "
              f"{sum(va[k] == vb[k] for k in keys)} |")
    same = sum(va[k] == vb[k] for k in common)
    print(f"\n{same} of {len(common)} verdicts agree ({100 * same / max(1, len(common)):.1f}%); thresholds (a) "
          f"{ca['tau_high']:.4f}/{ca['tau_low']:.4f}/{ca['epsilon']:.4f}, (b) {cb['tau_high']:.4f}/{cb['tau_low']:.4f}/"
          f"{cb['epsilon']:.4f} rad")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
