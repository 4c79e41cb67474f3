"""Do two run folders hold the same results? Compares every experiment's rows (every store under
each folder: 6.4 keeps one per model) and every number of summary.json, so a change that should
not alter results (a refactor) can be checked on one small run of each experiment.

Rows are matched by (store, experiment, model, method, pair); their verdicts must be equal and
their numbers equal to ``--rtol`` (default 0: the same code on the same machine and thread count
gives the same floats). summary.json is compared leaf by leaf, leaving out what records when and
where a run happened (timestamps, elapsed seconds, paths, the environment).

    python benchmarks/compare_runs.py /work/runs-before/6.3 /work/runs-after/6.3

Exit status 0 when both agree, 1 otherwise; ``compare_verdicts.py`` details 6.1's verdicts.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
from pathlib import Path

#: summary keys that record the run's circumstances, not its results
VOLATILE = {"created", "started", "finished", "elapsed_s", "out", "environment", "seconds", "elapsed",
            "rows_per_s", "s_per_row", "time_s", "wall_s", "seconds_per_pair"}
#: result columns that record the circumstances
VOLATILE_COLUMNS = {"seconds", "elapsed_s", "created"}


def stores(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("results.sqlite"))}


def rows(path: Path) -> dict:
    with sqlite3.connect(path) as c:
        c.row_factory = sqlite3.Row
        return {(r["experiment"], r["model"], r["method"], r["pair"]): dict(r) for r in c.execute("SELECT * FROM results")}


def _same(a, b, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))
    return a == b


def leaves(x, prefix=""):
    """(path, value) of every leaf of a JSON value, volatile keys and path-like strings left out."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in VOLATILE:
                continue
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{prefix}[{i}]")
    elif isinstance(x, str) and ("/" in x and Path(x).is_absolute()):
        return
    else:
        yield prefix, x


def _key(path: str) -> str:
    """A leaf's path without its list indices (``distances_low[0]`` -> ``distances_low``)."""
    return re.sub(r"\[\d+\]", "", path)


def _note(largest: dict, key: str, va, vb, where) -> None:
    """Keep, per key, the largest absolute difference of two numbers and where it is."""
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
        d = abs(float(va) - float(vb))
        if d == d and d > largest.get(key, (-1.0, None))[0]:
            largest[key] = (d, where)


def compare(a: Path, b: Path, rtol: float, largest: dict | None = None) -> list[str]:
    """The differences of two run folders (one line each); ``largest`` (when given) gets, per
    column, detail leaf or summary leaf (list indices dropped), the largest absolute difference."""
    problems: list[str] = []
    largest = {} if largest is None else largest
    sa, sb = stores(a), stores(b)
    if set(sa) != set(sb):
        problems.append(f"stores differ: {sorted(set(sa) ^ set(sb))}")
    n_rows = 0
    for name in sorted(set(sa) & set(sb)):
        ra, rb = rows(sa[name]), rows(sb[name])
        if set(ra) != set(rb):
            problems.append(f"{name}: {len(set(ra) ^ set(rb))} rows in one run only, e.g. {sorted(set(ra) ^ set(rb))[0]}")
        for k in sorted(set(ra) & set(rb)):
            n_rows += 1
            for col, va in ra[k].items():
                if col in VOLATILE_COLUMNS:
                    continue
                vb = rb[k].get(col)
                if col == "detail" and va and vb:
                    da, db = dict(leaves(json.loads(va))), dict(leaves(json.loads(vb)))
                    bad = [p for p in set(da) | set(db) if not _same(da.get(p), db.get(p), rtol)]
                    for p in bad:
                        _note(largest, f"{k[0]} detail.{_key(p)}", da.get(p), db.get(p), k)
                    if bad:
                        problems.append(f"{name} {k}: detail differs at {sorted(bad)[:3]}")
                elif not _same(va, vb, rtol):
                    problems.append(f"{name} {k}: {col} {va!r} -> {vb!r}")
                    _note(largest, f"{k[0]} {col}", va, vb, k)
    ja, jb = a / "summary.json", b / "summary.json"
    n_leaves = 0
    if ja.is_file() and jb.is_file():
        la = dict(leaves(json.loads(ja.read_text(encoding="utf-8"))))
        lb = dict(leaves(json.loads(jb.read_text(encoding="utf-8"))))
        n_leaves = len(set(la) | set(lb))
        for p in sorted(set(la) | set(lb)):
            if not _same(la.get(p, "<absent>"), lb.get(p, "<absent>"), rtol):
                problems.append(f"summary.json {p}: {la.get(p, '<absent>')!r} -> {lb.get(p, '<absent>')!r}")
                _note(largest, f"summary.json {_key(p)}", la.get(p), lb.get(p), p)
    elif ja.is_file() != jb.is_file():
        problems.append("summary.json in one run only")
    print(f"{a} vs {b}: {n_rows} rows in {len(set(sa) & set(sb))} store(s), {n_leaves} summary values; "
          f"{len(problems)} difference(s)")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance of numbers (default 0: equal)")
    ap.add_argument("--show", type=int, default=20, help="differences printed (default 20)")
    ap.add_argument("--largest", action="store_true",
                    help="also print, per column, detail leaf and summary leaf that differs, the largest absolute "
                    "difference (a row's key: experiment, model, method, pair)")
    args = ap.parse_args(argv)
    largest: dict = {}
    problems = compare(args.before, args.after, args.rtol, largest)
    for p in problems[: args.show]:
        print("-", p)
    if len(problems) > args.show:
        print(f"... and {len(problems) - args.show} more")
    if args.largest and largest:
        print("largest absolute differences:")
        for key, (d, where) in sorted(largest.items()):
            print(f"  {key}: {d:.3g} ({'/'.join(map(str, where[2:])) if isinstance(where, tuple) else where})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
