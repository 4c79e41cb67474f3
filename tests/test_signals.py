"""`falsify run` stopped by SIGTERM or SIGHUP (``timeout``, ``docker stop``, batch schedulers, a
closed terminal) cleans up as Ctrl-C does: before the store exists nothing is left; after, the
rows stay and the same command resumes without duplicates; one line says which (issue 26)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import signal_when, stored_rows

FIXED = ["--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05", "--preset", "plain"]
SIGNALS = [signal.SIGTERM, signal.SIGHUP]


def _argv(lfw, out, n_pairs="6", extra=()):
    return ["run", "6.1", "--data", str(lfw), "--n-pairs", n_pairs, "--methods", "saliency,random", "--out",
            str(out), "--batch-pairs", "1", "--seed", "1", "-q", "--no-ceiling", *extra]


def _start(argv):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "falsify.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop_on_line(proc, text: str, sig) -> None:
    """Send ``sig`` as soon as the run prints a line holding ``text`` (its stage has begun)."""
    for line in proc.stdout:
        if text in line:
            proc.send_signal(sig)
            return
    raise AssertionError(f"the run ended before printing {text!r}: {proc.stderr.read()}")


def _stop_when(proc, ready, sig, timeout=300) -> None:
    if not signal_when(proc, ready, sig, timeout):
        raise AssertionError(f"the run ended before the stage was reached: {proc.stderr.read()}")


def _ended(proc, sig) -> str:
    """The one line the stopped run printed on stderr (its exit status checked)."""
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0], err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stopped_during_set_up_leaves_nothing(lfw_sample, tmp_path, sig):
    """Set-up (the data read, the model loading): the pair-count line is the first one a run
    prints, before the model is loaded and the folder locked."""
    out = tmp_path / "run"
    proc = _start(_argv(lfw_sample, out, n_pairs="100000", extra=FIXED))
    _stop_on_line(proc, "asks for more pairs than there are", sig)
    line = _ended(proc, sig)
    assert "before any row was stored" in line and "rerun the same command to start again" in line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, stage", [(signal.SIGTERM, "calibrating tau_high"),
                                        (signal.SIGHUP, "calibrating tau_high"),
                                        (signal.SIGTERM, "the model's prior map")],
                         ids=["SIGTERM", "SIGHUP", "SIGTERM-prior"])
def test_stopped_during_the_calibration_of_a_new_run_leaves_no_folder(lfw_sample, tmp_path, sig, stage):
    out = tmp_path / "deep" / "run"
    toml = tmp_path / "run.toml"  # a short calibration, so that the prior's stage comes soon
    toml.write_text("calibration_pairs = 40\nprior_images = 20\n")
    proc = _start(_argv(lfw_sample, out, extra=["--config", str(toml)]))
    _stop_on_line(proc, stage, sig)
    line = _ended(proc, sig)
    assert "before any row was stored" in line and str(out) in line, line
    assert not (tmp_path / "deep").exists()  # the lock's file and the folders it made are gone


@pytest.mark.slow
@pytest.mark.parametrize("sig", [*SIGNALS, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_stopped_during_the_rows_keeps_them_and_the_same_command_resumes(lfw_sample, tmp_path, sig):
    out = tmp_path / "run"
    argv = _argv(lfw_sample, out, extra=FIXED)
    proc = _start(argv)
    _stop_when(proc, lambda: stored_rows(out) >= 1, sig)
    line = _ended(proc, sig)
    assert f"the rows already stored in {out} are kept: rerun the same command to resume" in line
    partial = stored_rows(out)
    assert 1 <= partial < 12, partial  # stopped among the rows
    assert not (out / "summary.json").exists()
    resumed = _start(argv)
    stdout, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    assert f"{12 - partial} of 12 (method, pair) rows to compute" in stdout
    with sqlite3.connect(out / "results.sqlite") as c:
        keys = c.execute("SELECT method, pair FROM results").fetchall()
    assert len(keys) == 12 and len(set(keys)) == 12  # one row per (method, pair)
    assert (out / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stopped_during_the_report_keeps_the_rows_and_the_same_command_writes_it(lfw_sample, tmp_path, sig):
    out = tmp_path / "run"
    argv = _argv(lfw_sample, out, n_pairs="2", extra=FIXED)
    proc = _start(argv)
    _stop_when(proc, lambda: stored_rows(out) == 4, sig)  # every row stored: the summary and the report follow
    line = _ended(proc, sig)
    assert "rerun the same command to resume" in line
    assert not (out / "report.html").exists()
    resumed = _start(argv)
    stdout, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    assert "all rows are already in the store" in stdout, stdout  # nothing computed again
    assert stored_rows(out) == 4 and (out / "report.html").is_file()


@pytest.mark.slow
def test_sigterm_with_the_ray_executor_stops_as_in_process(lfw_sample, tmp_path):
    """``ray.init`` makes SIGTERM exit the driver at once (exit status 15, Ray's crash dump on
    stderr, no clean-up); falsify puts its own handler back, so the run stops as in-process."""
    pytest.importorskip("ray")
    out = tmp_path / "run"
    argv = _argv(lfw_sample, out, extra=[*FIXED, "--executor", "ray", "--workers", "1"])
    proc = _start(argv)
    _stop_when(proc, lambda: stored_rows(out) >= 1, signal.SIGTERM)
    line = _ended(proc, signal.SIGTERM)
    assert f"the rows already stored in {out} are kept: rerun the same command to resume" in line
    assert 1 <= stored_rows(out) < 12
