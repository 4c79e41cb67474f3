"""Bad input and hostile conditions on every subcommand: one-line errors, nothing written by a
bad option, nothing silently mixed or lost in a run folder (issue: reliability and security)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from falsify.cli import main
from falsify.experiments import ResultsStore, RunConfig, Runner, runner_for
from falsify.experiments.executor import RowComputer
from tests.conftest import TinyNet

FIXED = ["--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(lfw, out, *extra, n_pairs="4", methods="random"):
    return ["run", "--data", str(lfw), "--n-pairs", n_pairs, "--methods", methods, "--out", str(out), "-q",
            "--batch-pairs", "2", "--preset", "plain", "--no-ceiling", *extra]  # the ceiling: tests/test_ceiling.py


def _error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"falsify {command}: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _faces(lfw, folder: Path, names=("Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn")) -> dict[str, list[Path]]:
    for n in names:
        shutil.copytree(lfw / n, folder / n)
    return {n: sorted((folder / n).glob("*.jpg")) for n in names}


def _csv(path: Path, rows) -> Path:
    path.write_text("a,b,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    return path


# --- a bad option writes nothing -------------------------------------------------------------------

@pytest.mark.parametrize("extra, match", [
    (["--q", "0.9", *FIXED], "q must be in"),
    (["--tau-high", "-1", "--tau-low", "0.1", "--epsilon", "0.05"], "tau_high must be >= 0"),
    (["--option", "gradcam.layer=nope", "--methods", "gradcam", *FIXED], "no layer named 'nope'"),
    (["--option", "gradcam.layer=layer2.3", *FIXED], "not among the methods run"),
    (["--option", "ig.steps=abc", "--methods", "ig", *FIXED], "option ig.steps must be a whole number"),
    (["--device", "foo", *FIXED], "unknown device 'foo'"),
    (["--model", "dlib-resnet", "--mean", "0.5", *FIXED], "fixed preprocessing"),
])
def test_bad_run_options_write_nothing_and_the_fixed_command_runs(lfw_sample, tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *extra)) == 2
    assert match in _error_line(capsys, "run")
    assert not out.exists()
    assert main(_run(lfw_sample, out, *FIXED)) == 0  # the corrected command is not refused


@pytest.mark.parametrize("argv", [
    ["--fill", "purple"], ["--granularity", "hex"], ["--n-pairs", "0"], ["--q", "abc"], ["-K", "2.5"],
    ["--batch-pairs", "-1"], ["--tau-high", "nan"],
])
def test_parser_refuses_bad_values(lfw_sample, tmp_path, capsys, argv):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(_run(lfw_sample, out, *argv))
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("toml, match", [
    ("K = 2.5", "K must be a whole number, got 2.5"),
    ('q = "0.2"', "q must be a number, got '0.2'"),
    ("n_pairs = true", "n_pairs must be a whole number, got True"),
    ("seed = 1.0", "seed must be a whole number"),
    ('methods = ["gradcam", 3]', "methods must be a list of method names"),
    ("[method_options]\nig = 3", "method_options must be a table"),
    ("q = 0.7", "q must be in"),
])
def test_toml_errors_name_the_key_and_write_nothing(lfw_sample, tmp_path, capsys, toml, match):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml + "\n")
    out = tmp_path / "run"
    assert main([*_run(lfw_sample, out, *FIXED), "--config", str(cfg)]) == 2
    assert match in _error_line(capsys, "run")
    assert not out.exists()


def test_a_failing_calibration_leaves_no_store(tmp_path, lfw_sample, capsys):
    """Calibration is computed before the store is created: a failure there leaves no folder."""
    faces = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco",))
    imgs = faces["Abel_Pacheco"]
    data = _csv(tmp_path / "faces" / "pairs.csv", [(imgs[0], imgs[1], 1), (imgs[1], imgs[2], 1)])
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--methods", "random", "--out", str(out), "-q", "--preset", "plain"]) == 2
    _error_line(capsys, "run")
    assert not out.exists()


# --- settings come from the store; the data is compared by content ---------------------------------

def test_6_2_on_a_6_1_folder_takes_the_stored_settings(lfw_sample, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED, "--seed", "4", n_pairs="8", methods="random,saliency")) == 0
    capsys.readouterr()
    # no --data (whose default would be scikit-learn's LFW download), no --seed, no thresholds
    assert main(["run", "6.2", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "experiment 6.2: FR% by quartile" in text and "saliency" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "6.2" and summary["config"]["seed"] == 4
    assert {m["method"] for m in summary["methods"]} == {"random", "saliency"}
    assert main(["run", "6.2", "--out", str(out), "--seed", "5", "-q"]) == 2
    assert "seed" in _error_line(capsys, "run")


def test_same_relative_path_to_other_data_is_refused(lfw_sample, tmp_path, capsys, monkeypatch):
    for name, people in (("one", ("Abel_Pacheco", "Akhmed_Zakayev")), ("two", ("Amber_Tamblyn", "Akhmed_Zakayev"))):
        imgs = _faces(lfw_sample, tmp_path / name / "faces", names=people)
        a, b = people
        _csv(tmp_path / name / "faces" / "pairs.csv",
             [(f"{a}/{imgs[a][0].name}", f"{a}/{imgs[a][1].name}", 1), (f"{b}/{imgs[b][0].name}", f"{b}/{imgs[b][1].name}", 1),
              (f"{a}/{imgs[a][0].name}", f"{b}/{imgs[b][0].name}", 0), (f"{a}/{imgs[a][1].name}", f"{b}/{imgs[b][1].name}", 0)])
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "one")
    assert main(_run("faces/pairs.csv", out, *FIXED)) == 0
    before = _tree(out)
    monkeypatch.chdir(tmp_path / "two")
    assert main(_run("faces/pairs.csv", out, *FIXED)) == 2
    assert "data (the pairs or their images) differ" in _error_line(capsys, "run")
    assert _tree(out) == before
    # the same data spelled differently (absolute, trailing slash) is the same run
    monkeypatch.chdir(tmp_path)
    assert main(_run(str(tmp_path / "one" / "faces" / "pairs.csv"), out, *FIXED)) == 0
    assert "all rows are already in the store" in capsys.readouterr().out


def test_directory_spelled_with_a_slash_resumes(lfw_sample, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED)) == 0
    assert main(_run(f"{lfw_sample}/", out, *FIXED)) == 0
    assert "all rows are already in the store" in capsys.readouterr().out


def test_colliding_file_names_are_distinct_pairs(lfw_sample, tmp_path, capsys):
    """r1/P/img.jpg and r2/P/img.jpg with the same partner: two pairs, two rows each method."""
    src = sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg")) + sorted((lfw_sample / "Amber_Tamblyn").glob("*.jpg"))
    for r, img in (("r1", src[0]), ("r2", src[1])):
        (tmp_path / r / "P").mkdir(parents=True)
        shutil.copy(img, tmp_path / r / "P" / "img.jpg")
    (tmp_path / "Q").mkdir()
    shutil.copy(src[-1], tmp_path / "Q" / "ref.jpg")
    data = _csv(tmp_path / "pairs.csv", [("r1/P/img.jpg", "Q/ref.jpg", 1), ("r2/P/img.jpg", "Q/ref.jpg", 0),
                                         ("r1/P/img.jpg", "Q/ref.jpg", 1)])  # the third line repeats the first
    out = tmp_path / "run"
    assert main(_run(data, out, *FIXED, methods="random,saliency")) == 0
    text = capsys.readouterr().out
    assert "4 of 4 (method, pair) rows to compute" in text
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT count(*) FROM results").fetchone()[0] == 4
    assert json.loads((out / "summary.json").read_text())["data"]["n_pairs"] == 2


# --- error rows, locks, foreign and read-only stores -----------------------------------------------

def test_retry_errors_recomputes_error_rows(lfw_sample, tmp_path, capsys):
    imgs = _faces(lfw_sample, tmp_path / "faces")
    a, b, c = (imgs[n] for n in ("Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn"))
    good = c[0].read_bytes()
    c[0].write_bytes(b"\xff\xd8 not a jpeg")
    data = _csv(tmp_path / "faces" / "pairs.csv", [(a[0], a[1], 1), (b[0], b[1], 1), (a[0], b[0], 0), (c[0], a[1], 0)])
    out = tmp_path / "run"
    assert main(_run(data, out, *FIXED)) == 0
    assert "--retry-errors" in capsys.readouterr().out
    c[0].write_bytes(good)  # the cause is fixed: the image changed, and its pair has only error rows
    assert main(_run(data, out, *FIXED)) == 2  # error rows are not retried silently
    assert "rerun with --retry-errors" in _error_line(capsys, "run")
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 1
    assert main(_run(data, out, *FIXED, "--retry-errors")) == 0
    assert "retrying 1 error row" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_errors"] == 0 and summary["n_rows"] == 4
    assert main(_run(data, out, *FIXED)) == 0  # the fixed image is now part of the run's fingerprint
    a[1].write_bytes(a[1].read_bytes() + b"\0")  # an image whose pair has results must not change
    assert main(_run(data, out, *FIXED, "--retry-errors")) == 2
    assert "image changed" in _error_line(capsys, "run")


def test_error_rows_stay_without_a_change(lfw_sample, tmp_path, capsys, monkeypatch):
    """A pair that failed for a reason outside the data is kept as an error until --retry-errors."""
    imgs = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco", "Akhmed_Zakayev"))
    a, b = imgs["Abel_Pacheco"], imgs["Akhmed_Zakayev"]
    data = _csv(tmp_path / "faces" / "pairs.csv", [(a[0], a[1], 1), (b[0], b[1], 1), (a[0], b[0], 0), (a[1], b[1], 0)])
    out = tmp_path / "run"
    config = RunConfig(data=str(data), methods=["random"], n_pairs=4, out=str(out), tau_high=0.2, tau_low=0.1,
                       epsilon=0.05, grid_pairs=0, batch_pairs=2, preset="plain")
    runner = runner_for(config, progress=False, log=lambda *a: None)
    real = RowComputer.test
    calls = {"n": 0}

    def flaky(self, method, explainer, model, fconfig, pairs, *rest, **kw):
        calls["n"] += 1
        if calls["n"] == 1:  # a transient failure of the first batch, one row per pair
            return [self.error_row(method, p, "RuntimeError: out of memory") for p in pairs]
        return real(self, method, explainer, model, fconfig, pairs, *rest, **kw)

    monkeypatch.setattr(RowComputer, "test", flaky)
    assert runner.run()["n_errors"] == 2
    assert main(_run(data, out, *FIXED)) == 0
    assert "2 error rows" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 2
    assert main(_run(data, out, *FIXED, "--retry-errors")) == 0
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 0


def test_every_row_an_error_exits_1(lfw_sample, tmp_path, capsys):
    imgs = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco",))
    for p in imgs["Abel_Pacheco"]:
        p.write_bytes(b"not an image")
    x = imgs["Abel_Pacheco"]
    data = _csv(tmp_path / "faces" / "pairs.csv", [(x[0], x[1], 1), (x[1], x[2], 0)])
    assert main(_run(data, tmp_path / "run", *FIXED)) == 1
    err = capsys.readouterr().err
    assert "every one of the 2 rows is an error" in err and "cannot read image" in err


def test_decompression_bomb_is_an_error_row(lfw_sample, tmp_path, monkeypatch):
    imgs = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco", "Akhmed_Zakayev"))
    a, b = imgs["Abel_Pacheco"], imgs["Akhmed_Zakayev"]
    Image.new("L", (3000, 3000)).save(tmp_path / "faces" / "bomb.png")
    data = _csv(tmp_path / "faces" / "pairs.csv",
                [(a[0], a[1], 1), (b[0], b[1], 1), (tmp_path / "faces" / "bomb.png", a[1], 0), (a[0], b[0], 0)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # 9 Mpx is then a bomb (> 2x the limit)
    config = RunConfig(data=str(data), methods=["random"], n_pairs=4, out=str(tmp_path / "run"),
                       tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=0, preset="plain")
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    assert summary["n_rows"] == 4 and summary["n_errors"] == 1
    assert "pixel" in summary["errors"][0]["error"]


def test_a_second_run_on_one_folder_is_refused(lfw_sample, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED)) == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from falsify.experiments.lock import RunLock; "
         "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_run(lfw_sample, out, *FIXED)) == 2
        err = _error_line(capsys, "run")
        assert f"in use by another falsify run (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert main(_run(lfw_sample, out, *FIXED)) == 0  # the lock dies with its process


@pytest.mark.parametrize("experiment", ["6.1", "6.4"])
def test_a_locked_folder_is_refused_before_any_work(lfw_sample, tmp_path, capsys, monkeypatch, experiment):
    """The issue's case: a second run into an ``--out`` that a first run holds (the first one
    here: a lock held by this process) is refused at once, before it calibrates."""
    from falsify.experiments.lock import RunLock

    def calibrate(*_):
        raise AssertionError("calibrated before the lock was taken")

    monkeypatch.setattr(Runner, "_calibration", calibrate)
    out = tmp_path / "run"
    holder = RunLock(out).acquire()
    try:
        before = _tree(out)
        extra = ["--models", "dlib-resnet,dlib-resnet:random"] if experiment == "6.4" else []
        t = time.perf_counter()
        assert main(["run", experiment, *_run(lfw_sample, out)[1:], *extra]) == 2  # no thresholds: calibrates
        assert time.perf_counter() - t < 30
        assert f"in use by another falsify run (pid {os.getpid()}" in _error_line(capsys, "run")
        assert _tree(out) == before and sorted(os.listdir(out)) == ["run.lock"]
    finally:
        holder.release()


def test_the_lock_is_held_while_calibrating_and_a_failure_there_leaves_nothing(lfw_sample, tmp_path, monkeypatch):
    from falsify.experiments.lock import RunLock

    out = tmp_path / "run"
    seen = []

    def calibrate(self, *args):
        with pytest.raises(ValueError, match="in use by another falsify run"):
            RunLock(out).acquire()
        seen.append(sorted(os.listdir(out)))
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(Runner, "_calibration", calibrate)
    config = RunConfig(data=str(lfw_sample), methods=["random"], n_pairs=2, out=str(out), preset="plain")
    with pytest.raises(RuntimeError, match="calibration failed"):
        runner_for(config, progress=False, log=lambda *a: None).run()
    assert seen == [["run.lock"]]  # locked while calibrating, and nothing else there yet
    assert not out.exists()  # the run stopped before its store: the lock's folder and file are gone


def test_a_refused_run_removes_only_what_its_lock_made(tmp_path):
    from falsify.experiments.lock import RunLock

    deep = tmp_path / "a" / "b" / "run"
    RunLock(deep).acquire().release(clean=True)
    assert not (tmp_path / "a").exists()  # the folders the lock made, and its file, are gone
    RunLock(deep).acquire().release()
    assert (deep / "run.lock").is_file()  # a run that wrote: the lock file stays (as before)
    RunLock(deep).acquire().release(clean=True)
    assert (deep / "run.lock").is_file()  # it was there before: kept
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    RunLock(other).acquire().release(clean=True)
    assert sorted(os.listdir(other)) == ["notes.txt"]  # someone else's folder: only the lock file goes
    lock = RunLock(tmp_path / "x").acquire()
    (tmp_path / "x" / "results.sqlite").write_bytes(b"")  # written meanwhile: the folder is not empty
    lock.release(clean=True)
    assert sorted(os.listdir(tmp_path / "x")) == ["results.sqlite"]


def test_a_lock_file_removed_meanwhile_is_not_locked(tmp_path, monkeypatch):
    """A run that opened ``run.lock`` just before a refused run removed it must not lock that
    removed file (two runs would then hold "the" lock): it locks the file the path names."""
    import fcntl

    from falsify.experiments.lock import RunLock

    out = tmp_path / "run"
    first = RunLock(out).acquire()
    real_flock, calls = fcntl.flock, []

    def flock(fh, op):
        if not calls and op & fcntl.LOCK_EX:  # between the open and the lock: the first run's clean release
            calls.append(op)
            first.release(clean=True)
        return real_flock(fh, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    second = RunLock(out).acquire()
    monkeypatch.undo()
    assert calls and (out / "run.lock").is_file()
    with pytest.raises(ValueError, match="in use by another falsify run"):
        RunLock(out).acquire()  # the file on disk is the one locked
    second.release()


def test_foreign_sqlite_file_is_left_untouched(lfw_sample, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with sqlite3.connect(out / "results.sqlite") as c:
        c.execute("CREATE TABLE birds (name TEXT)")
        c.execute("INSERT INTO birds VALUES ('robin')")
    c.close()
    before = _tree(out)
    assert main(_run(lfw_sample, out, *FIXED)) == 2
    assert "not a falsify results store" in _error_line(capsys, "run")
    assert _tree(out) == before
    (out / "results.sqlite").write_bytes(b"plain text, not SQLite at all" * 100)
    assert main(_run(lfw_sample, out, *FIXED)) == 2
    assert "not a falsify results store" in _error_line(capsys, "run")


@pytest.fixture
def read_only_copy(tmp_path):
    """A tmpfs remounted read-only (needs root and mount); yields a function that fills it."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): read-only folders untested")

    def fill(src: Path) -> Path:
        shutil.copytree(src, mnt / src.name)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        return mnt / src.name

    yield fill
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_run_folder_says_read_only(lfw_sample, tmp_path, capsys, read_only_copy):
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED)) == 0
    ro = read_only_copy(out)
    assert main(_run(lfw_sample, ro, *FIXED)) == 2
    assert "read-only" in _error_line(capsys, "run")
    assert main(["report", str(ro), "--no-figures"]) == 2
    assert "Read-only file system" in _error_line(capsys, "report")
    faces = [str(p) for p in sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[:2]]
    assert main(["explain", *faces, "--methods", "saliency", "--out", str(ro / "fig.png"), "-q"]) == 2
    assert "not writable" in _error_line(capsys, "explain")


