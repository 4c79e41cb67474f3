"""The settings schema (``falsify.experiments.settings``): each setting declared once, on its
``RunConfig`` field, and every source - a TOML file, a flag, the store of ``--out``, a library
call - checked by it, a refusal naming the key and the source."""
from __future__ import annotations

import json

import pytest

from falsify.cli import build_parser, main
from falsify.experiments import RunConfig
from falsify.experiments import settings as s
from falsify.experiments.config import KEPT_KEYS, LEGACY, RESULT_KEYS, SETTINGS

#: a TOML value of the wrong type, for each kind of constraint (a new kind must be added here)
WRONG = {s.Whole: '"abc"', s.Number: '"abc"', s.Text: "3.5", s.Flag: '"yes"', s.Names: "3", s.Delta: '"abc"',
         s.Size: '"abc"', s.PerChannel: '"abc"', s.Tables: "3"}


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_a_toml_value_of_the_wrong_type_is_refused_naming_the_file_and_the_key(key, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    value = WRONG[type(SETTINGS[key].check)]
    cfg.write_text(f"{key} = {value}\n")
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"falsify run: error: {cfg}: {key} must be "), err
    assert not out.exists()


def test_the_issue_example_names_the_file_and_the_key(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('experiment = "known-truth"\ntruth_min_effect = "abc"\n')
    with pytest.raises(ValueError, match=rf"^{cfg}: truth_min_effect must be a number, got 'abc'$"):
        RunConfig.read_toml(cfg)


def test_every_flag_of_the_schema_is_an_option_of_run_with_the_settings_name():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    by_flag = {o: a for a in run._actions for o in a.option_strings}
    positional = {a.dest for a in run._actions if not a.option_strings}
    flags = {"method_options": "option"}  # parsed by cli._parse_options from --option
    for key, st in SETTINGS.items():
        if st.flag is None:
            continue
        if not st.flag.startswith("-"):
            assert key in positional
            continue
        assert st.flag in by_flag, (key, st.flag)
        assert by_flag[st.flag].dest == flags.get(key, key), (key, by_flag[st.flag].dest)
        assert by_flag[st.flag].default is None, key  # not given: the TOML's, the store's or the default


def test_flags_and_library_calls_are_named_as_the_source():
    with pytest.raises(ValueError, match=r"^--workers: workers must be >= 1, got 0$"):
        RunConfig.resolve(flags={"workers": 0, "executor": "ray"})
    with pytest.raises(ValueError, match=r"^RunConfig: n_pairs must be a whole number, got 'ten'$"):
        RunConfig(n_pairs="ten")
    with pytest.raises(ValueError, match=r"^--no-ceiling: ceiling must be true or false"):
        RunConfig.resolve(flags={"ceiling": "no"})


def test_a_setting_of_another_experiment_is_refused_by_its_declaration():
    for key, value, who in (("truth", "swap", "the known-truth benchmark"), ("models", ["a", "b"], "experiment 6.4")):
        with pytest.raises(ValueError, match=rf"^{key} \(--{key}\) is a setting of {who}; drop it"):
            RunConfig(**{key: value})


def test_the_declared_keys_are_those_resume_compares_and_keeps():
    assert set(RESULT_KEYS) == {k for k, st in SETTINGS.items() if st.result}
    assert set(KEPT_KEYS) == {"methods", "batch_pairs", "batch_size", "grid_pairs", "sanity", "other_reference",
                              "labels"}
    assert LEGACY == {"align": "none", "models": None, "calibrate_on": None, "truth": None, "truth_parts": None,
                      "precision": "fp32", "recheck_band": None, "path_rules": "doubling", "target": "embedding"}
    assert set(RunConfig().result_settings()) == set(RESULT_KEYS) | {"path_rules"}
    for key, st in SETTINGS.items():  # every default passes its own constraint
        assert st.problem(st.default) is None, key


def test_a_stored_setting_of_the_wrong_type_names_the_store(tmp_path):
    from falsify.experiments.store import ResultsStore

    out = tmp_path / "run"
    out.mkdir()
    store = ResultsStore(out / "results.sqlite")
    store.set_meta("settings", {**RunConfig().result_settings(), "n_pairs": "many"})
    store.close()
    with pytest.raises(ValueError, match=rf"^{out / 'results.sqlite'}: n_pairs must be a whole number, got 'many'$"):
        RunConfig.resolve(out=str(out))
    json.dumps(RunConfig().to_dict())  # every setting's value is plain data
