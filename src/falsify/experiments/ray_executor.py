"""``falsify run --executor ray``: an experiment's rows on Ray actors (the ``ray`` extra).

One actor per worker (one CPU, ``threads`` torch threads), each loading the model once and
making the computer of the run's row kind (``executor.RowKind``) with it; the driver hands every
actor the kind, which holds what the run fixed before the first unit
(:class:`~falsify.experiments.executor.RowContext`: the calibrated test config, the prior map,
the embeddings, the unreadable images, the other references), so no worker calibrates. Units
are (chunk of ``batch_pairs`` pairs, one group of the kind's keys: for 6.1 one method, or ``ig``
and ``geodesic-ig`` together since they share path points, ``rise`` and ``rise-dissimilarity``
since they share masked forward passes, see ``executor.method_units``), the
same units an in-process run computes, given to whichever actor is idle; an actor returns a unit's rows and grid maps, and the driver writes them, so the
store has one writer and resuming works as in-process. When a worker dies (its process killed,
its node lost), its unit goes to a fresh actor, up to :data:`MAX_TRIES` times per unit; nothing
of a unit is written before all of it has come back.

The runner connects the executor (:meth:`RayExecutor.open`) before any work and before ``OUT``
is touched: a cluster that cannot be reached is a one-line ``ConnectionError`` within seconds,
and ``--workers`` is capped at the CPUs Ray has, with a line that says so. Ray's own log lines
(its C++ warnings on stderr, its Python logger, the workers' output) stay out of the terminal
unless ``verbose`` (``falsify run --verbose``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import deque
from typing import Callable, Sequence

import ray
from ray.exceptions import RayActorError

from .reach import check_reachable
from .rows import RowKind, Unit, Writer

#: tries of one unit (the first and those after a worker died on it)
MAX_TRIES = 3


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def quiet_stderr(quiet: bool = True):
    """Everything written to file descriptor 2 inside the block (Ray's C++ warnings, which
    bypass ``sys.stderr``) goes to a discarded file when ``quiet``."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _mute_error_lines():
    """Keep the error lines that Ray pushes to the driver (``(raylet) A worker died ...``: its
    ``listen_error_messages`` thread prints them whatever ``log_to_driver`` says) out of the
    terminal; the run says what it does about them in its own line. Returns what
    :func:`_unmute_error_lines` restores (None when this Ray has no such printer)."""
    worker = sys.modules.get("ray._private.worker")
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        return None
    worker.print_to_stdstream = lambda *args, **kw: None
    return original


def _unmute_error_lines(original) -> None:
    if original is not None:
        sys.modules["ray._private.worker"].print_to_stdstream = original


@contextlib.contextmanager
def _keep_sigterm_handler():
    """``ray.init`` makes SIGTERM exit the driver (``sys.exit``); the handler the process had is
    put back, so that ``falsify run`` stopped by SIGTERM cleans up as on Ctrl-C (its lock and
    folder, Ray shut down by the executor's ``close``)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class RowWorker:
    """A Ray actor computing units with its own copy of the model."""

    def __init__(self, kind: RowKind, threads: int = 1, door: dict | None = None) -> None:
        import torch

        from .rows import load_run_model

        torch.set_num_threads(threads)
        self.door = door
        if door:  # the driver's registered methods, and its import path for module.path:callable methods
            from ..attribution import register_method

            sys.path.extend(p for p in door["sys_path"] if p not in sys.path)
            for name, method in door["registered"].items():
                register_method(name, method)
        model = load_run_model(kind.ctx.config)
        if model.threshold is None:  # as the driver: the calibrated threshold (Runner._prepare)
            model.threshold = kind.ctx.threshold
        self.computer = kind.computer(model)
        #: the sha256 of the model file this worker loaded (the driver checks it against the run's)
        self.sha256 = None
        if getattr(kind.ctx, "model_sha256", None) is not None:
            from ..models import model_sha256

            self.sha256 = model_sha256(kind.ctx.config.model)
        self._checked = False
        self._methods = getattr(kind.ctx.config, "methods", [])

    def pid(self) -> int:
        return os.getpid()

    def model_sha256(self) -> str | None:
        return self.sha256

    def check_methods(self) -> None:
        """A method this worker imported from a file other than the driver's (another node, a file
        changed since the run started) is refused: its rows would be mixed with the driver's."""
        if self._checked or not self.door:
            return
        from ..attribution import method_fingerprints

        here = method_fingerprints(self._methods)
        for name, sha in self.door["fingerprints"].items():
            if here.get(name) != sha:
                raise ValueError(f"method {name!r}: the file a Ray worker imported differs from the driver's "
                                 f"(sha256 {str(here.get(name))[:12]} vs {sha[:12]}); give every node the same file")
        self._checked = True

    def rows(self, chunk, methods, done) -> tuple[list, list]:
        self.check_methods()
        rows, maps = [], []
        for r, m in self.computer.rows(chunk, methods, done):
            rows += r
            maps += m
        return rows, maps