@pytest.mark.parametrize("what", ["file", "file-parent"])
def test_out_that_is_a_file(lfw_sample, tmp_path, capsys, what):
    f = tmp_path / "taken"
    f.write_text("x")
    out = f if what == "file" else f / "run"
    assert main(_run(lfw_sample, out, *FIXED)) == 2
    assert "is a file" in _error_line(capsys, "run")
    assert f.read_text() == "x"


# --- report, explain, verify --------------------------------------------------------------------------

def test_report_on_corrupt_or_foreign_summary(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in _error_line(capsys, "report")
    (tmp_path / "summary.json").write_text('{"hello": 1}')
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in _error_line(capsys, "report")
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "tables").exists()


@pytest.fixture(scope="module")
def two_faces(lfw_sample):
    a, b = sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[:2]
    return str(a), str(b)


def test_explain_save_maps_prints_the_written_file(two_faces, tmp_path, capsys):
    target = tmp_path / "maps"
    assert main(["explain", *two_faces, "--methods", "saliency", "--save-maps", str(target), "-q"]) == 0
    assert f"maps: {target}.npz" in capsys.readouterr().out
    assert (tmp_path / "maps.npz").is_file()


@pytest.mark.parametrize("argv, match", [
    (["--methods", "saliency", "--device", "cuda"], "CUDA is not available"),
    (["--methods", "saliency", "--device", "foo"], "unknown device"),
    (["--methods", "saliency", "--std", "0"], "std must be > 0"),
    (["--methods", "saliency", "--mean", "0.5"], "fixed preprocessing"),
    (["--methods", "saliency", "--layer", "layer2.3"], "--layer is for the CAM methods"),
    (["--methods", "gradcam", "--option", "gradcam.layer=nope"], "no layer named 'nope'"),
    (["--methods", "saliency", "--out", "{tmp}/fig.txt"], "use one of .png"),
    (["--methods", "saliency", "--out", "{file}/fig.png"], "is a file"),
])
def test_explain_errors(two_faces, tmp_path, capsys, argv, match):
    (tmp_path / "afile").write_text("x")
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    argv = [a.format(tmp=tmp_path, file=tmp_path / "afile") for a in argv]
    assert main(["explain", *two_faces, "-q", *argv]) == 2
    assert match in _error_line(capsys, "explain")


