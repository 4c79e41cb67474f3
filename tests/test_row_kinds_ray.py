"""Every experiment's own rows (6.3, 6.5, 6.6, the validity study, the known-truth benchmark) go through the executor layer:
on ``--executor ray``, with a worker killed in the middle of one of that experiment's units, the
store holds exactly the rows of an in-process run (same keys; verdicts equal, numbers within
1e-5), each once.

The worker is killed from inside the unit (:class:`DiesOnce`: the first unit of the experiment's
kind that a Ray worker starts SIGKILLs its own process), so the kill lands mid-unit however fast
the units are. The model is a small CNN (``TinyNet``) so that each run takes seconds.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import torch

from falsify.experiments import RunConfig, runner_for
from falsify.experiments.rows import RowKind

from .conftest import TinyNet
from .test_experiments import _assert_close

ROOT = Path(__file__).resolve().parents[1]
LABELS = Path(os.environ.get("FALSIFY_SHARED_DATA", ROOT.parent / "shared" / "data")) / "lfw-labels"


class DiesOnce(RowKind):
    """``inner`` (a row kind), except that the first of its units that a Ray worker starts kills
    that worker (``marker``: a file made just before, so it happens once in the run)."""

    def __init__(self, inner: RowKind, marker: str) -> None:
        super().__init__(inner.ctx)
        self.inner, self.marker, self.rows_of, self.unit_name = inner, marker, inner.rows_of, inner.unit_name

    def keys(self):
        return self.inner.keys()

    def groups(self, keys):
        return self.inner.groups(keys)

    def describe(self, *args):
        return self.inner.describe(*args)

    def computer(self, model, explainers=None, random_model=None):
        return _Dying(self.inner.computer(model, explainers, random_model), self.marker)


class _Dying:
    def __init__(self, inner, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def rows(self, chunk, keys, done):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            yield from self.inner.rows(chunk, keys, done)
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_here():
    """A local Ray instance with 2 CPUs whose workers can import this test package (for
    :class:`DiesOnce` and the pickled ``TinyNet``)."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]' torch==2.13.0")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), *([saved] if saved else [])])
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(TinyNet(), path)
    return path


def _settings(experiment: str, data, model, out) -> dict:
    base = dict(experiment=experiment, data=str(data), model=str(model), input_size=[32, 32], trust_pickle=True,
                n_pairs=4, batch_pairs=2, grid_pairs=0, device="cpu", out=str(out), seed=1)
    fixed = dict(preset="plain", tau_high=0.05, tau_low=0.03, epsilon=0.01)
    if experiment == "6.3":
        return {**base, **fixed, "methods": ["gradcam", "saliency", "random"]}
    if experiment == "6.5":
        return {**base, **fixed, "methods": ["gradcam", "random"], "K": 2}
    if experiment == "6.6":
        return {**base, **fixed, "methods": ["gradcam", "biometric-gradcam", "random"],
                "method_options": {"biometric-gradcam": {"threshold": 0.5}}}
    if experiment == "known-truth":
        return {**base, "prior_images": 4, "prior_grid": 5, "calibration_pairs": 40, "methods": ["saliency"]}
    return {**base, "K": 2, "prior_images": 4, "prior_grid": 5, "calibration_pairs": 40, "methods": ["ig"],
            "method_options": {"ig": {"steps": 8, "tolerance": None}}}


def _rows(out: Path, experiment: str) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT method, pair, verdict, d_high, d_low, margin, error, detail FROM results "
                         "WHERE experiment = ? ORDER BY method, pair", (experiment,)).fetchall()
    return [(*r[:-1], json.loads(r[-1]) if r[-1] else None) for r in rows]


@pytest.mark.parametrize("experiment", ["6.3", "6.5", "6.6", "validity", "known-truth"])
def test_killed_worker_then_rows_equal_in_process(experiment, lfw_sample, tiny_model, tmp_path, ray_here,
                                                  monkeypatch):
    from falsify.experiments.ray_executor import RayExecutor
    from falsify.experiments.session import RunSession

    rows_of = experiment
    quiet = lambda *a: None  # noqa: E731
    here = tmp_path / "in-process"
    runner_for(RunConfig(**_settings(experiment, lfw_sample, tiny_model, here)), progress=False, log=quiet).run()

    marker = tmp_path / "killed.pid"
    real = RunSession.compute_rows

    def compute_rows(self, store, kind):
        return real(self, store, DiesOnce(kind, str(marker)) if kind.rows_of == rows_of else kind)

    monkeypatch.setattr(RunSession, "compute_rows", compute_rows)
    out = tmp_path / "ray"
    log: list[str] = []
    ex = RayExecutor(workers=2)
    config = RunConfig(**_settings(experiment, lfw_sample, tiny_model, out), executor="ray", workers=2)
    runner_for(config, progress=False, log=log.append, executor=ex).run()

    assert marker.is_file() and ex.retried >= 1, (marker.is_file(), ex.retried)
    assert any("a Ray worker died" in line for line in log), log
    got, want = _rows(out, rows_of), _rows(here, rows_of)
    assert got and len({(m, p) for m, p, *_ in got}) == len(got)  # one row per (key, pair)
    assert [r[:3] for r in got] == [r[:3] for r in want]  # the same keys and verdicts
    _assert_close(got, want, tol=1e-5)
