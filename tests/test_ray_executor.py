"""``falsify run --executor ray``: the rows of an in-process run, a worker killed mid-run, resuming
an in-process store, the one-line errors (no ray, Ray settings without the Ray executor), a
cluster that cannot be reached (refused in seconds, before anything is computed or written,
without Ray's log lines), and ``--workers`` above the CPUs Ray has (capped, with a line)."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from falsify.cli import main
from falsify.experiments import RunConfig, runner_for

from .test_experiments import _assert_close

# fixed thresholds skip calibration; cheap methods; 2 chunks of 2 pairs x 4 methods = 8 Ray units
SETTINGS = dict(methods=["gradcam", "saliency", "random", "occlusion"], method_options={"occlusion": {"window": 28,
                "stride": 28}}, n_pairs=4, seed=3, batch_pairs=2, grid_pairs=2, tau_high=0.2, tau_low=0.1,
                epsilon=0.05, preset="plain", ceiling=False)
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
    runner_for(RunConfig(data=str(lfw_sample), out=str(out), **SETTINGS), progress=False, log=_quiet).run()
    return out


def test_killed_worker_then_rows_equal_in_process(lfw_sample, tmp_path, ray_local, in_process, capfd):
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
    summary = runner_for(config, progress=False, log=log.append, executor=ex).run()

    assert killed and ex.retried >= 1, (killed, ex.retried)
    assert any("a Ray worker died" in line for line in log), log
    shown = "".join(capfd.readouterr())
    assert "A worker died" not in shown and "(raylet)" not in shown, shown  # Ray's own line: kept quiet
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
    runner_for(config, progress=False, log=log.append).run()
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
    assert RunConfig(experiment="validity", executor="ray").executor == "ray"  # every experiment's rows run on Ray
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
    # the two RISE maps of one model read the same masked forward passes: one unit too
    assert method_units(["rise", "saliency", "rise-dissimilarity", "rise@random-model",
                         "rise-dissimilarity@random-model"]) == [
        ["rise", "rise-dissimilarity"], ["saliency"], ["rise@random-model", "rise-dissimilarity@random-model"]]


# --- a cluster that cannot be reached, and more workers than CPUs ----------------------------------

def _falsify(argv, timeout=120) -> tuple[subprocess.CompletedProcess, float]:
    """``falsify ARGV`` in a fresh process (Ray's C++ log lines go to file descriptor 2, which
    only another process shows), and its wall time."""
    import falsify

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(falsify.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for key in [k for k in env if k.startswith("RAY_")]:  # Ray's own settings as a user's shell has them
        del env[key]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "falsify.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return proc, time.perf_counter() - t


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused_quietly(proc, out: Path, seconds: float, limit: float, match: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("falsify run: error: ") and "\n" not in err, err  # one line: no Ray log lines
    assert match in err, err
    assert proc.stdout == "", proc.stdout  # nothing else either: no "calibrating ...", no Ray lines
    assert not out.exists()  # nothing written in --out (nor the folder made)
    assert seconds < limit, seconds


def test_unreachable_ray_address_fails_fast_writes_nothing_prints_no_ray_lines(lfw_sample, tmp_path):
    """The issue's case (a cluster that is not there), on a closed loopback port: no thresholds
    given, so the run would calibrate first if Ray were checked late."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]' torch==2.13.0")
    out = tmp_path / "run"
    address = f"127.0.0.1:{_closed_port()}"
    proc, seconds = _falsify(["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "4", "--methods", "random",
                              "--executor", "ray", "--ray-address", address, "--out", str(out), "-q"])
    _refused_quietly(proc, out, seconds, 30, f"cannot reach Ray at {address} (--ray-address)")


def test_a_port_that_answers_but_is_not_ray_fails_within_seconds(lfw_sample, tmp_path):
    """A port that accepts connections and never answers: Ray's own waits (about 14 minutes and
    dozens of warnings by default) are cut short (``executor.RAY_JOIN_ENV``) and kept quiet."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]' torch==2.13.0")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        out = tmp_path / "run"
        proc, seconds = _falsify(["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "4", "--methods", "random",
                                  "--executor", "ray", "--ray-address", address, "--out", str(out), "-q"])
    _refused_quietly(proc, out, seconds, 60, f"cannot join Ray at {address} (--ray-address)")


def test_an_address_that_does_not_answer_times_out():
    """A listening socket whose accept queue is full drops new connections, as an unreachable
    host does: refused after the timeout, not after Ray's minutes of retries."""
    from falsify.experiments.executor import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = []
        for _ in range(4):  # fill the accept queue (nobody accepts)
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            queued.append(c)
        t = time.perf_counter()
        with pytest.raises(ConnectionError, match=f"cannot reach Ray at 127.0.0.1:{port} "):
            check_reachable(f"127.0.0.1:{port}", timeout=0.5)
        assert time.perf_counter() - t < 5
        for c in queued:
            c.close()
    with pytest.raises(ConnectionError, match="Connection refused"):
        check_reachable(f"ray://127.0.0.1:{_closed_port()}")
    check_reachable("auto")  # resolved by Ray itself


def test_workers_above_the_cpus_ray_has_are_capped_with_a_line(ray_local):
    from falsify.experiments.ray_executor import RayExecutor

    log: list[str] = []
    ex = RayExecutor(workers=5)
    assert ex.open(log.append) is True and ex.open(log.append) is False  # the second: already open
    assert log == ["--workers 5: Ray has 2 CPUs, so 2 workers (at most one per CPU)"]
    assert ex.n_workers == 2
    ex.close()
    assert ray_local.is_initialized()  # a Ray instance found running is left running
    log.clear()
    ex = RayExecutor(workers=2)
    ex.open(log.append)
    assert ex.n_workers == 2 and log == []
    ex.close()


def test_a_local_ray_gets_no_more_cpus_than_the_machine(tmp_path):
    """``--workers 100`` on a 1-CPU machine (the CPU count patched): Ray is started with 1 CPU,
    not 100, and the line says so."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'falsify[ray]' torch==2.13.0")
    import falsify

    code = ("import ray\n"
            "from falsify.experiments import ray_executor as rx\n"
            "rx.machine_cpus = lambda: 1\n"
            "ex = rx.RayExecutor(workers=100)\n"
            "ex.open(print)\n"
            "print('cpus', ray.cluster_resources()['CPU'], 'workers', ex.n_workers, flush=True)\n"
            "ex.close()\n"
            "print('running', ray.is_initialized())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(falsify.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["--workers 100: this machine has 1 CPU, so 1 worker (at most one per CPU)",
                                        "cpus 1.0 workers 1", "running False"], proc.stdout
    assert proc.stderr == "", proc.stderr  # Ray's start and shutdown print nothing
