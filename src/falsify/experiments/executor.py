"""Who computes an experiment's rows: row kinds, and the executors of ``falsify run --executor``.

Every experiment that adds rows to the store (6.1, 6.3, 6.5, 6.6, the validity study) declares
them as a :class:`RowKind`: the keys each pair needs (methods, ``region/start``s,
``configuration|map``s), how those keys are grouped into units of work, and a *computer* that
computes a unit's rows from the model without writing anything. What a run fixes before its
first unit (the calibrated test, the prior, every image's embedding: :class:`RowContext`)
travels with the kind, so a worker never calibrates.

A *unit* is a chunk of ``batch_pairs`` pending pairs and one group of keys. The executor decides
where units run and hands each unit's rows to the driver (:func:`compute_rows`), which is the
only writer of the store and of ``maps/``:

- :class:`InProcessExecutor` (the default): every unit in this process, in the order of the
  pairs, each batch written as soon as it is computed.
- ``RayExecutor`` (``falsify.experiments.ray_executor``, the ``ray`` extra): units on Ray actors,
  each with its own copy of the model, on this machine or a cluster.

Both run the same units, so a Ray run stores the rows of an in-process one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..choices import OTHER_REFERENCE, RANDOM_MODEL
from ..data import load_images
from ..data.pairs import Pair
from ..falsification.stages import EmbeddingCache
from ..models.base import model_device
from ..stopping import check_stopped, raise_if_stopped
from .reach import CONNECT_TIMEOUT_S, RAY_JOIN_ENV, check_reachable  # noqa: F401 - re-exported
from .rows import (ChunkImages, ChunkRows, RowKind, Unit, Writer, base_row,  # noqa: F401 - the seam, re-exported
                   row_explainers)

#: the fix named when ``--executor ray`` finds no ray
RAY_FIX = "pip install 'falsify[ray]' torch==2.13.0"


def deletion_of(model, threshold, config, pair: Pair, image, attribution, reference, cosine: float) -> dict | None:
    """The deletion curve of a genuine pair the model accepts (``--deletion``), else None."""
    from ..falsification.deletion import deletion_curve

    if threshold is None or not pair.same or cosine < threshold:
        return None
    return deletion_curve(model, image, attribution, reference, threshold, grid=config.grid,
                          batch_size=config.batch_size).to_dict()


@dataclass
class RowContext:
    """What computing rows needs besides the model and the explainers, fixed by the driver before
    the first unit (picklable, so Ray workers get it as it is and never calibrate)."""

    config: Any  # RunConfig
    rows_of: str  # the experiment key of the rows
    model_name: str
    fconfig: Any  # the calibrated FalsificationConfig
    prior_map: torch.Tensor | None
    threshold: float | None  # the model's decision threshold (cosine), for deletion curves
    emb: dict  # image path -> embedding (CPU), every image of the run
    failed: dict  # image path -> why it could not be read
    other_ref: dict  # pair id -> the reference image of its @other-reference rows
    grid_ids: frozenset  # pairs whose maps are saved for the saliency grid
    #: the sha256 of the model's file when the run started (a Ray worker that loads other weights is refused)
    model_sha256: str | None = None


class RowComputer:
    """Computes the rows of 6.1's units: maps and falsification tests, no writes."""

    def __init__(self, ctx: RowContext, model, explainers: dict, random_model=None, test=None) -> None:
        self.ctx, self.model, self.explainers, self.random_model = ctx, model, explainers, random_model
        self.prior_cache: dict = {}
        #: the embeddings the tests of one chunk's pairs share (f(x), counterfactuals of regions two maps pick)
        self.embedding_cache = EmbeddingCache()
        self._cached_ids: tuple = ()  # the pairs whose images the cache holds
        #: the maps and tests of one batch (default :meth:`test`)
        self.test_batch = test or self.test
        self._saved: list = []  # (method, pair, map) of the grid pairs, since the last batch
        self._images = ChunkImages()
        from .recheck import recheck_for

        #: the float32 re-check of near-ties when the model runs in low precision (None in float32)
        self.recheck = recheck_for(self, deletion_of, random_embeddings)

    def rows(self, chunk: Sequence[Pair], methods: Sequence[str], done) -> Iterator[tuple[list[dict], list]]:
        """The rows of (``chunk`` x ``methods``) that ``done`` (a set of (method, pair id)) lacks,
        one ``(rows, maps)`` per batch: first the error rows of pairs with an unreadable image,
        then each method's rows. ``maps``: (method, pair, map) of the saliency-grid pairs."""
        ctx, model = self.ctx, self.model
        failed, emb, other_ref = ctx.failed, ctx.emb, ctx.other_ref
        bad = [p for p in chunk if p.a in failed or p.b in failed or failed.get(other_ref[p.id])]
        for p in bad:
            reason = failed.get(p.a) or failed.get(p.b)
            rows = []
            for m in methods:
                if (m, p.id) in done:
                    continue
                why = reason or (failed.get(other_ref[p.id]) if m.endswith(OTHER_REFERENCE) else None)
                if why is None:  # only the other pair's reference is unreadable: the other rows are fine
                    continue
                rows.append(self.error_row(m, p, why))
            yield rows, []
        good = [p for p in chunk if not (failed.get(p.a) or failed.get(p.b))]
        if not good:
            return
        ids = tuple(p.id for p in good)
        if ids != self._cached_ids:  # one chunk's images at a time, shared by all its methods
            self.embedding_cache, self._cached_ids = EmbeddingCache(), ids
        from ..geometry import cosine_similarity, geodesic_distance

        images = self._images.get("a", [p.id for p in good], lambda: load_images(
            [p.a for p in good], model.input_size, align=model.aligner)[0])
        refs = torch.stack([emb[p.b] for p in good])
        probes = torch.stack([emb[p.a] for p in good])
        cos = cosine_similarity(probes, refs).tolist()
        ang = geodesic_distance(probes, refs).tolist()
        device = model_device(model)
        random_refs = None
        for method in methods:
            explainer, kind = self.explainers[method]
            idx = [i for i, p in enumerate(good) if (method, p.id) not in done]
            if kind == "other-reference":
                idx = [i for i in idx if not failed.get(other_ref[good[i].id])]
            if not idx:
                continue
            if kind == "random-model":
                if random_refs is None:  # the randomised model's own embedding of each partner face
                    random_refs = self._images.get("random-b", [p.id for p in good],
                                                   lambda: random_embeddings(self.random_model, model, good))
                map_refs = random_refs[idx]
            elif kind == "other-reference":
                map_refs = torch.stack([emb[other_ref[good[i].id]] for i in idx])
            else:
                map_refs = refs[idx]
            rows = self.test_batch(method, explainer, model, self.ctx.fconfig, [good[i] for i in idx],
                                   images[idx].to(device), refs[idx].to(device), [cos[i] for i in idx],
                                   [ang[i] for i in idx], map_refs=map_refs.to(device))
            maps, self._saved = self._saved, []
            yield rows, maps

    def test(self, method, explainer, model, fconfig, pairs, images, refs, cos, ang, map_refs=None) -> list[dict]:
        """Maps and tests for a batch; on failure, one by one so one bad pair costs one row.

        ``map_refs`` are the references the maps are made against (default ``refs``; another
        pair's face for @other-reference rows, the randomised model's embedding for
        @random-model rows); the test always runs on the real model."""
        from ..falsification import falsification_test

        ctx = self.ctx
        map_refs = refs if map_refs is None else map_refs
        t = time.perf_counter()
        try:
            maps = explainer(images, map_refs)
            results = falsification_test(model, images, refs, maps, fconfig, pair_ids=[p.index for p in pairs],
                                         prior=ctx.prior_map, prior_cache=self.prior_cache,
                                         embedding_cache=self.embedding_cache)
        except Exception as exc:  # noqa: BLE001 - recorded per pair below, the run goes on
            raise_if_stopped(exc)  # a stop that a library turned into its own error is no pair's error
            if len(pairs) == 1:
                return [self.error_row(method, pairs[0], f"{type(exc).__name__}: {exc}")]
            out = []
            for i in range(len(pairs)):
                out += self.test_batch(method, explainer, model, fconfig, pairs[i : i + 1], images[i : i + 1],
                                       refs[i : i + 1], cos[i : i + 1], ang[i : i + 1], map_refs[i : i + 1])
            return out
        seconds = (time.perf_counter() - t) / len(pairs)
        self._saved += [(method, p, m.detach().cpu()) for p, m in zip(pairs, maps) if p.id in ctx.grid_ids]
        rows = []
        for i, (p, r, cs, an) in enumerate(zip(pairs, results, cos, ang)):
            d = r.to_dict()
            if ctx.config.deletion:
                d["deletion"] = deletion_of(model, ctx.threshold, ctx.config, p, images[i], maps[i], refs[i], cs)
            rows.append({
                **base_row(ctx.rows_of, ctx.model_name, method, p), "cosine": cs, "angle": an,
                "verdict": r.verdict, "failed": list(r.failed), "d_high": r.d_high, "d_low": r.d_low,
                "sd_high": r.sd_high, "sd_low": r.sd_low, "margin": r.margin, "d_prime": r.d_prime,
                "n_high": r.n_high, "n_low": r.n_low, "k": r.K, "tau_high": r.tau_high, "tau_low": r.tau_low,
                "epsilon": r.epsilon, "seconds": seconds, "detail": d,
            })
        if self.recheck is not None:
            rows = self.recheck.apply(method, pairs, images, refs, map_refs, rows)
        return rows

    def error_row(self, method: str, p: Pair, reason: str) -> dict:
        return {**base_row(self.ctx.rows_of, self.ctx.model_name, method, p), "verdict": "error", "error": reason}


