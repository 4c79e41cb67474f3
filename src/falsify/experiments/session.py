"""What an experiment sees of a run: its pairs (:func:`load_run_pairs`) and the
:class:`RunSession`, with the one driver of every row kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import load_pairs
from ..data.errors import DataError
from ..data.pairs import PairSet
from .config import RunConfig
from .executor import RowContext
from .store import ResultsStore


def load_run_pairs(config: RunConfig, log=None) -> PairSet:
    """The pairs of a run: ``n_pairs`` sampled from ``data`` with ``seed`` (balanced by the gender
    of image A with ``stratify``; impostor pairs only for known-truth). ``n_pairs`` above what the
    data holds uses every pair, and ``log`` (when given) gets one line saying so
    (``PairSet.shortfall``)."""
    c = config
    what, why = "pairs", ""
    if c.experiment == "known-truth":  # composites need a donor of another identity: impostor pairs
        every = load_pairs(c.data, c.pairs)
        impostors = PairSet([p for p in every if not p.same], list(every.skipped), every.source, every.n_folds)
        if not impostors.pairs:
            raise DataError(f"no impostor pairs in {every.source}: the known-truth benchmark blends a part of B "
                            "into a face, so B must be another person")
        pairs = impostors.sample(c.n_pairs, c.seed)
        what, why = "impostor pairs", "known-truth uses impostor pairs only"
    elif c.stratify == "gender":
        from ..data.labels import load_labels, stratified_sample

        pairs = stratified_sample(load_pairs(c.data, c.pairs), load_labels(c.labels), c.n_pairs, c.seed)
        what = "pairs whose image A has a gender label"
    else:
        pairs = load_pairs(c.data, c.pairs, n_pairs=c.n_pairs, seed=c.seed)
    note = pairs.shortfall(what, why)
    if note and log is not None:
        log(note)
    return pairs


@dataclass
class RunSession:
    """What an experiment's rows and analysis get from a run (``Experiment.extend``), all fixed
    before the first row: the settings, the pairs, the model, the calibrated test, the prior, the
    explainers, the labels; and :meth:`compute_rows`, the one driver of every row kind."""

    config: RunConfig
    out: Path
    pairs: PairSet
    model: Any
    fconfig: Any  # the calibrated FalsificationConfig
    threshold: float | None  # the model's decision threshold (cosine): calibrated, else the model's own
    calibration: Any = None
    prior: Any = None  # falsification.prior.Prior, when the run needs it
    explainers: dict = field(default_factory=dict)  # row method -> (explainer, kind)
    random_model: Any = None
    labels: Any = None  # falsify.data.labels.Labels, when --labels is given
    executor: Any = None
    log: Any = print
    progress: bool = True
    grid_ids: frozenset = frozenset()  # pairs whose maps are saved for the saliency grid
    #: ``save_map(method, pair, map)``: where the grid pairs' maps go
    save_map: Any = None
    _embeddings: tuple | None = field(default=None, repr=False)
    #: the sha256 of the model's file, as the run's settings record it (RowContext.model_sha256)
    model_sha256: str | None = None

    @property
    def prior_map(self) -> torch.Tensor | None:
        return self.prior.map() if self.prior is not None else None

    def embeddings(self) -> tuple[dict, dict]:
        """``(emb, failed)``: the embedding of every image of the run (computed once), and why each
        unreadable one could not be read. Every image of the sample, not only the pending ones:
        batch composition then never depends on where an earlier run stopped, so resumed rows
        equal fresh ones."""
        if self._embeddings is None:
            from ..verification import embed_paths

            self._embeddings = embed_paths(self.model, [q for p in self.pairs for q in (p.a, p.b)],
                                           self.config.batch_size, progress=False)
        return self._embeddings

    def other_refs(self) -> dict:
        """Another pair's reference for ``@other-reference`` rows: B of the next pair in the sample."""
        pairs = self.pairs
        return {p.id: pairs[(k + 1) % len(pairs)].b for k, p in enumerate(pairs)}

    def context(self, rows_of: str) -> RowContext:
        """What computing rows under ``rows_of`` needs besides the model (:class:`RowContext`)."""
        emb, failed = self.embeddings()
        return RowContext(self.config, rows_of, self.model.name, self.fconfig, self.prior_map, self.threshold, emb,
                          failed, self.other_refs(), frozenset(self.grid_ids), self.model_sha256)

    def compute_rows(self, store: ResultsStore, kind) -> int:
        """The rows of ``kind`` (``executor.RowKind``) that ``store`` lacks, computed by the run's
        executor in units of ``batch_pairs`` pairs x one group of keys and written here, the one
        writer, as each unit comes back (a unit computed twice after a worker died is written
        once); a progress bar counts them. Returns how many were computed."""
        c, model, pairs = self.config, self.model, self.pairs
        keys = kind.keys()
        done = store.done(kind.rows_of, model.name)
        todo = [p for p in pairs if any((k, p.id) not in done for k in keys)]
        n_todo = sum((k, p.id) not in done for p in pairs for k in keys)
        if n_todo:
            line = kind.describe(n_todo, len(todo), len(pairs), len(keys))
            if line:
                self.log(line)
            chunks = [todo[start : start + c.batch_pairs] for start in range(0, len(todo), c.batch_pairs)]
            units = [(chunk, group) for chunk in chunks for group in kind.groups(keys)
                     if any((k, p.id) not in done for k in group for p in chunk)]
            computer = None if getattr(self.executor, "name", "") == "ray" else kind.computer(
                model, self.explainers, self.random_model)
            bar = tqdm(total=n_todo, desc=f"experiment {kind.rows_of}", unit=kind.unit_name,
                       disable=not self.progress)
            written = set(done)

            def write(rows: list, maps: list) -> None:
                """The one writer of the store: a unit's rows, less any already stored (a unit
                computed twice after a worker died), and the grid pairs' maps."""
                rows = [r for r in rows if (r["method"], r["pair"]) not in written]
                if self.save_map is not None:
                    for method, pair, m in maps:
                        self.save_map(method, pair, m)
                store.add_rows(rows)
                written.update((r["method"], r["pair"]) for r in rows)
                bar.update(len(rows))

            try:
                self.executor.run(kind, computer, units, done, write, log=self._log_above())
            finally:
                bar.close()
        else:
            self.log(kind.describe_done(len(pairs) * len(keys)))
        ids = {p.id for p in pairs}
        stored = {(k, p) for k, p in store.done(kind.rows_of, model.name) if p in ids and k in set(keys)}
        if len(stored) != len(pairs) * len(keys):
            raise RuntimeError(f"{self.out}: {len(stored)} rows of experiment {kind.rows_of} stored for {len(pairs)} "
                               f"pairs x {len(keys)} keys; please report this")
        return n_todo

    def _log_above(self):
        """``log`` that clears and redraws the progress bar around what it prints."""
        def log(*args) -> None:
            with tqdm.external_write_mode(nolock=True):
                self.log(*args)

        return log if self.progress else self.log