def test_explain_refuses_a_huge_dpi(two_faces, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", *two_faces, "--dpi", "100000"])
    assert exc.value.code == 2 and "between 20 and 1200" in capsys.readouterr().err


def test_verify_n_pairs_0_and_one_class_json(lfw_sample, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--data", str(lfw_sample), "--n-pairs", "0"])
    assert "--n-pairs: must be >= 1" in capsys.readouterr().err
    imgs = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco", "Akhmed_Zakayev"))
    a, b = imgs["Abel_Pacheco"], imgs["Akhmed_Zakayev"]
    data = tmp_path / "faces" / "pairs.csv"
    data.write_text("a,b,same,fold\n" + "".join(f"{x[0]},{x[1]},1,0\n" for x in (a, b)))
    assert main(["verify", "--data", str(data), "--json", "-q"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # strict JSON: no NaN
    assert result["roc_auc"] is None
    assert "ROC AUC is undefined" in captured.err and "one fold" in captured.err


def test_test_and_run_calibrate_on_the_same_pairs(lfw_sample, two_faces, tmp_path, capsys):
    config = RunConfig(data=str(lfw_sample), methods=["random"], n_pairs=4, calibration_pairs=24, seed=2,
                       out=str(tmp_path / "run"), grid_pairs=0, preset="plain")
    runner_for(config, progress=False, log=lambda *a: None).run()
    with ResultsStore(tmp_path / "run" / "results.sqlite") as s:
        run_cal = s.get_meta("calibration")
    assert main(["test", *two_faces, "--method", "random", "--data", str(lfw_sample), "--calibration-pairs", "24",
                 "--seed", "2", "--json", "-q", "--preset", "plain"]) == 0
    test_cal = json.loads(capsys.readouterr().out)["calibration"]
    assert test_cal == run_cal


# --- bad inputs refused with one line (issue 19) ---------------------------------------------------------

class ConstantNet(nn.Module):
    """A network that ignores its input: every pair looks the same, so verification is at chance."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.v = nn.Parameter(torch.linspace(-1, 1, 32))

    def forward(self, x):
        return self.v.expand(x.shape[0], -1) + 0 * self.conv(x).mean()


def test_verify_refuses_a_model_that_is_not_a_face_embedder(small_csv, tmp_path, capsys):
    from tests.test_models import _graph_onnx

    bad = _graph_onnx(tmp_path / "tiny.onnx", ["N", 3, 8, 8], ["N", 4, 8, 8], "conv")  # the user's model
    assert main(["verify", "--data", str(small_csv), "--model", str(bad), "-q"]) == 2
    err = _error_line(capsys, "verify")
    assert "model tiny.onnx is not a face embedder: it takes 8x8 images" in err
    wide = _graph_onnx(tmp_path / "maps.onnx", ["N", 3, 64, 64], ["N", "C", "H", "W"], "conv")
    assert main(["verify", "--data", str(small_csv), "--model", str(wide), "-q"]) == 2
    assert "outputs a 4x64x64 feature map per image" in _error_line(capsys, "verify")
    pt = tmp_path / "small.pt"
    torch.save(TinyNet(dim=4), pt)
    assert main(["verify", "--data", str(small_csv), "--model", str(pt), "--trust-pickle", "--input-size", "32",
                 "32", "-q"]) == 2
    assert "model small.pt is not a face embedder: it outputs 4 numbers per image" in _error_line(capsys, "verify")


def test_run_refuses_a_model_that_is_not_a_face_embedder_and_writes_nothing(small_csv, tmp_path, capsys):
    from tests.test_models import _graph_onnx

    bad = _graph_onnx(tmp_path / "tiny.onnx", ["N", 3, 8, 8], ["N", 4, 8, 8], "conv")
    out = tmp_path / "run"
    assert main(_run(small_csv, out, "--model", str(bad), *FIXED)) == 2
    assert "is not a face embedder" in _error_line(capsys, "run")
    assert not out.exists()


def test_not_a_face_embedder_through_the_real_entry_point(small_csv, tmp_path):
    from tests.test_models import _graph_onnx

    bad = _graph_onnx(tmp_path / "tiny.onnx", ["N", 3, 8, 8], ["N", 4, 8, 8], "conv")
    argv = ["verify", "--data", str(small_csv), "--model", str(bad)]
    proc = subprocess.run([sys.executable, "-m", "falsify.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "FALSIFY_DEBUG": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("falsify verify: error: model tiny.onnx is not a face embedder: it takes 8x8 images")


@pytest.mark.parametrize("name", ["dir.onnx", "models"])
def test_model_that_is_a_directory_says_so(small_csv, tmp_path, capsys, name):
    (tmp_path / name).mkdir()
    assert main(["verify", "--data", str(small_csv), "--model", str(tmp_path / name), "-q"]) == 2
    err = _error_line(capsys, "verify")
    assert f"model {tmp_path / name} is a directory; expected a model file (an .onnx" in err
    assert "--trust-pickle" in err and "built-in name (dlib-resnet, sface" in err and "not found" not in err


def test_semicolon_csv_gets_a_one_line_hint(small_csv, capsys):
    text = small_csv.read_text()
    small_csv.write_text(text.replace(",", ";"))
    assert main(["verify", "--data", str(small_csv), "-q"]) == 2
    err = _error_line(capsys, "verify")
    assert "pairs.csv:1: expected columns a,b,same" in err
    assert "the file looks semicolon (;)-separated" in err and "re-save it with commas" in err


def test_verify_warns_when_accuracy_is_near_chance(small_csv, tmp_path, capsys):
    pt = tmp_path / "constant.pt"
    torch.save(ConstantNet(), pt)
    assert main(["verify", "--data", str(small_csv), "--model", str(pt), "--trust-pickle", "--input-size", "32",
                 "32", "-q", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["accuracy_mean"] == 0.5 and result["accuracy_ci95"][0] < 0.5 < result["accuracy_ci95"][1]
    warnings = [line for line in captured.err.splitlines() if "near chance" in line]
    assert len(warnings) == 1 and "Traceback" not in captured.err
    assert warnings[0].startswith("falsify verify: warning: accuracy 50.00% is near chance (50%): below 60%; "
                                  "is the model (constant) a face embedder")


def test_near_chance_rule():
    from falsify.verification import VerificationResult

    def result(acc, n, ci):
        return VerificationResult("m", "d", n, n // 2, n - n // 2, 10, acc, 0.0, [acc], [0.5], 0.5, 0.5, 1.0, 0,
                                  accuracy_ci95=list(ci))

    assert result(0.97, 600, (0.955, 0.98)).near_chance() is None
    assert result(0.65, 6000, (0.638, 0.662)).near_chance() is None  # weak, but clearly above chance
    assert result(0.58, 6000, (0.567, 0.592)).near_chance() == "below 60%"
    why = result(0.70, 20, (0.481, 0.855)).near_chance()
    assert why == ("its Wilson 95% interval over the 20 pairs, 48.1%-85.5%, includes 50% "
                   "(more pairs, --n-pairs, narrow it)")
    assert any("near chance" in w for w in result(0.70, 20, (0.481, 0.855)).warnings())
    assert not any("near chance" in w for w in result(0.97, 600, (0.955, 0.98)).warnings())


# --- the command line itself -------------------------------------------------------------------------

def test_help_and_version_do_not_import_torch():
    code = ("import sys; from falsify.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'captum', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "falsify.cli", "--version"], capture_output=True, check=True)
    assert time.perf_counter() - t < 10  # generous: the point is that torch is not imported (checked above)


def test_explain_help_names_dlibs_cam_layer(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "layer2.3" in capsys.readouterr().out


def test_choices_match_the_registries():
    from falsify import choices
    from falsify.attribution import METHODS
    from falsify.falsification import FILLS, GRANULARITIES

    assert choices.METHODS == METHODS and choices.FILLS == FILLS and choices.GRANULARITIES == GRANULARITIES


def test_every_user_error_is_one_line_in_a_subprocess(tmp_path):
    """Through the real entry point: exit status 2, one line on stderr, nothing on stdout."""
    proc = subprocess.run([sys.executable, "-m", "falsify.cli", "report", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env={**os.environ, "FALSIFY_DEBUG": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "summary.json" in proc.stderr


# --- a full disk ---------------------------------------------------------------------------------

def _rows(out: Path) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {(m, p): (v, dh, dl) for m, p, v, dh, dl in
                db.execute("SELECT method, pair, verdict, d_high, d_low FROM results")}


@pytest.mark.parametrize("where", ["store", "map", "outputs"])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_rerun_resumes(lfw_sample, tmp_path, capsys,
                                                                        monkeypatch, where):
    """The space runs out in the store (SQLite's own error), in a grid map (numpy's short write) or
    in the summary files (ENOSPC): one line naming --out; the rerun with space loses nothing."""
    import errno

    from falsify.experiments import registry
    from falsify.experiments.session import RunSession

    fresh = tmp_path / "fresh"
    assert main(_run(lfw_sample, fresh, *FIXED, methods="random,edge")) == 0
    capsys.readouterr()
    calls = {"n": 0}

    def full(*_a, **_k):
        calls["n"] += 1
        if calls["n"] > 1 or where == "outputs":
            raise {"store": sqlite3.OperationalError("database or disk is full"),
                   "map": OSError("22500 requested and 20416 written"),
                   "outputs": OSError(errno.ENOSPC, "No space left on device")}[where]
        return real(*_a, **_k)

    target = {"store": (ResultsStore, "add_rows"), "map": (RunSession, "save_map"),
              "outputs": (registry, "write_outputs")}[where]
    real = getattr(*target)
    monkeypatch.setattr(*target, full)
    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED, methods="random,edge")) == 2
    err = _error_line(capsys, "run")
    assert f"no space left on the device holding {out}" in err and "rerunning the same command resumes" in err
    kept = _rows(out)
    assert kept or where == "map"  # (the first unit's grid maps are written before its rows)
    assert all(kept[k] == v for k, v in _rows(fresh).items() if k in kept)  # the store is intact
    monkeypatch.undo()
    assert main(_run(lfw_sample, out, *FIXED, methods="random,edge")) == 0
    assert _rows(out) == _rows(fresh)  # resumed: every row, equal to an uninterrupted run's


def test_a_full_disk_outside_a_run_folder_is_one_line(two_faces, tmp_path, capsys, monkeypatch):
    import errno

    import numpy as np

    def full(file, *a, **k):  # as a write() that runs out of space: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    monkeypatch.setattr(np, "savez", full)
    a, b = two_faces
    assert main(["explain", a, b, "--methods", "saliency", "--save-maps", str(tmp_path / "m.npz"), "-q"]) == 2
    err = _error_line(capsys, "explain")
    assert "no space left on the device writing" in err and "m.npz" in err


# --- a data set too small to calibrate on ---------------------------------------------------------

def test_a_few_pairs_of_ones_own_say_what_the_prior_needs_then_calibrate_elsewhere(lfw_sample, tmp_path, capsys):
    imgs = _faces(lfw_sample, tmp_path / "faces", names=("Abel_Pacheco", "Akhmed_Zakayev"))
    a, b = imgs["Abel_Pacheco"], imgs["Akhmed_Zakayev"]
    data = _csv(tmp_path / "faces" / "pairs.csv", [(a[0], a[1], 1), (b[0], b[1], 1), (a[0], b[0], 0), (a[1], b[1], 0)])
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--methods", "random", "--out", str(out), "-q"]) == 2
    err = _error_line(capsys, "run")
    assert "the 4 calibration pairs have 4 images, every one of them tested" in err and "--calibrate-on" in err
    assert _tree(out) == {}
    logs: list[str] = []
    config = RunConfig(data=str(data), methods=["random"], out=str(out), calibrate_on=str(lfw_sample),
                       calibration_pairs=40, prior_images=6, grid_pairs=0)
    summary = runner_for(config, progress=False, log=lambda *m: logs.append(" ".join(map(str, m)))).run()
    assert summary["n_rows"] == 4 and summary["n_errors"] == 0
    assert any("calibrating tau_high, tau_low, epsilon on 40 pairs" in line for line in logs)
    assert any("warning: the thresholds rest on 40 pairs" in line for line in logs)  # 40 pairs are too few
    assert not any("prior rests on" in line for line in logs)  # 6 untested images were there
    settings = ResultsStore(out / "results.sqlite").get_meta("settings")
    assert settings["calibrate_on"] == str(lfw_sample.resolve())  # a result setting: not mixed on resume


def test_calibrating_on_a_few_pairs_warns_and_says_how_many_it_needs(lfw_sample, tmp_path):
    from falsify.falsification.calibration import calibration_from_angles, calibration_spread, spread_warning

    rng = np.random.default_rng(0)
    def angles(n):  # dlib-like: genuine near 0.4 rad, impostor near 0.75 rad
        return np.concatenate([rng.normal(0.40, 0.12, n), rng.normal(0.75, 0.12, n)]), np.arange(2 * n) < n

    few = calibration_from_angles(*angles(2))  # a bootstrap of two values says little: the count decides
    line = spread_warning(few)
    assert line.startswith("the thresholds rest on 4 pairs (2 genuine, 2 impostor): fewer than 20 of a kind")
    assert "about 40 pairs are needed" in line
    many = calibration_from_angles(*angles(2000))
    assert many.spread["relative"] < 0.10 and spread_warning(many) is None
    # the estimate of the pairs needed is of the right size: on these distributions the spread
    # crosses 10% near 200 pairs (100 of each); a 1/sqrt(n) extrapolation from 50 pairs is rough
    some = calibration_from_angles(*angles(25))
    assert some.spread["relative"] > 0.10 and "pairs are needed" in spread_warning(some)
    assert 100 <= some.spread["pairs_needed"] <= 1000


def test_resuming_rows_of_another_opencv_warns(lfw_sample, tmp_path, capsys):
    """The face detector's build decides the aligned crops (docs/results.md, 'Across machines')."""
    import cv2

    out = tmp_path / "run"
    assert main(_run(lfw_sample, out, *FIXED)) == 0
    assert "OpenCV" not in capsys.readouterr().out
    with sqlite3.connect(out / "results.sqlite") as db:
        env = json.loads(db.execute("SELECT environment FROM runs").fetchone()[0])
        assert env["opencv"] == cv2.__version__
        db.execute("UPDATE runs SET environment = ?", (json.dumps({**env, "opencv": "4.14.0"}),))
    assert main(_run(lfw_sample, out, *FIXED)) == 0
    assert f"made with OpenCV 4.14.0, and this run uses {cv2.__version__}" in capsys.readouterr().out