def random_embeddings(random_model, model, pairs: Sequence[Pair]) -> torch.Tensor:
    """The randomised model's own embedding of each pair's partner face B (CPU), as ``model``
    sees it (its input size and alignment): the references of the ``@random-model`` maps."""
    b_images, _ = load_images([p.b for p in pairs], model.input_size, align=model.aligner)
    with torch.inference_mode():
        return random_model(b_images.to(model_device(random_model))).float().cpu()


#: methods that share work on the same images and model: ``ig`` keeps the embeddings of the
#: path points it evaluates and ``geodesic-ig``'s schedule reads them (``attribution.paths``)
SHARED_PATH = ("ig", "geodesic-ig")
#: ``rise`` and ``rise-dissimilarity`` read the same masked forward passes (``attribution.rise``)
SHARED_MASKS = ("rise", "rise-dissimilarity")


def method_units(methods: Sequence[str]) -> list[list[str]]:
    """``methods`` in units that one worker computes together, in their order: the path methods
    of one model (``ig`` and ``geodesic-ig``, alone or ``@other-reference``: same model, same
    paths; or both ``@random-model``) share a unit, so do the two RISE maps of one model
    (``SHARED_MASKS``); every other method is a unit of its own."""
    units: dict = {}
    for m in methods:
        base, _, suffix = m.partition("@")
        group = "path" if base in SHARED_PATH else "masks" if base in SHARED_MASKS else None
        key = (group, suffix == RANDOM_MODEL[1:]) if group else m
        units.setdefault(key, []).append(m)
    return list(units.values())


