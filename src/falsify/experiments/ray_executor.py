"""``falsify run --executor ray``: 6.1's rows on Ray actors (the ``ray`` extra).

One actor per worker (one CPU, ``threads`` torch threads), each loading the model once and
making the explainers from the run's settings; the driver hands every actor what the run fixed
before the first unit (:class:`~falsify.experiments.executor.RowContext`: the calibrated test
config, the prior map, the embeddings, the unreadable images, the other references), so no
worker calibrates. Units are (chunk of ``batch_pairs`` pairs, one method, or ``ig`` and
``geodesic-ig`` together: they share path points, see ``executor.method_units``), given to whichever
actor is idle; an actor returns a unit's rows and grid maps, and the driver writes them, so the
store has one writer and resuming works as in-process. When a worker dies (its process killed,
its node lost), its unit goes to a fresh actor, up to :data:`MAX_TRIES` times per unit; nothing
of a unit is written before all of it has come back.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Callable, Sequence

import ray
from ray.exceptions import RayActorError

from .executor import RowComputer, RowContext, Writer, method_units, row_explainers

#: tries of one unit (the first and those after a worker died on it)
MAX_TRIES = 3


@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class RowWorker:
    """A Ray actor computing units with its own copy of the model."""

    def __init__(self, ctx: RowContext, threads: int = 1) -> None:
        import torch

        from .runner import Runner

        torch.set_num_threads(threads)
        model = Runner(ctx.config, progress=False, log=lambda *a: None)._load_model()
        explainers, random_model = row_explainers(ctx.config, model, ctx.prior_map)
        self.computer = RowComputer(ctx, model, explainers, random_model)

    def pid(self) -> int:
        return os.getpid()

    def rows(self, chunk, methods, done) -> tuple[list, list]:
        rows, maps = [], []
        for r, m in self.computer.rows(chunk, methods, done):
            rows += r
            maps += m
        return rows, maps


class RayExecutor:
    """Units on Ray actors: ``address`` joins a running cluster (``auto``: the one this machine
    belongs to), else a local Ray instance with ``workers`` CPUs (default: this machine's) is
    started and shut down after the run; ``workers`` actors (default and at most: one per CPU of
    the cluster) of ``threads`` torch threads each. A Ray instance already running in this process is used as
    it is and left running.

    ``on_result(executor)`` is called after each unit's rows are written (tests use it, with
    :meth:`busy_pids`, to kill a worker mid-run); ``retried`` counts units given to a fresh
    worker after the one computing them died."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1,
                 on_result: Callable[["RayExecutor"], None] | None = None) -> None:
        self.address, self.workers, self.threads, self.on_result = address, workers, threads, on_result
        self.retried = 0
        self._actors: list = []
        self._pids: list = []
        self._busy: set[int] = set()

    def busy_pids(self) -> list[int]:
        """The process ids of the workers computing a unit now."""
        return [ray.get(self._pids[i]) for i in sorted(self._busy)]

    def _start(self, ctx_ref, i: int | None = None) -> int:
        actor = RowWorker.options(num_cpus=self.threads).remote(ctx_ref, self.threads)
        if i is None:
            self._actors.append(actor)
            self._pids.append(actor.pid.remote())
            return len(self._actors) - 1
        self._actors[i], self._pids[i] = actor, actor.pid.remote()
        return i

    def run(self, computer: RowComputer, chunks: Sequence, methods: Sequence[str], done, write: Writer,
            log=print) -> None:
        started = not ray.is_initialized()
        if started:
            kw = {"address": self.address} if self.address else {"num_cpus": (self.workers or os.cpu_count() or 1) * self.threads}
            ray.init(include_dashboard=False, logging_level="ERROR", **kw)
        try:
            slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
            if self.workers and self.workers > slots:  # more actors than CPUs would wait for them forever
                log(f"Ray has CPUs for {slots} worker{'s' * (slots != 1)}, not {self.workers}; using {slots}")
            n = min(self.workers or slots, slots)
            ctx_ref = ray.put(computer.ctx)
            units = deque(((chunk, ms), 1) for chunk in chunks for ms in method_units(methods)
                          if any((m, p.id) not in done for m in ms for p in chunk))
            n = min(n, len(units))
            log(f"Ray: {len(units)} units (chunk of pairs x method) on {n} worker{'s' * (n != 1)}")
            idle = [self._start(ctx_ref) for _ in range(n)]
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
                    idle.append(self._start(ctx_ref, i))
                    units.appendleft((unit, tries + 1))
                    continue
                write(rows, maps)
                idle.append(i)
                if self.on_result is not None:
                    self.on_result(self)
        finally:
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            self._actors, self._pids, self._busy = [], [], set()
            if started:
                ray.shutdown()
