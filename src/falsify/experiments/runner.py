"""``falsify run``: the resumable :class:`Runner` of 6.1's rows, one SQLite row per (method, pair).

Experiment 6.1 explains the probe image A of each pair against its reference f(B) with every
method and runs the falsification test on the map. Experiments that analyse the same tests
(6.2: by the pair's verification margin) extend it in their own module, so ``falsify run 6.2``
computes whatever 6.1 rows are missing and then adds its analysis; all read one store. The
settings are ``config.RunConfig``; resuming is decided in ``resume``; ``lock`` keeps one run per
folder; ``session.RunSession`` is what an experiment sees of the run.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..choices import THRESHOLD_METHODS
from ..data.pairs import Pair, PairSet
from ..models.base import model_device
from ..paths import check_writable, space_guard
from .analysis import summarise
from .config import RunConfig
from .executor import Rows61, executor_open, make_executor, row_explainers
from .lock import RunLock
from .resume import (FINGERPRINT, MODEL_FINGERPRINT, changed_settings, conflict_message, data_changes, default_out,
                     environment, model_fingerprints, now, settings_conflicts)
from .rows import load_run_model  # noqa: F401 - re-exported: the model of a run
from .session import RunSession, load_run_pairs
from .store import ResultsStore, inspect_store


#: The store's meta key of ``{method: sha256 of its file}`` for registered and imported methods.
METHOD_FINGERPRINTS = "method_fingerprints"

#: The experiment whose rows both 6.1 and 6.2 read.
ROWS_OF = "6.1"

#: What a run that ran out of space keeps (``falsify.paths.space_guard``).
RESUMES = "the rows already stored are kept, and rerunning the same command resumes"

def write_outputs(out, summary: dict, explanations=None) -> list[Path]:
    """summary.json, tables, figures and report.html in ``out`` (``registry.write_outputs``: the
    report is wired there, from the summary in memory)."""
    from .registry import write_outputs as write

    return write(out, summary, explanations)


def runner_for(config: RunConfig, **kw) -> "Runner":
    """The runner of ``config.experiment``, from its module (``falsify.experiments.registry``)."""
    from .registry import get

    return get(config.experiment).runner(config, **kw)


class Runner:
    """Runs one experiment into ``out``; ``run()`` returns the summary dict.

    Everything that can be wrong with the input (data, model, method options, output folder,
    settings of an existing store) is checked before the first write. Then, before any work, the
    executor is connected (Ray: a cluster that cannot be reached is a one-line error in seconds)
    and ``OUT/run.lock`` is taken (a second run into ``OUT`` is refused before it calibrates). The
    calibration and the prior are computed before the store is created, and a run that stops
    before its store exists removes the lock file and the folders the lock made, so a run that
    fails there leaves nothing behind.
    ``retry_errors`` deletes the error rows of the store so that they are computed again.
    ``executor`` computes 6.1's rows (``falsify.experiments.executor``; default: the one
    ``config.executor`` names); this runner stays the only writer of the store either way.
    """

    def __init__(self, config: RunConfig, progress: bool = True, log=print, retry_errors: bool = False,
                 executor=None) -> None:
        self.config = config
        self.progress = progress
        self.log = log
        self.retry_errors = retry_errors
        self.out = Path(config.out) if config.out else None
        #: who computes 6.1's rows (default: ``config.executor``'s, made when the run starts)
        self.executor = executor

    # -- set-up -----------------------------------------------------------------------------

    def _stored(self, settings: dict, pairs: PairSet) -> dict | None:
        """The existing store of ``out`` (read only), refused when its settings differ. Images that
        changed since the store was made are accepted only with ``retry_errors`` and only when
        every pair that uses them failed (an unreadable image, since fixed)."""
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
        if images and not pairs_changed and not changed_settings(have, settings):
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

    def _calibration_pool(self) -> PairSet:
        """The pairs the thresholds, the prior and delta are calibrated on: a seeded sample of
        ``calibrate_on``'s pairs when it is given, else of the run's own data."""
        from ..falsification.calibration import calibration_pairs

        c = self.config
        if getattr(self, "_pool", None) is None:
            data, pairs = (c.calibrate_on, None) if c.calibrate_on else (c.data, c.pairs)
            self._pool = calibration_pairs(data, pairs, n_pairs=c.calibration_pairs, seed=c.seed)
        return self._pool

    def _calibration(self, model, stored: dict | None):
        from ..falsification import Calibration, calibrate
        from ..falsification.calibration import spread_warning

        c = self.config
        if c.tau_high is not None:
            return None
        cached = stored["meta"].get("calibration") if stored else None
        if cached:
            return Calibration(**cached)
        pairs = self._calibration_pool()
        self.log(f"calibrating tau_high, tau_low, epsilon on {len(pairs)} pairs ...")
        cal = calibrate(model, pairs, batch_size=c.batch_size, progress=self.progress)
        warning = spread_warning(cal)
        if warning:
            self.log(f"warning: {warning}")
        return cal

    def falsification_config(self, calibration):
        return self.config.falsification_config(calibration)

    def _prior_image_batch(self, model, pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of the prior and of delta's calibration, and their partners' embeddings
        (``falsify.falsification.prior.prior_image_batch`` on the calibration pairs)."""
        from ..falsification.prior import prior_image_batch

        c = self.config
        tested = {q for p in pairs for q in (p.a, p.b)}
        images, refs = prior_image_batch(model, self._calibration_pool(), tested, c.prior_images,
                                         batch_size=c.batch_size)
        if images.shape[0] < c.prior_images:
            self.log(f"warning: the model's prior rests on {images.shape[0]} of the {c.prior_images} untested images "
                     "it is meant to average (--prior-images); add pairs of other photos, or --calibrate-on "
                     "another data set")
        return images, refs

    def _prior(self, model, stored: dict | None, pairs: PairSet, fconfig):
        """The model's prior map, and for the beyond-prior criterion without a given delta its
        calibrated delta: from the store, or computed on ``prior_images`` calibration images that
        no tested pair uses (the mean of their occlusion maps; the excess that maps knowing only
        the prior reach on them). Returns ``(Prior, delta_info | None)``."""
        from ..falsification.prior import Prior, calibrate_delta, occlusion_prior

        c = self.config
        want_delta = c.criterion_class.prior_calibrated == "delta" and c.delta == "calibrated"
        cached = stored["meta"].get("prior") if stored else None
        if cached and (cached.get("delta") or not want_delta):
            return Prior.from_dict(cached), cached.get("delta") if want_delta else None
        images, refs = self._prior_image_batch(model, pairs)
        if cached:
            prior = Prior.from_dict(cached)
        else:
            self.log(f"the model's prior map: mean occlusion map of {images.shape[0]} untested images ...")
            prior = occlusion_prior(model, images, grid=c.prior_grid, fill="blur", batch_size=c.batch_size)
        delta = None
        if want_delta:
            self.log("calibrating delta: the excess over the prior of maps that know only the prior ...")
            delta = calibrate_delta(model, images, prior.map(), fconfig, seed=c.seed, references=refs)
        return prior, delta

    # -- the loop ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Everything that reads or checks input, writing nothing: the pairs, the model, every
        method's options, the output folder and its store's settings, the calibration, the prior."""
        from ..attribution import get_explainer

        c = self.config
        self.labels = None
        if c.labels:  # 6.3's and 6.6's groups, --stratify: read (and checked) before anything is written
            from ..data.labels import load_labels

            self.labels = load_labels(c.labels)
        self.pairs = load_run_pairs(c, log=self.log)  # --n-pairs above what the data holds: one line
        self.model = model = load_run_model(c)
        self.model_name = model.name
        self.device = model_device(model)
        # every method's options checked now, before any work; a model without a decision threshold
        # of its own (a user's checkpoint, NAME:random) gets the calibrated one below
        placeholder = {"threshold": 0.0} if model.threshold is None and c.tau_high is None else {}
        for m in c.methods:
            if m != "centre":
                get_explainer(m, model, **{**(placeholder if m in THRESHOLD_METHODS else {}),
                                           **c.method_options.get(m, {})})
        # the model by its file's content (hashed once per process; the load above read the same file)
        self.settings = {**c.result_settings(), FINGERPRINT: self.pairs.fingerprint(),
                         MODEL_FINGERPRINT: model_fingerprints([c.model])}
        if self.out is None:
            self.out = default_out(c, self.settings)
        check_writable(self.out, "--out", folder=True)
        self.stored = self._stored(self.settings, self.pairs)
        self.method_fingerprints = self._method_fingerprints(self.stored)
        self._claim()  # the executor connected, OUT locked: from here on the run computes
        self.calibration = self._calibration(model, self.stored)
        #: the model's decision threshold (cosine): calibrated on the data, else the model's own
        self.threshold = self.calibration.threshold_cos if self.calibration is not None else model.threshold
        if model.threshold is None:
            model.threshold = self.threshold  # biometric-gradcam's and xssab's, here and on every Ray worker (RowContext)
        explainers = {m: get_explainer(m, model, **c.method_options.get(m, {})) for m in c.methods if m != "centre"}
        self.fconfig = self.falsification_config(self.calibration)
        self.prior, self.delta = self._prior(model, self.stored, self.pairs, self.fconfig) if c.needs_prior else (None, None)
        self.prior_map = self.prior.map() if self.prior is not None else None
        if self.delta is not None:
            self.fconfig = self.fconfig.replace(delta=self.delta["delta"])
        self.explainers, self.random_model = row_explainers(c, model, self.prior_map, explainers)
        self.grid_ids = {p.id for p in self._grid_pairs(self.pairs)}
        self.session = RunSession(c, self.out, self.pairs, model, self.fconfig, self.threshold, self.calibration,
                                  self.prior, self.explainers, self.random_model, self.labels, self.executor, self.log,
                                  self.progress, frozenset(self.grid_ids), self._save_map,
                                  model_sha256=self.settings[MODEL_FINGERPRINT][c.model])

    def _open(self, store: ResultsStore) -> None:
        """First writes: the settings (checked again under the lock), this invocation, the
        calibration and the prior."""
        c = self.config
        if store.get_meta("settings") != (self.stored or {}).get("meta", {}).get("settings"):
            raise ValueError(f"{self.out} was changed by another run since it was checked; nothing was changed there")
        store.set_meta("settings", self.settings)  # new, or the same with the fingerprint of fixed images
        env = environment(self.device)
        other = sorted({r["environment"].get("opencv") for r in store.runs()} - {None, env["opencv"]})
        if other:
            self.log(f"warning: rows of {self.out} were made with OpenCV {', '.join(other)}, and this run uses "
                     f"{env['opencv']}: another build of the face detector aligns faces slightly differently, so "
                     "a verdict near its threshold can differ (docs/results.md, 'Across machines')")
        store.add_run(now(), c.experiment, c.to_dict(), env)
        if self.calibration is not None and store.get_meta("calibration") is None:
            store.set_meta("calibration", self.calibration.to_dict())
        if self.prior is not None and (store.get_meta("prior") is None or self.delta is not None):
            store.set_meta("prior", {**self.prior.to_dict(), "delta": self.delta})
        store.set_meta("falsification_config", self.fconfig.to_dict())
        if self.method_fingerprints:
            store.set_meta(METHOD_FINGERPRINTS, self.method_fingerprints)
        self.log(f"run directory: {self.out}")
        self.log(self.pairs.summary())
        if self.retry_errors:
            n = store.delete_errors(self.rows_of, self.model.name)
            self.log(f"retrying {n} error row{'s' * (n != 1)}")

    #: the experiment key of the rows this runner computes
    rows_of = ROWS_OF

    def _claim(self) -> None:
        """The last step of :meth:`_setup` before any work (the calibration, the prior, the rows):
        the executor connected and checked (Ray: the cluster reached and its CPUs counted, in
        seconds; nothing is written), then ``OUT/run.lock`` taken, so a second run into ``OUT``
        is refused before it computes anything. :meth:`run` undoes both at its end."""
        self._opened = executor_open(self.executor, self.log)
        self._lock = RunLock(self.out).acquire()

    def run(self) -> dict:
        started = now()
        t0 = time.perf_counter()
        if self.executor is None:
            self.executor = make_executor(self.config)  # no ray: one line naming the fix, before any work
        self._opened, self._lock, store = False, None, None
        try:
            self._setup()  # checks, then the executor and the lock (_claim), then the calibration and the prior
            with space_guard(self.out, RESUMES):
                store = ResultsStore(self.out / "results.sqlite")
                try:
                    self._open(store)
                    summary = self._compute(store, started, t0)
                finally:
                    store.close()
                self._write(summary)
        finally:
            if self._opened:
                self.executor.close()
            if self._lock is not None:  # stopped before its store existed: the lock's file and folder go too
                self._lock.release(clean=store is None)
        return summary

    def _write(self, summary: dict) -> None:
        explanations = self._grid_explanations(self.model, self.pairs)
        write_outputs(self.out, summary, explanations)

    def _compute(self, store: ResultsStore, started: str, t0: float) -> dict:
        c, pairs, model, session = self.config, self.pairs, self.model, self.session
        session.compute_rows(store, Rows61(session.context(self.rows_of), self.rows_of))
        summary = summarise(store, c, pairs, model.name, self.threshold, elapsed_s=None, started=started)
        summary["alignment"] = self._alignment(pairs)
        from .truth_table import for_summary

        summary["test_validity"] = for_summary(summary)  # the known-truth benchmark's rates for this test
        from .registry import get

        get(c.experiment).extend(session, store, summary)  # 6.2, 6.5, ...: their analysis (and rows) on 6.1's
        summary["elapsed_s"] = time.perf_counter() - t0
        n_err = summary["n_errors"]
        if n_err:
            self.log(f"{n_err} error row{'s' * (n_err != 1)} (see the summary); after fixing the cause, rerun "
                     "with --retry-errors to compute them again")
        return summary

    def _alignment(self, pairs: PairSet) -> dict:
        """The alignment of the run's images: the template, and the photos in which no face was
        found (resized instead), from the landmark cache (detected only if never seen)."""
        aligner = self.model.aligner
        if aligner is None:
            return {"template": None}
        survey = aligner.survey(sorted({q for p in pairs for q in (p.a, p.b)}))
        if survey["no_face_found"]:
            self.log(f"alignment: no face found in {survey['no_face_found']} of {survey['images']} images; they "
                     f"were resized instead (e.g. {survey['no_face_examples'][0]})")
        return {"template": aligner.template, **survey}

    def _grid_pairs(self, pairs: PairSet) -> list[Pair]:
        """The pairs of the saliency-grid figure: the first genuine and impostor pairs, half each."""
        n = self.config.grid_pairs
        gen = [p for p in pairs if p.same][: (n + 1) // 2]
        imp = [p for p in pairs if not p.same][: max(0, n - len(gen))]
        return gen + imp

    def _save_map(self, method: str, pair: Pair, m: torch.Tensor) -> None:
        path = self.out / "maps" / f"{pair.index}" / f"{method}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        import numpy as np

        np.save(path, m.detach().cpu().numpy().astype(np.float16))

    def _grid_explanations(self, model, pairs: PairSet):
        """(pair, PairExplanation with the stored maps of A) for the saliency-grid figure."""
        import numpy as np

        from ..data import load_image
        from ..report.explain import PairExplanation

        out = []
        for p in self._grid_pairs(pairs):
            folder = self.out / "maps" / f"{p.index}"
            maps = {m: torch.from_numpy(np.load(folder / f"{m}.npy").astype(np.float32))
                    for m in self.config.methods if (folder / f"{m}.npy").is_file()}
            if len(maps) != len(self.config.methods):
                continue
            try:
                a, b = (load_image(q, model.input_size, model.aligner) for q in (p.a, p.b))
            except ValueError:
                continue
            with torch.inference_mode():
                e = model(torch.stack([a, b]).to(model_device(model))).cpu()
            from ..geometry import cosine_similarity, geodesic_distance

            out.append((p, PairExplanation(a, b, float(cosine_similarity(e[0], e[1])),
                                           float(geodesic_distance(e[0], e[1])), maps_a=maps)))
        return out or None