class Rows61(RowKind):
    """6.1's rows: one falsification test per (row method, pair); the path methods of one model
    share a unit, as do its two RISE maps (:func:`method_units`); every other method is a unit of its own."""

    def __init__(self, ctx: RowContext, rows_of: str = "6.1") -> None:
        super().__init__(ctx)
        self.rows_of = rows_of

    def keys(self) -> list[str]:
        return self.ctx.config.row_methods()

    def describe(self, n_rows: int, n_todo: int, n_pairs: int, n_keys: int) -> str:
        return f"{n_rows} of {n_pairs * n_keys} (method, pair) rows to compute"

    def describe_done(self, n_rows: int) -> str:
        return "all rows are already in the store; writing the summary"

    def groups(self, keys: Sequence[str]) -> list[list[str]]:
        return method_units(keys)

    def computer(self, model, explainers: dict | None = None, random_model=None) -> RowComputer:
        if explainers is None:
            explainers, random_model = row_explainers(self.ctx.config, model, self.ctx.prior_map)
        return RowComputer(self.ctx, model, explainers, random_model)


class InProcessExecutor:
    """Every unit in this process, in the order of the pairs, each batch written as soon as it is
    computed."""

    name = "in-process"

    def open(self, log=print) -> bool:
        """Nothing to connect to (see ``RayExecutor.open``)."""
        return False

    def close(self) -> None:
        pass

    def run(self, kind: RowKind, computer, units: Sequence[Unit], done, write: Writer, log=print) -> None:
        for chunk, keys in units:
            for rows, maps in computer.rows(chunk, keys, done):
                write(rows, maps)
                check_stopped()  # a stop whose interrupt a library swallowed: after the rows are stored


def executor_open(executor, log=print) -> bool:
    """``executor.open(log)``: connect it before any work (Ray: reach and check the cluster);
    True when this call connected it, so that its caller closes it. An executor without ``open``
    connects in its ``run``."""
    opener = getattr(executor, "open", None)
    return bool(opener(log=log)) if opener is not None else False


def make_executor(config, verbose: bool = False):
    """The executor of ``config.executor``; ``--executor ray`` without ray installed is a
    one-line ``ImportError`` naming the fix, and a ``--ray-address`` where nothing answers a
    one-line ``ConnectionError`` (:func:`check_reachable`), both before any input is read.
    ``verbose``: Ray's own log lines are shown."""
    if config.executor != "ray":
        return InProcessExecutor()
    import os
    import sys

    if config.ray_address and "ray" not in sys.modules:  # read by ray when it is imported
        for key, value in RAY_JOIN_ENV.items():
            os.environ.setdefault(key, value)
    try:
        from .ray_executor import RayExecutor
    except ImportError as exc:
        raise ImportError(f"--executor ray needs ray ({exc}); install it with: {RAY_FIX}") from None
    if config.ray_address:  # nothing answers there: say so now, before the data and the model are read
        check_reachable(config.ray_address)
    return RayExecutor(address=config.ray_address, workers=config.workers, verbose=verbose)
