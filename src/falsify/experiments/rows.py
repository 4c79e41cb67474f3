"""Row kinds: how an experiment declares the rows it adds to the store, so that one driver
(``session.RunSession.compute_rows``) and one executor layer (``executor``: in-process or Ray)
compute, resume and write every experiment's rows.

Nothing here imports torch at module level: experiment modules subclass these classes and are
read by ``falsify --help``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from ..data.pairs import Pair
from ..stopping import raise_if_stopped


def base_row(rows_of: str, model_name: str, method: str, p: Pair) -> dict:
    """The columns every row of ``p`` has."""
    return {"experiment": rows_of, "model": model_name, "method": method, "pair": p.id,
            "pair_index": p.index, "same": int(p.same), "fold": p.fold}


class ChunkImages:
    """The images of the last chunk of pairs a computer saw, so that the units of one chunk
    (one per method or group of keys) load and align its images once per process."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: dict = {}

    def get(self, name: str, ids: Sequence[str], make: Callable[[], Any]):
        """``make()`` for ``name`` of the chunk of pairs ``ids``, kept until another chunk is asked for."""
        key = tuple(ids)
        if key != self._key:
            self._key, self._value = key, {}
        if name not in self._value:
            self._value[name] = make()
        return self._value[name]


#: a unit of work: a chunk of pairs and the group of keys computed for them together
Unit = tuple[list, list]

#: ``write(rows, maps)``: the driver's writer of a batch of rows (a computer's ``rows``)
Writer = Callable[[list, list], None]


class RowKind:
    """The rows one experiment adds to the store, declared for the executors.

    - :attr:`rows_of`: the experiment key of the rows;
    - :meth:`keys`: the row keys every pair needs (``method`` of a row: a method, a
      ``region/start``, a ``configuration|map``);
    - :meth:`groups`: how those keys are cut into units (keys computed together share work);
    - :meth:`computer`: what computes a unit's rows, ``computer.rows(chunk, keys, done)``
      yielding ``(rows, maps)`` batches and never writing. In the driver it is made with the
      run's model and explainers; on a Ray worker with the worker's own copy of the model.

    A kind holds :attr:`ctx` (``executor.RowContext``: what the run fixed before its first unit) and
    whatever else it needs fixed once per run; it is pickled to Ray workers as it is, so it holds
    no model."""

    rows_of: str = ""
    #: what the progress bar counts
    unit_name = "test"

    def __init__(self, ctx: RowContext) -> None:
        self.ctx = ctx

    def keys(self) -> list[str]:
        raise NotImplementedError

    def groups(self, keys: Sequence[str]) -> list[list[str]]:
        """The keys in the groups one unit computes together (default: all of them)."""
        return [list(keys)]

    def computer(self, model, explainers: dict | None = None, random_model=None):
        """What computes this kind's units with ``model``; ``explainers`` (row method -> (explainer,
        kind), :func:`row_explainers`) and ``random_model`` when the driver already made them."""
        raise NotImplementedError

    def describe(self, n_rows: int, n_todo: int, n_pairs: int, n_keys: int) -> str:
        """The line logged before ``n_rows`` rows of ``n_todo`` of the run's ``n_pairs`` pairs are
        computed (each pair has ``n_keys`` keys); "" for none."""
        return f"{n_rows} of {n_pairs * n_keys} (key, pair) rows of experiment {self.rows_of} to compute"

    def describe_done(self, n_rows: int) -> str:
        """The line logged when every one of the run's ``n_rows`` rows is already stored."""
        return f"all {n_rows} rows of experiment {self.rows_of} are already in the store"

    def base_row(self, key: str, p: Pair) -> dict:
        return base_row(self.rows_of, self.ctx.model_name, key, p)

    def error_row(self, key: str, p: Pair, reason: str, verdict: str = "error") -> dict:
        return {**self.base_row(key, p), "verdict": verdict, "error": reason}


