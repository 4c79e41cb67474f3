"""The null maps of experiment 6.1: a reference FR, computed on the run's own pairs.

A null map knows only the model's prior (``falsify.falsification.prior.null_maps``: the prior
plus noise of one band's width per grid cell, so it keeps the prior's coarse ranking and orders
its regions at random within it). Its FR is the rate at which the test falsifies a map that knows
nothing about the pair; a method's FR reads against it and against the test's ceiling (the share
of pairs where even the best map the ceiling's search finds is falsified, ``.ceiling``): a method
falsified as often as the null maps has shown nothing the prior does not.

One null map per pair, seeded by the run's seed and the pair's index, tested like any map under
the run's test: one test per pair (f(x), the counterfactuals of S_high and S_low, and under
beyond-prior the prior's own, which are the same for every map of the pair). Its rows are stored
under their own experiment key, :data:`NULL_OF` (method :data:`NULL_KEY`), so the null maps are
never a method or a control of 6.1's tables, comparisons or McNemar tests. The maps need the
model's prior: a run without one (the absolute criterion and no ``centre`` among the methods)
has no null maps, and its summary says so.
"""
from __future__ import annotations

import math
import time
from typing import Iterator, Sequence

from ..data.pairs import Pair
from .rows import ChunkRows, RowKind

#: the experiment key of the null maps' rows
NULL_OF = "6.1-null"
#: the ``method`` of each null-map row
NULL_KEY = "null"
#: the bands of the prior's range whose width the noise has (``prior.null_maps``)
BANDS = 8
#: what the summary's section says the null maps are
ABOUT = ("maps that know only the model's prior: the prior plus uniform noise of 1/8 of its range per grid "
         "cell, one per pair, seeded")


def null_map_of(prior_map, grid: int, seed: int, pair_index: int):
    """The (H, W) null map of one pair: ``prior.null_maps`` with a generator seeded by the run's
    ``seed`` and the pair's index (the same map whether the pair is tested alone or in a batch)."""
    import numpy as np
    import torch

    from ..falsification.prior import null_maps

    state = int(np.random.SeedSequence([int(seed), 61, int(pair_index)]).generate_state(1, dtype=np.uint64)[0])
    gen = torch.Generator().manual_seed(state)
    return null_maps(prior_map.float().cpu(), 1, grid, gen, bands=BANDS)[0]


class RowsNull(RowKind):
    """The null map of each pair: one row per pair, a unit is a chunk of ``batch_pairs`` pairs."""

    rows_of = NULL_OF
    unit_name = "pair"

    def keys(self) -> list[str]:
        return [NULL_KEY]

    def describe(self, n_rows: int, n_todo: int, n_pairs: int, n_keys: int) -> str:
        return f"the null maps (maps that know only the prior) of {n_rows} of {n_pairs} pairs to test"

    def describe_done(self, n_rows: int) -> str:
        return f"the null maps of all {n_rows} pairs are already in the store"

    def computer(self, model, explainers: dict | None = None, random_model=None) -> "NullRows":
        return NullRows(self, model, explainers, random_model)


class NullRows(ChunkRows):
    """Tests the null map of each of a unit's pairs; never writes."""

    def __init__(self, kind: RowKind, model, explainers: dict | None = None, random_model=None) -> None:
        super().__init__(kind, model, explainers, random_model)
        self.prior_cache: dict = {}

    def compute(self, pairs: list[Pair], images, refs, keys: Sequence[str], done) -> Iterator[tuple[list[dict], list]]:
        import torch

        from ..falsification import falsification_test
        from ..models.base import model_device

        idx, _ = self.pending(NULL_KEY, pairs, done)
        if not idx:
            return
        ctx = self.ctx
        t = time.perf_counter()
        try:
            maps = torch.stack([null_map_of(ctx.prior_map, ctx.fconfig.grid, ctx.config.seed, pairs[i].index)
                                for i in idx])
            device = model_device(self.model)
            results = falsification_test(self.model, images[idx].to(device), refs[idx].to(device), maps.to(device),
                                         ctx.fconfig, pair_ids=[pairs[i].index for i in idx], prior=ctx.prior_map,
                                         prior_cache=self.prior_cache)
        except Exception as exc:  # noqa: BLE001 - recorded per pair, the run goes on
            yield [self.kind.error_row(NULL_KEY, pairs[i], f"{type(exc).__name__}: {exc}") for i in idx], []
            return
        seconds = (time.perf_counter() - t) / len(idx)
        rows = []
        for i, r in zip(idx, results):
            rows.append({
                **self.kind.base_row(NULL_KEY, pairs[i]), "angle": r.pair_angle, "verdict": r.verdict,
                "failed": list(r.failed), "d_high": r.d_high, "d_low": r.d_low, "sd_high": r.sd_high,
                "sd_low": r.sd_low, "margin": r.margin, "d_prime": r.d_prime, "n_high": r.n_high, "n_low": r.n_low,
                "k": r.K, "tau_high": r.tau_high, "tau_low": r.tau_low, "epsilon": r.epsilon, "seconds": seconds,
                "detail": r.to_dict(),
            })
        yield rows, []


def null_summary(store, pairs, model_name: str) -> dict:
    """The summary's ``null_maps`` section from the store: counts, the FR (falsified / (passed +
    falsified)) with its Wilson 95% CI (``fr``, ``ci_low``, ``ci_high``; ``n``: pairs whose null map
    was testable), mean distances and seconds per pair."""
    from ..falsification import stats

    ids = {p.id for p in pairs}
    rows = store.rows(NULL_OF, model_name, [NULL_KEY], pairs=ids)
    tested = [r for r in rows if r["verdict"] != "error"]
    testable = [r for r in tested if r["verdict"] != "untestable"]
    rate = stats.falsification_rate([r["verdict"] for r in tested])
    d = rate.to_dict()

    def mean(key):
        v = [float(r[key]) for r in testable if r[key] is not None and math.isfinite(float(r[key]))]
        return sum(v) / len(v) if v else None

    seconds = [float(r["seconds"]) for r in tested if r["seconds"] is not None]
    return {"about": ABOUT, "n": rate.n_testable, "n_passed": rate.n_passed, "n_falsified": rate.n_falsified,
            "n_untestable": rate.n_untestable, "fr": d["rate"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
            "n_pairs": len(rows), "n_error": len(rows) - len(tested), "mean_d_high": mean("d_high"),
            "mean_d_low": mean("d_low"), "seconds_per_pair": sum(seconds) / len(seconds) if seconds else None}
