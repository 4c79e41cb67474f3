"""What an experiment sees of a run: its pairs (:func:`load_run_pairs`) and the
:class:`RunSession`, the one state of a run, with the one driver of every row kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..data import load_pairs
from ..data.pairs import Pair, PairSet
from .config import RunConfig
from .executor import RowContext
from .store import ResultsStore


def load_run_pairs(config: RunConfig, log=None) -> PairSet:
    """The pairs of a run: ``n_pairs`` sampled from ``data`` with ``seed`` (balanced by the gender
    of image A with ``stratify``). ``n_pairs`` above what the data holds uses every pair, and
    ``log`` (when given) gets one line saying so (``PairSet.shortfall``). An experiment that runs
    on other pairs declares them (``Experiment.pairs``: known-truth's impostor pairs)."""
    c, what = config, "pairs"
    if c.stratify == "gender":
        from ..data.labels import load_labels, stratified_sample

        pairs = stratified_sample(load_pairs(c.data, c.pairs), load_labels(c.labels), c.n_pairs, c.seed)
        what = "pairs whose image A has a gender label"
    else:
        pairs = load_pairs(c.data, c.pairs, n_pairs=c.n_pairs, seed=c.seed)
    return said_shortfall(pairs, log, what)


def said_shortfall(pairs: PairSet, log, what: str = "pairs", why: str = "") -> PairSet:
    """``pairs``, once ``log`` (when given) got the line saying ``n_pairs`` asked for more ``what``
    than there are (``PairSet.shortfall``)."""
    note = pairs.shortfall(what, why)
    if note and log is not None:
        log(note)
    return pairs


def calibration_pool(config: RunConfig) -> PairSet:
    """The pairs the thresholds, the prior and delta are calibrated on: a seeded sample of
    ``calibrate_on``'s pairs when it is given, else of the run's own data."""
    from ..falsification.calibration import calibration_pool as pool

    c = config
    return pool(c.data, c.pairs, calibrate_on=c.calibrate_on, n_pairs=c.calibration_pairs, seed=c.seed)


def prior_image_batch(config: RunConfig, model, pool: PairSet, pairs: PairSet, log=print):
    """The images of the prior and of delta's calibration, and their partners' embeddings
    (``falsify.falsification.prior.prior_batch`` on the calibration pairs ``pool``, less the
    images of the run's ``pairs``)."""
    from ..falsification.prior import prior_batch

    c = config
    tested = {q for p in pairs for q in (p.a, p.b)}
    return prior_batch(model, pool, tested, c.prior_images, batch_size=c.batch_size,
                       warn=lambda line: log(f"warning: {line}"))


@dataclass
class RunSession:
    """The one state of a run, fixed before its first row and all an experiment sees of it
    (``Experiment.compute``, ``Experiment.extend``, ``Experiment.write``): the settings, the
    output folder, the pairs, the executor; when the run loads its model (``Experiment.needs_model``)
    the model, the calibrated test, the prior, the explainers, the labels; and
    :meth:`compute_rows`, the one driver of every row kind."""

    config: RunConfig
    out: Path
    pairs: PairSet
    #: ``write_outputs(out, summary, explanations=None)``: summary.json and the report
    #: (``registry.write_outputs``, given by whoever composed the run)
    write_outputs: Callable | None = None  # None: a session made to compute rows only (tests)
    executor: Any = None
    log: Any = print
    progress: bool = True
    retry_errors: bool = False
    started: str = ""  # when the run started (UTC, ISO)
    t0: float = 0.0  # time.perf_counter() when it started
    settings: dict = field(default_factory=dict)  # the result settings and fingerprints the store records
    stored: dict | None = None  # the store of ``out`` as found (``store.inspect_store``), None when new
    method_fingerprints: dict = field(default_factory=dict)
    model: Any = None
    fconfig: Any = None  # the calibrated FalsificationConfig
    threshold: float | None = None  # the model's decision threshold (cosine): calibrated, else the model's own
    calibration: Any = None
    prior: Any = None  # falsification.prior.Prior, when the run needs it
    delta: dict | None = None  # the calibrated delta of the beyond-prior criterion, when calibrated now
    explainers: dict = field(default_factory=dict)  # row method -> (explainer, kind)
    random_model: Any = None
    labels: Any = None  # falsify.data.labels.Labels, when --labels is given
    grid_ids: frozenset = frozenset()  # pairs whose maps are saved for the saliency grid
    #: the sha256 of the model's file, as the run's settings record it (RowContext.model_sha256)
    model_sha256: str | None = None
    #: the calibration pairs (:func:`calibration_pool`), when the run made them
    pool: PairSet | None = None
    _embeddings: tuple | None = field(default=None, repr=False)

    @property
    def prior_map(self) -> torch.Tensor | None:
        return self.prior.map() if self.prior is not None else None

    def calibration_pool(self) -> PairSet:
        """The calibration pairs (:func:`calibration_pool`), made once."""
        if self.pool is None:
            self.pool = calibration_pool(self.config)
        return self.pool

    def prior_image_batch(self):
        """``(images, refs)``: the images of the prior and of delta's calibration, and their
        partners' embeddings (:func:`prior_image_batch`)."""
        return prior_image_batch(self.config, self.model, self.calibration_pool(), self.pairs, self.log)

    def grid_pairs(self) -> list[Pair]:
        """The pairs of the saliency-grid figure: the first genuine and impostor pairs, half each."""
        n = self.config.grid_pairs
        gen = [p for p in self.pairs if p.same][: (n + 1) // 2]
        imp = [p for p in self.pairs if not p.same][: max(0, n - len(gen))]
        return gen + imp

    def save_map(self, method: str, pair: Pair, m: torch.Tensor) -> None:
        """Where the grid pairs' maps go: ``out/maps/<pair index>/<method>.npy``."""
        import numpy as np

        path = self.out / "maps" / f"{pair.index}" / f"{method}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, m.detach().cpu().numpy().astype(np.float16))

    def grid_explanations(self):
        """(pair, PairExplanation with the stored maps of A) for the saliency-grid figure."""
        import numpy as np

        from ..data import load_image
        from ..geometry import cosine_similarity, geodesic_distance
        from ..models.base import model_device
        from ..report.explain import PairExplanation

        model, methods, out = self.model, self.config.methods, []
        if model is None:
            return None
        for p in self.grid_pairs():
            folder = self.out / "maps" / f"{p.index}"
            maps = {m: torch.from_numpy(np.load(folder / f"{m}.npy").astype(np.float32))
                    for m in methods if (folder / f"{m}.npy").is_file()}
            if len(maps) != len(methods):
                continue
            try:
                a, b = (load_image(q, model.input_size, model.aligner) for q in (p.a, p.b))
            except ValueError:
                continue
            with torch.inference_mode():
                e = model(torch.stack([a, b]).to(model_device(model))).cpu()
            out.append((p, PairExplanation(a, b, float(cosine_similarity(e[0], e[1])),
                                           float(geodesic_distance(e[0], e[1])), maps_a=maps)))
        return out or None

    def alignment(self) -> dict:
        """The alignment of the run's images: the template, and the photos in which no face was
        found (resized instead), from the landmark cache (detected only if never seen)."""
        aligner = self.model.aligner
        if aligner is None:
            return {"template": None}
        survey = aligner.survey(sorted({q for p in self.pairs for q in (p.a, p.b)}))
        if survey["no_face_found"]:
            self.log(f"alignment: no face found in {survey['no_face_found']} of {survey['images']} images; they "
                     f"were resized instead (e.g. {survey['no_face_examples'][0]})")
        return {"template": aligner.template, **survey}

    def embeddings(self) -> tuple[dict, dict]:
        """``(emb, failed)``: the embedding of every image of the run (computed once), and why each
        unreadable one could not be read, in float32 whatever the run's precision. Every image of
        the sample, not only the pending ones: batch composition then never depends on where an
        earlier run stopped, so resumed rows equal fresh ones."""
        if self._embeddings is None:
            from ..verification import embed_paths
            from .recheck import full_precision

            with full_precision(self.model):  # part of the set-up: float32 under every precision
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