class ChunkRows:
    """The computer of an experiment's own rows (6.3, 6.5, 6.6, validity): a unit's pairs with an
    unreadable image get an error row per pending key; for the others, :meth:`compute` gets
    their images A (aligned, CPU), the embeddings of their images B and the keys pending for
    each. Subclasses override :meth:`compute` (and :attr:`needs` for other unreadable images)."""

    def __init__(self, kind: RowKind, model, explainers: dict | None = None, random_model=None) -> None:
        self.kind, self.ctx, self.model = kind, kind.ctx, model
        self.explainers, self.random_model = explainers, random_model
        self._images = ChunkImages()

    def needs(self, p: Pair) -> list:
        """The images of ``p`` a row needs besides A and B."""
        return []

    def rows(self, chunk: Sequence[Pair], keys: Sequence[str], done) -> Iterator[tuple[list[dict], list]]:
        failed, rows, good = self.ctx.failed, [], []
        for p in chunk:
            why = next((failed[q] for q in (p.a, p.b, *self.needs(p)) if failed.get(q)), None)
            if why:
                rows += [self.kind.error_row(k, p, why) for k in keys if (k, p.id) not in done]
            else:
                good.append(p)
        if rows:
            yield rows, []
        good = [p for p in good if any((k, p.id) not in done for k in keys)]
        if not good:
            return
        import torch

        from ..data import load_images

        model = self.model
        images = self._images.get("a", [p.id for p in good], lambda: load_images(
            [p.a for p in good], model.input_size, align=model.aligner)[0])
        refs = torch.stack([self.ctx.emb[p.b] for p in good])
        yield from self.compute(good, images, refs, keys, done)

    def compute(self, pairs: list[Pair], images: torch.Tensor, refs: torch.Tensor, keys: Sequence[str],
                done) -> Iterator[tuple[list[dict], list]]:
        raise NotImplementedError

    def pending(self, key: str, pairs: Sequence[Pair], done, refuse=None) -> tuple[list[int], list[dict]]:
        """``(positions, rows)``: the positions in ``pairs`` whose ``key`` row is to be computed, and
        the rows of those that ``refuse(i, pair)`` answers with a row instead (it returns None for a
        pair to compute); pairs whose row is ``done`` are in neither."""
        idx, rows = [], []
        for i, p in enumerate(pairs):
            if (key, p.id) in done:
                continue
            row = refuse(i, p) if refuse is not None else None
            if row is None:
                idx.append(i)
            else:
                rows.append(row)
        return idx, rows

    def pending_maps(self, method: str, pairs: Sequence[Pair], images, refs, done, refuse=None):
        """``(positions, maps, rows)``: :meth:`pending`, then the maps of ``method`` for those
        positions (:meth:`maps`); ``maps`` is None when there is none to make or the method failed,
        and ``rows`` holds the refused pairs' rows and the error rows."""
        idx, rows = self.pending(method, pairs, done, refuse)
        if not idx:
            return idx, None, rows
        maps, failed = self.maps(method, pairs, images, refs, idx)
        return idx, maps, rows + failed

    def maps(self, method: str, pairs: Sequence[Pair], images, refs, idx: Sequence[int]):
        """``(maps, rows)``: the maps of ``method`` for the pairs at ``idx`` (CPU), or None and an
        error row for each of them when the method fails (the run goes on)."""
        from ..models.base import model_device

        device = model_device(self.model)
        try:
            return self.explainer(method)(images[idx].to(device), refs[idx].to(device)).detach().cpu(), []
        except Exception as exc:  # noqa: BLE001 - recorded per pair, the run goes on
            raise_if_stopped(exc)  # a stop that a library turned into its own error is no pair's error
            return None, [self.kind.error_row(method, pairs[i], f"{type(exc).__name__}: {exc}") for i in idx]

    def explainer(self, method: str):
        """The real model's explainer of ``method`` (made on first use when the driver gave none)."""
        if self.explainers is None:
            self.explainers, self.random_model = row_explainers(self.ctx.config, self.model, self.ctx.prior_map)
        return self.explainers[method][0]


def row_explainers(config, model, prior_map=None, explainers: dict | None = None, with_random: bool = False):
    """``(rows, random_model)``: row method -> (explainer, kind) for ``config.row_methods()``
    (kind: real, random-model or other-reference), and the randomised model of the controls
    (None unless ``--sanity`` or ``with_random``: an experiment that needs it,
    ``Experiment.needs_random_model``). ``explainers``: those of ``config.methods`` but ``centre``,
    when already made."""
    from ..attribution import get_explainer
    from ..choices import OTHER_REFERENCE, RANDOM_MODEL

    c = config
    if explainers is None:
        explainers = {m: get_explainer(m, model, **c.method_options.get(m, {})) for m in c.methods if m != "centre"}
    explainers = dict(explainers)
    if "centre" in c.methods:
        explainers["centre"] = get_explainer("centre", model, prior=prior_map, **c.method_options.get("centre", {}))
    random_model = None
    if c.sanity or with_random:
        from ..models.base import randomised_copy

        random_model = randomised_copy(model, seed=c.seed)
    rows = {}
    for row in c.row_methods():
        if row.endswith(RANDOM_MODEL):
            m = row[: -len(RANDOM_MODEL)]
            rows[row] = (get_explainer(m, random_model, **c.method_options.get(m, {})), "random-model")
        elif row.endswith(OTHER_REFERENCE):
            rows[row] = (explainers[row[: -len(OTHER_REFERENCE)]], "other-reference")
        else:
            rows[row] = (explainers[row], "real")
    return rows, random_model


def load_run_model(config):
    """The model of a run (``RunConfig``), as the driver and every Ray worker load it."""
    from ..models import load_model

    c = config
    return load_model(c.model, input_size=tuple(c.input_size) if c.input_size else None, mean=c.mean,
                      std=c.std, device=c.device, trust_pickle=c.trust_pickle, align=c.align, precision=c.precision)
