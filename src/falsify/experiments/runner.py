"""``falsify run``: the one :class:`Runner` of every experiment, which it receives.

Whoever composes the run (``registry.runner_for``: ``falsify run NAME``) hands the runner its
``Experiment``; the runner reads and checks the input, takes the output folder, builds the
:class:`~.session.RunSession` (the run's one state) and asks the experiment to ``compute`` the
summary (by default 6.1's rows, one SQLite row per (method, pair), then the experiment's
``extend``) and to ``write`` it. The settings are ``config.RunConfig``; resuming is decided in
``resume``; ``lock`` keeps one run per folder. Nothing here names an experiment.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..data.pairs import PairSet
from ..falsification.calibration import adopt_threshold, threshold_placeholder
from ..paths import check_writable, space_guard
from .config import RunConfig
from .executor import executor_open, make_executor, row_explainers
from .lock import RunLock
from .recheck import full_precision
from .resume import (FINGERPRINT, MODEL_FINGERPRINT, changed_settings, conflict_message, data_changes, default_out,
                     environment, model_fingerprints, now, settings_conflicts)
from .rows import load_run_model
from .session import RunSession
from .store import ResultsStore, inspect_store


#: The store's meta key of ``{method: sha256 of its file}`` for registered and imported methods.
METHOD_FINGERPRINTS = "method_fingerprints"

#: What a run that ran out of space keeps (``falsify.paths.space_guard``).
RESUMES = "the rows already stored are kept, and rerunning the same command resumes"


def run_settings(experiment, config: RunConfig, pairs: PairSet) -> dict:
    """What the store of a run records and a resumed run must match: the experiment's result
    settings (``Experiment.result_settings``), the data's fingerprint and the sha256 of the file
    of every model it uses (``Experiment.models``)."""
    return {**experiment.result_settings(config), FINGERPRINT: pairs.fingerprint(),
            MODEL_FINGERPRINT: model_fingerprints(experiment.models(config))}


class Runner:
    """Runs ``experiment`` (an ``Experiment``) on ``config`` into ``out``; ``run()`` returns the
    summary dict; ``write_outputs`` (``registry.write_outputs``, handed on in the session) writes
    summary.json and the report.

    Everything that can be wrong with the input (data, model, method options, output folder,
    settings of an existing store) is checked before the first write. Then, before any work, the
    executor is connected (Ray: a cluster that cannot be reached is a one-line error in seconds)
    and ``OUT/run.lock`` is taken (a second run into ``OUT`` is refused before it calibrates). The
    calibration and the prior are computed before the store is created, and a run that stops
    before its store exists removes the lock file and the folders the lock made, so a run that
    fails there leaves nothing behind.
    ``retry_errors`` deletes the error rows of the store so that they are computed again.
    ``executor`` computes the rows (``falsify.experiments.executor``; default: the one
    ``config.executor`` names); this runner stays the only writer of the store either way.
    The run's one state is :attr:`session` (a :class:`~.session.RunSession`), built once its
    input is checked.
    """

    def __init__(self, config: RunConfig, experiment, write_outputs: Callable, progress: bool = True, log=print,
                 retry_errors: bool = False, executor=None) -> None:
        if experiment.name and experiment.name != config.experiment:
            raise ValueError(f"the runner was given experiment {experiment.name} for settings of experiment "
                             f"{config.experiment}; please report this")
        self.config = config
        self.experiment = experiment
        self.write_outputs = write_outputs
        self.progress = progress
        self.log = log
        self.retry_errors = retry_errors
        #: the output folder (default: ``resume.default_out``, once the settings are known)
        self.out = Path(config.out) if config.out else None
        #: who computes the rows (default: ``config.executor``'s, made when the run starts)
        self.executor = executor
        #: the run's one state
        self.session: RunSession | None = None

    # -- set-up -----------------------------------------------------------------------------

    def _stored(self, settings: dict, pairs: PairSet) -> dict | None:
        """The existing store of ``out`` (read only), refused when its settings differ. Images that
        changed since the store was made are accepted only with ``retry_errors`` and only when
        every pair that uses them failed (an unreadable image, since fixed; a run that computes no
        rows of its own, 6.4, leaves that to the runs it composes)."""
        stored = inspect_store(self.out / "results.sqlite")
        have = stored["meta"].get("settings") if stored else None
        if have is None:
            return stored
        if FINGERPRINT not in have:
            raise ValueError(f"{self.out} was made by an older falsify whose store has no data fingerprint, so "
                             "resuming it could mix data sets; nothing was changed there. Use another --out")
        if MODEL_FINGERPRINT not in have:
            raise ValueError(f"{self.out} was made by an older falsify that did not record the sha256 of the model's "
                             "file, so resuming it could mix the rows of two networks; nothing was changed there. Use "
                             "another --out ('falsify report' still reads it)")
        pairs_changed, images = data_changes(have.get(FINGERPRINT), settings[FINGERPRINT])
        if images and not pairs_changed and not changed_settings(have, settings) and self.experiment.needs_model:
            changed = set(images)
            users = {p.id for p in pairs if changed & set(p.image_keys)}
            if not users & stored["pairs_with_results"]:
                if self.retry_errors:
                    self.log(f"{len(images)} image(s) changed since the run was made, used only by pairs that "
                             "failed: their rows are computed again")
                    return stored
                raise ValueError(
                    f"{self.out}: {len(images)} image(s) changed since the run was made (e.g. {images[0]}), "
                    "used only by pairs whose rows are errors; rerun with --retry-errors to compute them again"
                )
        diff = settings_conflicts(have, settings)
        if diff == ["path_rules"]:
            raise ValueError(f"{self.out} was made by an older falsify whose ig, geodesic-ig, occlusion, kernelshap, "
                             "lime or ceiling search compute differently (path_rules), so resuming it could mix rows; "
                             "nothing was changed there. Use another --out ('falsify report' still reads it)")
        if diff:
            raise ValueError(conflict_message(self.out, diff))
        return stored

    def _method_fingerprints(self, stored: dict | None) -> dict:
        """The sha256 of the file of every registered or imported method of the run, merged with
        the store's: a method whose file changed since its rows were made is refused (one line,
        nothing written), so old and new rows are never mixed."""
        from ..attribution import method_fingerprints

        have = dict((stored or {}).get("meta", {}).get(METHOD_FINGERPRINTS) or {})
        now = method_fingerprints(self.config.methods)
        changed = [m for m, sha in now.items() if have.get(m, sha) != sha]
        if changed:
            from ..attribution import method_source

            m = changed[0]
            raise ValueError(f"{self.out}: the file of method {m!r} ({method_source(m)}) changed since its rows were "
                             "made (its sha256 differs), so resuming would mix its old and new maps; nothing was "
                             "changed there. Restore the file, or use another --out")
        return {**have, **now}

    def _check(self, started: str, t0: float) -> RunSession:
        """Everything that reads or checks input, writing nothing: the labels, the pairs, the model
        and every method's options (when the experiment loads a model), the output folder and its
        store's settings. Returns the session, to which :meth:`_prepare` adds the calibrated test."""
        from ..attribution import get_explainer

        c, experiment = self.config, self.experiment
        labels = None
        if c.labels:  # 6.3's and 6.6's groups, --stratify: read (and checked) before anything is written
            from ..data.labels import load_labels

            labels = load_labels(c.labels)
        pairs = experiment.pairs(c, log=self.log)  # --n-pairs above what the data holds: one line
        model = None
        if experiment.needs_model:
            model = load_run_model(c)
            # every method's options checked now, before any work; a model without a decision threshold
            # of its own (a user's checkpoint, NAME:random) gets the calibrated one below
            for m in c.methods:
                if m != "centre":
                    get_explainer(m, model, **{**threshold_placeholder(model, m, calibrating=c.tau_high is None),
                                               **c.method_options.get(m, {})})
        # the model by its file's content (hashed once per process; the load above read the same file)
        settings = run_settings(experiment, c, pairs)
        if self.out is None:
            self.out = default_out(c, settings)
        check_writable(self.out, "--out", folder=True)
        stored = self._stored(settings, pairs)
        return RunSession(
            c, self.out, pairs, write_outputs=self.write_outputs, executor=self.executor, log=self.log,
            progress=self.progress, retry_errors=self.retry_errors, started=started, t0=t0, settings=settings,
            stored=stored, method_fingerprints=self._method_fingerprints(stored) if model is not None else {},
            model=model, labels=labels, model_sha256=settings[MODEL_FINGERPRINT].get(c.model))

    def _calibration(self, session: RunSession):
        from ..falsification import Calibration
        from ..falsification.calibration import calibrate_thresholds

        c, stored = self.config, session.stored
        if c.tau_high is not None:
            return None
        cached = stored["meta"].get("calibration") if stored else None
        if cached:
            return Calibration(**cached)
        pairs = session.calibration_pool()
        self.log(f"calibrating tau_high, tau_low, epsilon on {len(pairs)} pairs ...")
        return calibrate_thresholds(session.model, pairs, batch_size=c.batch_size, progress=self.progress,
                                    warn=lambda line: self.log(f"warning: {line}"))

    def _prior(self, session: RunSession):
        """The model's prior map, and for the beyond-prior criterion without a given delta its
        calibrated delta: from the store, or computed (``falsification.prior.model_prior``, as
        ``falsify test``'s) on ``prior_images`` calibration images that no tested pair uses.
        Returns ``(Prior, delta_info | None)``."""
        from ..falsification.prior import Prior, model_prior

        c, model, stored = self.config, session.model, session.stored
        want_delta = c.criterion_class.prior_calibrated == "delta" and c.delta == "calibrated"
        cached = stored["meta"].get("prior") if stored else None
        if cached and (cached.get("delta") or not want_delta):
            return Prior.from_dict(cached), cached.get("delta") if want_delta else None
        tested = {q for p in session.pairs for q in (p.a, p.b)}
        return model_prior(model, session.calibration_pool(), tested, session.fconfig, n_images=c.prior_images,
                           grid=c.prior_grid, batch_size=c.batch_size, delta=want_delta, seed=c.seed,
                           cached=Prior.from_dict(cached) if cached else None, log=self.log,
                           warn=lambda line: self.log(f"warning: {line}"))

    def _prepare(self, session: RunSession) -> None:
        """Once the folder is locked, when the experiment loads a model: the calibration, the
        model's decision threshold, the calibrated test, the prior (and delta), in float32 whatever
        the run's precision (``recheck.full_precision``); then the explainers."""
        c, model, experiment = self.config, session.model, self.experiment
        if model is None:
            return
        with full_precision(model):  # every verdict depends on the set-up: float32 under every precision
            explainers = self._prepare_setup(session)
        session.explainers, session.random_model = row_explainers(c, model, session.prior_map, explainers,
                                                                  with_random=experiment.needs_random_model)
        session.grid_ids = frozenset(p.id for p in session.grid_pairs())

    def _prepare_setup(self, session: RunSession) -> dict:
        """The calibration, the model's decision threshold, the calibrated test, the prior (and
        delta); returns the explainers of the run's methods but centre."""
        from ..attribution import get_explainer

        c, model, experiment = self.config, session.model, self.experiment
        session.calibration = self._calibration(session)
        #: the model's decision threshold (cosine): calibrated on the data, else the model's own; a
        #: model without one takes it (biometric-gradcam's and xssab's, here and on every Ray worker)
        session.threshold = adopt_threshold(model, session.calibration)
        explainers = {m: get_explainer(m, model, **c.method_options.get(m, {})) for m in c.methods if m != "centre"}
        session.fconfig = c.falsification_config(session.calibration)
        if c.needs_prior or experiment.needs_prior:
            session.prior, session.delta = self._prior(session)
        if session.delta is not None:
            session.fconfig = session.fconfig.replace(delta=session.delta["delta"])
        return explainers

    def _open(self, store: ResultsStore) -> None:
        """First writes: the settings (checked again under the lock), this invocation, the
        calibration and the prior."""
        c, session = self.config, self.session
        stored = session.stored
        if store.get_meta("settings") != (stored or {}).get("meta", {}).get("settings"):
            raise ValueError(f"{self.out} was changed by another run since it was checked; nothing was changed there")
        store.set_meta("settings", session.settings)  # new, or the same with the fingerprint of fixed images
        if session.model is None:  # a run of runs (6.4): each records its own environment, calibration, prior
            store.add_run(now(), c.experiment, c.to_dict(), {})
            return
        from ..models.base import model_device

        env = environment(model_device(session.model))
        other = sorted({r["environment"].get("opencv") for r in store.runs()} - {None, env["opencv"]})
        if other:
            self.log(f"warning: rows of {self.out} were made with OpenCV {', '.join(other)}, and this run uses "
                     f"{env['opencv']}: another build of the face detector aligns faces slightly differently, so "
                     "a verdict near its threshold can differ (docs/results.md, 'Across machines')")
        store.add_run(now(), c.experiment, c.to_dict(), env)
        if session.calibration is not None and store.get_meta("calibration") is None:
            store.set_meta("calibration", session.calibration.to_dict())
        if session.prior is not None and (store.get_meta("prior") is None or session.delta is not None):
            store.set_meta("prior", {**session.prior.to_dict(), "delta": session.delta})
        store.set_meta("falsification_config", session.fconfig.to_dict())
        if session.method_fingerprints:
            store.set_meta(METHOD_FINGERPRINTS, session.method_fingerprints)
        self.log(f"run directory: {self.out}")
        self.log(session.pairs.summary())
        if self.retry_errors:
            n = store.delete_errors(self.experiment.rows_of, session.model.name)
            self.log(f"retrying {n} error row{'s' * (n != 1)}")

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        """Check, claim (the executor connected, ``OUT`` locked), prepare, then the experiment's
        ``compute`` on the store and its ``write``; the executor and the lock are let go at the end."""
        started, t0 = now(), time.perf_counter()
        if self.executor is None:
            self.executor = make_executor(self.config)  # no ray: one line naming the fix, before any work
        opened, lock, store = False, None, None
        try:
            session = self._check(started, t0)
            opened = executor_open(self.executor, self.log)  # before any work: the executor, then OUT locked
            lock = RunLock(self.out).acquire()
            self.session = session
            self._prepare(session)  # the calibration and the prior, under the lock
            with space_guard(self.out, RESUMES):
                store = ResultsStore(self.out / "results.sqlite")
                try:
                    self._open(store)
                    summary = self.experiment.compute(session, store)
                finally:
                    store.close()
                self.experiment.write(session, summary)
        finally:
            if opened:
                self.executor.close()
            if lock is not None:  # stopped before its store existed: the lock's file and folder go too
                lock.release(clean=store is None)
        return summary
