"""The test's ceiling in experiment 6.1: one row per pair, and its analysis.

The ceiling of a pair (``falsify.falsification.ceiling``) is the best map a greedy search finds
under the run's own regions, fill, draws, target and criterion. Its rows are stored under their
own experiment key, :data:`CEILING_OF` (method :data:`CEILING_KEY`), so the ceiling is never a
method or a control of 6.1's tables, comparisons or McNemar tests. :func:`ceiling_summary` adds
the summary's ``ceiling`` section: how often even the ceiling is falsified (no map the search
finds passes there), and each method's FR on the pairs where the ceiling passes.
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence

from ..data.pairs import Pair
from ..stopping import raise_if_stopped
from .rows import ChunkRows, RowKind

#: the experiment key of the ceiling's rows
CEILING_OF = "6.1-ceiling"
#: the ``method`` of each ceiling row
CEILING_KEY = "ceiling"


class RowsCeiling(RowKind):
    """The ceiling of each pair: one row per pair, a unit is a chunk of ``batch_pairs`` pairs."""

    rows_of = CEILING_OF
    unit_name = "pair"

    def keys(self) -> list[str]:
        return [CEILING_KEY]

    def describe(self, n_rows: int, n_todo: int, n_pairs: int, n_keys: int) -> str:
        return (f"the test's ceiling on {n_rows} of {n_pairs} pairs to search (the best map the test's regions, fill "
                "and criterion allow)")

    def describe_done(self, n_rows: int) -> str:
        return f"the test's ceiling of all {n_rows} pairs is already in the store"

    def computer(self, model, explainers: dict | None = None, random_model=None) -> "CeilingRows":
        return CeilingRows(self, model, explainers, random_model)


class CeilingRows(ChunkRows):
    """Searches the ceiling of a unit's pairs (``ceiling_search``) and tests its maps; never writes."""

    def __init__(self, kind: RowKind, model, explainers: dict | None = None, random_model=None) -> None:
        super().__init__(kind, model, explainers, random_model)
        self.prior_cache: dict = {}

    def compute(self, pairs: list[Pair], images, refs, keys: Sequence[str], done) -> Iterator[tuple[list[dict], list]]:
        from ..falsification.ceiling import ceiling_search

        idx, _ = self.pending(CEILING_KEY, pairs, done)
        if not idx:
            return
        ctx = self.ctx
        t = time.perf_counter()
        try:
            found = ceiling_search(self.model, images[idx], refs[idx], ctx.fconfig,
                                   pair_ids=[pairs[i].index for i in idx], prior=ctx.prior_map,
                                   prior_cache=self.prior_cache)
        except Exception as exc:  # noqa: BLE001 - recorded per pair, the run goes on
            raise_if_stopped(exc)  # a stop that a library turned into its own error is no pair's error
            yield [self.kind.error_row(CEILING_KEY, pairs[i], f"{type(exc).__name__}: {exc}") for i in idx], []
            return
        seconds = (time.perf_counter() - t) / len(idx)
        rows = []
        for i, c in zip(idx, found):
            r = c.result
            rows.append({
                **self.kind.base_row(CEILING_KEY, pairs[i]), "angle": r.pair_angle, "verdict": r.verdict,
                "failed": list(r.failed), "d_high": r.d_high, "d_low": r.d_low, "sd_high": r.sd_high,
                "sd_low": r.sd_low, "margin": r.margin, "d_prime": r.d_prime, "n_high": r.n_high, "n_low": r.n_low,
                "k": r.K, "tau_high": r.tau_high, "tau_low": r.tau_low, "epsilon": r.epsilon, "seconds": seconds,
                "detail": c.to_dict(),
            })
        yield rows, []


def _rate(verdicts: Sequence[str]) -> dict:
    """Counts and falsified / (passed + falsified) with its Wilson 95% CI (None without a testable one)."""
    from ..falsification import stats

    r = stats.falsification_rate(list(verdicts))
    d = r.to_dict()
    return {"n": r.n_testable, "n_passed": r.n_passed, "n_falsified": r.n_falsified,
            "n_untestable": r.n_untestable, "fr": d["rate"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


def ceiling_summary(store, pairs, model_name: str, methods: Sequence[str], rows_of: str, search: dict) -> dict:
    """The summary's ``ceiling`` section from the store: the ceiling's own counts and the share of
    pairs where it is falsified (``share_falsified``: falsified / (passed + falsified), with its
    Wilson 95% CI ``ci_low``, ``ci_high``; ``n``: pairs with a testable ceiling), its mean distances and seconds per pair, and per row method
    of 6.1 (``rows_of``: their experiment key) its FR on the pairs where the ceiling passes
    (``fr_where_ceiling_passes``: method -> counts, FR, CI, ``n`` the pairs both tested)."""
    import math

    ids = {p.id for p in pairs}
    rows = store.rows(CEILING_OF, model_name, [CEILING_KEY], pairs=ids)
    tested = [r for r in rows if r["verdict"] != "error"]
    testable = [r for r in tested if r["verdict"] != "untestable"]

    def mean(key):
        v = [float(r[key]) for r in testable if r[key] is not None and math.isfinite(float(r[key]))]
        return sum(v) / len(v) if v else None

    passes = {r["pair"] for r in tested if r["verdict"] == "passed"}
    method_rows = store.rows(rows_of, model_name, list(methods), pairs=passes)
    where = {m: _rate([r["verdict"] for r in method_rows if r["method"] == m and r["verdict"] != "error"])
             for m in methods}
    seconds = [float(r["seconds"]) for r in tested if r["seconds"] is not None]
    own = _rate([r["verdict"] for r in tested])
    own["share_falsified"] = own.pop("fr")
    return {
        **own,
        "n_pairs": len(rows), "n_error": len(rows) - len(tested),
        "mean_d_high": mean("d_high"), "mean_d_low": mean("d_low"), "mean_margin": mean("margin"),
        "seconds_per_pair": sum(seconds) / len(seconds) if seconds else None,
        "search": dict(search),
        "fr_where_ceiling_passes": where,
    }
