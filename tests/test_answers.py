"""Every request answered as asked (issue 26): --n-pairs above what the data holds, a negative
--truth-min-effect, and `falsify report` on a run that has not finished."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from PIL import Image

from falsify.cli import main
from falsify.data import load_pairs
from falsify.experiments import RunConfig, configure, runner_for
from falsify.experiments.known_truth import EXPERIMENT as KNOWN_TRUTH
from falsify.experiments.session import load_run_pairs

FIXED = ["--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05", "--preset", "plain"]


def _line(text: str, marker: str) -> str:
    lines = [x for x in text.splitlines() if marker in x]
    assert len(lines) == 1, text
    return lines[0]


# --- --n-pairs above what the data holds: every pair is used, and one line says so ---------------

def test_the_sample_says_asked_available_and_used(small_csv, tmp_path):
    pairs = load_pairs(small_csv, n_pairs=100000)
    assert len(pairs) == 12
    assert pairs.shortfall() == (f"--n-pairs 100000 asks for more pairs than there are: 12 available in {small_csv}, "
                                 "so all 12 are used")
    assert load_pairs(small_csv, n_pairs=12).shortfall() is None  # as many as there are: nothing to say
    assert load_pairs(small_csv, n_pairs=4).shortfall() is None
    assert load_pairs(small_csv).shortfall() is None  # no sample asked
    faces = tmp_path / "faces"  # identity folders make their pairs: as many as the images allow
    for person in ("a", "b"):
        (faces / person).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (8, 8), (k * 90, 20, 30)).save(faces / person / f"{k}.png")
    few = load_pairs(faces, n_pairs=50)
    assert len(few) < 50 and f"so all {len(few)} are used" in few.shortfall()


def test_verify_says_when_it_has_fewer_pairs_than_asked(small_csv, capsys):
    assert main(["verify", "--data", str(small_csv), "--n-pairs", "100000", "-q"]) == 0
    out, err = capsys.readouterr()
    line = _line(err, "--n-pairs 100000")
    assert line.startswith("falsify verify: note: --n-pairs 100000 asks for more pairs than there are: 12 available")
    assert "so all 12 are used" in line and "12 (6 genuine, 6 impostor)" in out
    assert main(["verify", "--data", str(small_csv), "--n-pairs", "6", "-q"]) == 0
    assert "asks for more pairs" not in capsys.readouterr().err


def test_run_says_when_it_has_fewer_pairs_than_asked(small_csv, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(small_csv), "--n-pairs", "100000", "--methods", "random", "--out", str(out),
            "-q", "--no-ceiling", *FIXED]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    line = _line(printed, "--n-pairs 100000")
    assert line == (f"--n-pairs 100000 asks for more pairs than there are: 12 available in {small_csv}, "
                    "so all 12 are used")
    assert printed.index(line) < printed.index("run directory:")  # said at once, before any work
    assert main(argv) == 0  # the same command resumes: N is stored as asked
    assert "all rows are already in the store" in capsys.readouterr().out


def test_known_truth_counts_its_impostor_pairs(small_csv):
    lines: list[str] = []
    pairs = KNOWN_TRUTH.pairs(configure(experiment="known-truth", data=str(small_csv), n_pairs=500), log=lines.append)
    assert len(pairs) == 6 and not any(p.same for p in pairs)
    assert lines == [f"--n-pairs 500 asks for more impostor pairs than there are: 6 available in {small_csv} "
                     "(known-truth uses impostor pairs only), so all 6 are used"]
    lines.clear()
    KNOWN_TRUTH.pairs(configure(experiment="known-truth", data=str(small_csv), n_pairs=6), log=lines.append)
    assert lines == []


def test_stratify_counts_the_labelled_pairs(lfw_sample):
    labels = lfw_sample.parent / "lfw-labels"
    if not labels.is_dir():
        pytest.skip(f"no labels at {labels}")
    lines: list[str] = []
    config = RunConfig(data=str(lfw_sample), n_pairs=100000, labels=str(labels), stratify="gender")
    pairs = load_run_pairs(config, log=lines.append)
    assert len(lines) == 1 and "asks for more pairs whose image A has a gender label than there are" in lines[0]
    assert f"{len(pairs)} available" in lines[0] and f"so all {len(pairs)} are used" in lines[0]


# --- a negative --truth-min-effect -----------------------------------------------------------------

def test_a_negative_truth_min_effect_is_refused_and_writes_nothing(small_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "known-truth", "--data", str(small_csv), "--n-pairs", "2", "--out", str(out),
                 "--truth-min-effect", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("falsify run: error: truth_min_effect (--truth-min-effect) must be >= 0 radians, got -1")
    assert "\n" not in err and not out.exists()
    toml = tmp_path / "kt.toml"
    toml.write_text('experiment = "known-truth"\ntruth_min_effect = -0.01\n')
    with pytest.raises(ValueError, match="truth_min_effect .* must be >= 0 radians, got -0.01"):
        configure(config_file=toml, data=str(small_csv))
    assert configure(experiment="known-truth", truth_min_effect=0.0).truth_min_effect == 0.0


# --- falsify report on a run that has not finished ----------------------------------------------------

def test_report_on_an_unfinished_run_says_how_far_it_got_and_how_to_finish(lfw_sample, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "2", "--methods", "random", "--out", str(out),
            "-q", "--no-ceiling", *FIXED]
    assert main(argv) == 0
    (out / "summary.json").unlink()  # as a run stopped before its report leaves it
    (out / "report.html").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    command = f"falsify run 6.1 --out {out} --no-ceiling"  # the flag is no stored setting: given again
    assert err == (f"falsify report: error: {out} holds a run that has not finished (2 rows stored for its 2 pairs, "
                   f"no summary.json yet): finish it with '{command}', which resumes it and writes the report")
    assert not (out / "report.html").exists()
    assert main(shlex.split(command)[1:] + ["-q"]) == 0  # the command it names finishes the run
    assert "all rows are already in the store" in capsys.readouterr().out
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    assert main(["report", str(out)]) == 0


def test_report_on_a_folder_without_a_run_still_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json not found: is" in capsys.readouterr().err


def test_6_4_says_it_once_not_once_per_model(small_csv, tmp_path, monkeypatch):
    """6.4 loads the pairs, then each model's 6.1 run loads them again: the line comes once."""
    from falsify.experiments import runner as R

    class Stop(Exception):
        pass

    real = R.Runner.run

    def run(self):  # each model's run: its pairs (as it loads them first), then stop before any model
        if self.experiment.name == "6.4":
            return real(self)
        self.experiment.pairs(self.config, log=self.log)
        self.log(f"model {self.config.model}")
        if self.config.model == "dlib-resnet:random":
            raise Stop
        return {}

    lines: list[str] = []
    config = configure(experiment="6.4", data=str(small_csv), n_pairs=999, methods=["random"], out=str(tmp_path / "r"),
                       models=["dlib-resnet", "dlib-resnet:random"], tau_high=0.2, tau_low=0.1, epsilon=0.05,
                       preset="plain")
    monkeypatch.setattr(R.Runner, "run", run)
    with pytest.raises(Stop):
        runner_for(config, progress=False, log=lines.append).run()
    notes = [x for x in lines if "asks for more pairs" in x]
    assert notes == [f"--n-pairs 999 asks for more pairs than there are: 12 available in {small_csv}, so all 12 "
                     "are used"]
    assert lines.index(notes[0]) < lines.index("model dlib-resnet") < lines.index("model dlib-resnet:random")
