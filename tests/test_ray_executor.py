"""``falsify run --executor ray``: the rows of an in-process run, a worker killed mid-run, resuming
an in-process store, and the one-line errors (no ray, Ray settings without the Ray executor)."""
from __future__ import annotations

import os
import signal
import sqlite3
import sys

import pytest

from falsify.cli import main
from falsify.experiments import RunConfig, Runner

from .test_experiments import _assert_close

# fixed thresholds skip calibration; cheap methods; 2 chunks of 2 pairs x 4 methods = 8 Ray units
SETTINGS = dict(methods=["gradcam", "saliency", "random", "occlusion"], method_options={"occlusion": {"window": 28,
                "stride": 28}}, n_pairs=4, seed=3, batch_pairs=2, grid_pairs=2, tau_high=0.2, tau_low=0.1,
                epsilon=0.05, preset="plain")
N_ROWS = 16


def _rows(out) -> list[tuple]:
    """What must not depend on the executor: verdict, distances, margins of every (method, pair)."""
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT method, pair, verdict, cosine, angle, d_high, d_low, sd_high, sd_low, margin, "
                         "d_prime, n_high, n_low FROM results ORDER BY method, pair").fetchall()


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for this module (the executor uses it and leaves it running)."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]' torch==2.13.0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(lfw_sample, tmp_path_factory):
    """The store of an in-process run of :data:`SETTINGS` (the reference rows)."""
    out = tmp_path_factory.mktemp("in-process") / "run"
    Runner(RunConfig(data=str(lfw_sample), out=str(out), **SETTINGS), progress=False, log=_quiet).run()
    return out


def test_killed_worker_then_rows_equal_in_process(lfw_sample, tmp_path, ray_local, in_process):
    from falsify.experiments.ray_executor import RayExecutor

    killed: list[int] = []

    def kill_a_busy_worker(ex: RayExecutor) -> None:
        """After the first unit's rows are written: SIGKILL a worker that is computing a unit."""
        if not killed:
            pids = ex.busy_pids()
            assert pids, "no worker was busy after the first unit came back"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    ex = RayExecutor(workers=2, on_result=kill_a_busy_worker)
    out = tmp_path / "ray"
    log: list[str] = []
    config = RunConfig(data=str(lfw_sample), out=str(out), executor="ray", workers=2, **SETTINGS)
    summary = Runner(config, progress=False, log=log.append, executor=ex).run()

    assert killed and ex.retried >= 1, (killed, ex.retried)
    assert any("a Ray worker died" in line for line in log), log
    rows = _rows(out)
    assert len(rows) == N_ROWS and len({(m, p) for m, p, *_ in rows}) == N_ROWS  # one row per (method, pair)
    _assert_close(rows, _rows(in_process))
    assert summary["n_rows"] == N_ROWS and (out / "summary.json").is_file()
    # the saliency grid's maps come back from the workers and are written by the driver
    assert sorted(p.relative_to(out) for p in (out / "maps").rglob("*.npy")) == \
        sorted(p.relative_to(in_process) for p in (in_process / "maps").rglob("*.npy"))


def test_ray_resumes_an_in_process_store(lfw_sample, tmp_path, ray_local, in_process):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(in_process, out)
    with sqlite3.connect(out / "results.sqlite") as c:  # as if the in-process run had been stopped
        n_deleted = c.execute("DELETE FROM results WHERE method IN ('saliency', 'occlusion') AND pair_index IN "
                              "(SELECT pair_index FROM results ORDER BY pair_index DESC LIMIT 1)").rowcount
        kept = c.execute("SELECT method, pair, verdict, d_high, seconds, created FROM results").fetchall()
    assert n_deleted == 2
    log: list[str] = []
    config = RunConfig(data=str(lfw_sample), out=str(out), executor="ray", workers=2, **SETTINGS)
    Runner(config, progress=False, log=log.append).run()
    assert f"{n_deleted} of {N_ROWS} (method, pair) rows to compute" in log
    assert any(line.startswith(f"Ray: {n_deleted} units") for line in log), log
    with sqlite3.connect(out / "results.sqlite") as c:
        after = c.execute("SELECT method, pair, verdict, d_high, seconds, created FROM results").fetchall()
    assert set(kept) <= set(after)  # stored rows are left as they were (same time stamps)
    _assert_close(_rows(out), _rows(in_process))


def test_ray_settings_need_the_ray_executor(lfw_sample, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"ray_address \(--ray-address\) is a setting of the Ray executor"):
        RunConfig(ray_address="auto")
    with pytest.raises(ValueError, match="--workers"):
        RunConfig(workers=2)
    with pytest.raises(ValueError, match="validity study computes its rows in-process"):
        RunConfig(experiment="validity", executor="ray")
    out = tmp_path / "run"
    assert main(["run", "6.1", "--data", str(lfw_sample), "--out", str(out), "--ray-address", "auto", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "add --executor ray" in err
    assert not out.exists()


def test_missing_ray_is_one_line_naming_the_fix(lfw_sample, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.delitem(sys.modules, "falsify.experiments.ray_executor", raising=False)
    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "2", "--methods", "random", "--out", str(out),
            "--executor", "ray", "-q", "--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("falsify run: error: --executor ray needs ray") and \
        err.endswith("pip install 'falsify[ray]' torch==2.13.0"), err
    assert not out.exists()  # refused before anything was loaded or written


def test_path_methods_share_a_unit():
    """ig and geodesic-ig of one model go to one worker together (geodesic-ig reads ig's path
    points); every other method, and the randomised model's path methods, apart."""
    from falsify.experiments.executor import method_units

    methods = ["gradcam", "ig", "geodesic-ig", "saliency", "ig@random-model", "geodesic-ig@random-model",
               "ig@other-reference", "geodesic-ig@other-reference"]
    assert method_units(methods) == [
        ["gradcam"], ["ig", "geodesic-ig", "ig@other-reference", "geodesic-ig@other-reference"], ["saliency"],
        ["ig@random-model", "geodesic-ig@random-model"]]