def method_door(config) -> dict:
    """What a worker needs to build the run's methods as the driver did: the methods registered in
    this process (``register_method``), this process's ``sys.path`` (where ``module.path:callable``
    methods were imported from) and the sha256 of each such method's file."""
    from ..attribution import method_fingerprints, registered_methods

    return {"registered": registered_methods(), "sys_path": list(sys.path),
            "fingerprints": method_fingerprints(getattr(config, "methods", []))}


class RayExecutor:
    """Units on Ray actors: ``address`` joins a running cluster (``auto``: the one this machine
    belongs to), else a local Ray instance with one CPU per worker (default and at most: this
    machine's CPUs) is started, and shut down when the executor is closed; ``workers`` actors
    (default and at most: one per CPU Ray has) of ``threads`` torch threads each. A Ray instance
    already running in this process is used as it is and left running.

    :meth:`open` connects (the runner calls it before any work; :meth:`run` calls it when the
    runner did not) and :meth:`close` shuts down what ``open`` started. ``verbose``: Ray's own
    log lines are shown (by default they are kept out of the terminal). ``on_result(executor)``
    is called after each unit's rows are written (tests use it, with :meth:`busy_pids`, to kill a
    worker mid-run); ``retried`` counts units given to a fresh worker after the one computing
    them died."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1,
                 on_result: Callable[["RayExecutor"], None] | None = None, verbose: bool = False) -> None:
        self.address, self.workers, self.threads, self.on_result = address, workers, threads, on_result
        self.verbose = verbose
        self.retried = 0
        #: the actors a run starts (at most), fixed by :meth:`open`
        self.n_workers: int | None = None
        self._started = False  # open() started Ray (close() shuts it down)
        self._muted = None  # Ray's printer of error lines, while open() keeps them quiet
        self._actors: list = []
        self._pids: list = []
        self._shas: list = []  # each actor's model_sha256(), as a Ray reference
        self._busy: set[int] = set()
        self._door: dict | None = None  # method_door() of the run, for each actor

    def open(self, log=print) -> bool:
        """Connect to Ray and check it, before anything is computed or written: a cluster at
        ``address`` that does not answer is a one-line ``ConnectionError`` within seconds (a TCP
        connection first, then Ray's own short waits: ``reach.RAY_JOIN_ENV``), one without
        CPUs a ``ValueError``; ``workers`` above the CPUs Ray has is capped, with a line. True
        when this call connected (False: already open)."""
        if self.n_workers is not None:
            return False
        slots_here = max(1, machine_cpus() // self.threads)
        if not ray.is_initialized():
            if self.address:
                check_reachable(self.address)
                kw = {"address": self.address}
            else:  # one CPU per worker, no more workers than this machine has CPUs
                kw = {"num_cpus": min(self.workers or slots_here, slots_here) * self.threads}
            with quiet_stderr(not self.verbose), _keep_sigterm_handler():
                try:
                    ray.init(include_dashboard=False, logging_level="INFO" if self.verbose else "ERROR",
                             log_to_driver=self.verbose, **kw)
                except Exception as exc:  # noqa: BLE001 - one line, whatever Ray raised
                    with contextlib.suppress(Exception):
                        ray.shutdown()
                    if self.address:
                        raise ConnectionError(f"cannot join Ray at {self.address} (--ray-address): "
                                              f"{_first_line(exc)}; is it a Ray head node's address (its GCS "
                                              "port, 6379 by default), with the same Ray version as here?") from None
                    raise RuntimeError(f"could not start Ray on this machine: {_first_line(exc)} (falsify run "
                                       "--verbose shows Ray's log)") from exc
            self._started = True
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            if cpus < self.threads:
                raise ValueError(f"the Ray cluster{f' at {self.address}' if self.address else ''} has {cpus} CPUs; "
                                 f"a worker needs {self.threads}: add nodes with CPUs (ray start --address ...)")
        except BaseException:
            self._shutdown()
            raise
        slots = cpus // self.threads
        if self.workers and self.workers > slots:  # more actors than CPUs would wait for them forever
            here = self._started and not self.address  # started here: Ray got no more CPUs than the machine's
            who, have = ("this machine", machine_cpus()) if here else ("Ray", cpus)
            each = "at most one per CPU" if self.threads == 1 else f"{self.threads} CPUs each"
            log(f"--workers {self.workers}: {who} has {have} CPU{'s' * (have != 1)}, so {slots} "
                f"worker{'s' * (slots != 1)} ({each})")
        self.n_workers = min(self.workers or slots, slots)
        if not self.verbose:
            self._muted = _mute_error_lines()
        return True

    def close(self) -> None:
        """Shut down the Ray instance :meth:`open` started (one it joined or found is left running)."""
        self.n_workers = None
        _unmute_error_lines(self._muted)
        self._muted = None
        self._shutdown()

    def _shutdown(self) -> None:
        if self._started:
            with quiet_stderr(not self.verbose):
                ray.shutdown()
            self._started = False

    def busy_pids(self) -> list[int]:
        """The process ids of the workers computing a unit now."""
        return [ray.get(self._pids[i]) for i in sorted(self._busy)]

    def _start(self, kind_ref, i: int | None = None) -> int:
        actor = RowWorker.options(num_cpus=self.threads).remote(kind_ref, self.threads, self._door)
        if i is None:
            self._actors.append(actor)
            self._pids.append(actor.pid.remote())
            self._shas.append(actor.model_sha256.remote())
            return len(self._actors) - 1
        self._actors[i], self._pids[i], self._shas[i] = actor, actor.pid.remote(), actor.model_sha256.remote()
        return i

    def _check_weights(self, kind: RowKind, i: int) -> None:
        """Refuse the rows of worker ``i`` when it loaded other weights than the run started with
        (the model file was replaced at its path while the run was going)."""
        want = getattr(kind.ctx, "model_sha256", None)
        if want is None:
            return
        got = ray.get(self._shas[i])
        if got != want:
            short = "none" if got is None else got[:12]
            raise ValueError(f"{kind.ctx.config.model}: the model file was replaced while the run was going (sha256 "
                             f"{want[:12]} when it started, {short} on a Ray worker); that worker's rows were not "
                             "written, the rows already stored are kept. Put the first file back and rerun to resume, "
                             "or start a new folder for the new weights (--out NEW)")

    def run(self, kind: RowKind, computer, units: Sequence[Unit], done, write: Writer, log=print) -> None:
        """``units`` of ``kind`` on the actors (``computer``, the driver's, is not used: each actor
        makes its own); ``write`` gets each unit's rows and maps once all of them came back."""
        opened = self.open(log)
        try:
            n = self.n_workers
            kind_ref = ray.put(kind)
            self._door = method_door(kind.ctx.config)
            units = deque(((list(chunk), list(ms)), 1) for chunk, ms in units)
            n = min(n, len(units))
            log(f"Ray: {len(units)} units (chunk of pairs x keys) on {n} worker{'s' * (n != 1)}")
            idle = [self._start(kind_ref) for _ in range(n)]
            in_flight: dict = {}  # ref -> (worker, unit, tries)
            while units or in_flight:
                while units and idle:
                    i = idle.pop(0)
                    (chunk, ms), tries = units.popleft()
                    sub = {(m, p.id) for m in ms for p in chunk if (m, p.id) in done}
                    in_flight[self._actors[i].rows.remote(chunk, ms, sub)] = (i, (chunk, ms), tries)
                    self._busy.add(i)
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                i, unit, tries = in_flight.pop(ref)
                self._busy.discard(i)
                try:
                    rows, maps = ray.get(ref)
                except RayActorError as exc:
                    if tries >= MAX_TRIES:
                        raise RuntimeError(f"Ray workers died {tries} times computing {unit[1][0]} on "
                                           f"{len(unit[0])} pairs; last: {exc}") from None
                    self.retried += 1
                    log(f"a Ray worker died ({type(exc).__name__}); its unit ({unit[1][0]}, {len(unit[0])} pairs) "
                        "goes to a fresh worker")
                    ray.kill(self._actors[i], no_restart=True)
                    idle.append(self._start(kind_ref, i))
                    units.appendleft((unit, tries + 1))
                    continue
                self._check_weights(kind, i)
                write(rows, maps)
                idle.append(i)
                if self.on_result is not None:
                    self.on_result(self)
        finally:
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            self._actors, self._pids, self._shas, self._busy = [], [], [], set()
            if opened:
                self.close()
