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


# --- a stop that a library turns into its own error (deterministic, in-process) -------------------

#: A tiny 6.1 run: two pairs, one cheap method, given thresholds, the plain test, no ceiling.
TINY = ["--n-pairs", "2", "--methods", "random", "--preset", "plain", "--tau-high", "0.2", "--tau-low", "0.1",
        "--epsilon", "0.05", "--no-ceiling", "--device", "cpu", "-q"]


def _library_turns_the_stop_into(error: Exception, sig, chained: bool):
    """A library's code that the stop signal lands in and that raises ``error`` in the interrupt's
    place: pybind11 raises ``ImportError('initialization failed')`` from the interrupt raised while
    an extension module initialises (``chained``); a wrapper may drop the interrupt (``from None``).
    ``signal.raise_signal`` runs the Python handler before it returns: nothing races. The signal
    is sent once (a second one would end the process, as the handler does)."""
    sent = []

    def code(*_args, **_kw):
        if sent:
            raise error
        sent.append(sig)
        try:
            signal.raise_signal(sig)
        except KeyboardInterrupt as exc:
            raise error from (exc if chained else None)
        raise AssertionError("the handler did not raise")
    return code


@pytest.mark.parametrize("sig, error, chained",
                         [(signal.SIGTERM, ImportError("initialization failed"), True),
                          (signal.SIGHUP, RuntimeError("initialization failed"), False)],
                         ids=["SIGTERM-pybind11-ImportError-from-the-interrupt", "SIGHUP-RuntimeError-from-None"])
def test_a_library_error_raised_in_the_stop_s_place_during_the_report_is_the_stop(
        lfw_sample, tmp_path, capsys, monkeypatch, sig, error, chained):
    """The flake of test_stopped_during_the_report...: the signal landed while SciPy's HiGHS
    module (pybind11), imported with scipy.stats for the summary, initialised, and the run exited
    2 with ``falsify run: error: initialization failed``; it is
    the stop: 128 + the signal, its one line, the rows kept, and the same command writes the report."""
    from falsify.cli import main
    from falsify.experiments.base import Experiment

    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(lfw_sample), "--out", str(out), *TINY]
    with monkeypatch.context() as m:
        m.setattr(Experiment, "write", _library_turns_the_stop_into(error, sig, chained))
        assert main(argv) == 128 + sig
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"falsify run: stopped by {signal.Signals(sig).name}; the rows already stored in {out} are kept: "
                   "rerun the same command to resume"], err
    assert stored_rows(out) == 2 and not (out / "report.html").exists()
    assert signal.getsignal(sig) is signal.SIG_DFL or callable(signal.getsignal(sig))  # the handler put back
    assert main(argv) == 0
    assert "all rows are already in the store" in capsys.readouterr().out  # nothing computed again
    assert (out / "report.html").is_file()


def test_a_library_error_raised_in_the_stop_s_place_during_a_pair_is_no_error_row(
        lfw_sample, tmp_path, capsys, monkeypatch):
    """A pair's error is stored as its error row and the run goes on; an error raised in a stop's
    place is the stop: no error row is stored, the run stops, and the same command computes the pair."""
    from falsify.cli import main

    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(lfw_sample), "--out", str(out), *TINY, "--batch-pairs", "2"]
    code = _library_turns_the_stop_into(RuntimeError("initialization failed"), signal.SIGTERM, chained=False)
    with monkeypatch.context() as m:
        m.setattr("falsify.attribution.random_map.RandomExplainer._attribute", code)  # the map of a batch
        assert main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"falsify run: stopped by SIGTERM; the rows already stored in {out} are "
                                        "kept: rerun the same command to resume"], err
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT count(*) FROM results").fetchone()[0] == 0  # no error row for the stop
    assert main(argv) == 0
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT count(*) FROM results WHERE verdict = 'error'").fetchone()[0] == 0


def test_stop_behind_finds_the_stop_in_an_error_s_chain_or_the_signal_received():
    from falsify.stopping import Stopped, stop_behind, stop_signals_as_interrupts

    assert stop_behind(ValueError("bad input")) is None  # an error of its own
    try:
        try:
            raise Stopped(signal.SIGHUP)
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc
    except ImportError as exc:
        found = stop_behind(exc)
    assert isinstance(found, Stopped) and found.signum == signal.SIGHUP
    with pytest.raises(Stopped) as stopped:
        with stop_signals_as_interrupts():
            _library_turns_the_stop_into(RuntimeError("x"), signal.SIGTERM, chained=False)()
    assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value.__cause__, RuntimeError)
    assert stop_behind(RuntimeError("after the block")) is None  # what was received is forgotten


def test_a_stop_that_a_library_swallows_stops_the_run_once_the_unit_s_rows_are_stored(
        lfw_sample, tmp_path, capsys, monkeypatch):
    from falsify.attribution.random_map import RandomExplainer
    from falsify.cli import main

    original, sent = RandomExplainer._attribute, []

    def swallows(self, images, references):
        if not sent:  # once: a second one would end the process
            sent.append(True)
            try:
                signal.raise_signal(signal.SIGTERM)  # the handler runs before it returns
            except KeyboardInterrupt:
                pass  # e.g. code that falls back on any failure
        return original(self, images, references)

    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(lfw_sample), "--out", str(out), *TINY, "--batch-pairs", "1"]
    with monkeypatch.context() as m:
        m.setattr(RandomExplainer, "_attribute", swallows)
        assert main(argv) == 128 + signal.SIGTERM
    assert "falsify run: stopped by SIGTERM; the rows already stored" in capsys.readouterr().err
    assert stored_rows(out) == 1  # the first unit's row, then the stop: the second pair is not computed
