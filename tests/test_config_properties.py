"""Property-based tests (hypothesis) of the settings parsers and of the results store.

- ``--option`` and TOML configs: any input either parses to exactly what was written or is
  refused with a ``ValueError`` naming the key - never another exception, never a silent coercion.
- The store under random interruptions: a run stopped after any number of committed batches,
  then resumed (possibly stopped again), ends with exactly the rows of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falsify.choices import DEFAULT_METHODS, METHODS
from falsify.cli import _parse_options
from falsify.experiments import RunConfig, runner_for
from falsify.experiments.store import ResultsStore

# --- --option ------------------------------------------------------------------------------------

_name = st.text("abcdefghijklmnopqrstuvwxyz_+-", min_size=1, max_size=12).filter(lambda s: s.strip() == s)
_json_value = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
)
_plain_string = st.text("abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=16).filter(
    lambda s: _not_json(s))


def _not_json(s: str) -> bool:
    try:
        json.loads(s)
    except json.JSONDecodeError:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_name, _name, st.one_of(_json_value, _plain_string)), max_size=5))
def test_option_round_trip(items):
    argv = [f"{m}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for m, k, v in items]
    parsed = _parse_options(argv)
    expected: dict = {}
    for m, k, v in items:
        expected.setdefault(m, {})[k] = v
    assert parsed.keys() == expected.keys()
    for m in expected:
        for k, v in expected[m].items():
            got = parsed[m][k]
            if isinstance(v, float):
                assert isinstance(got, float) and math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-30)
            else:
                assert got == v and type(got) is type(v)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4), st.sampled_from([None, "ig"]))
def test_option_junk_only_raises_value_error(items, default):
    try:
        out = _parse_options(items, default_method=default)
    except ValueError as exc:
        assert "--option" in str(exc)
        return
    for item in items:  # accepted: every item had a method, a key and '='
        assert "=" in item
    assert all(isinstance(v, dict) for v in out.values())


# --- TOML ----------------------------------------------------------------------------------------

_toml_scalar = st.one_of(
    st.integers(-5, 10**4), st.floats(-10, 10, allow_nan=False), st.booleans(),
    st.text("abcxyz0123456789.,-", max_size=8),
)
_keys = st.sampled_from(["n_pairs", "K", "seed", "q", "tau_high", "fill", "granularity", "grid", "methods",
                         "batch_pairs", "calibration_pairs", "n-pairs", "counterfactuals", "unknown_key"])


def _toml_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # a basic TOML string


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _toml_scalar, max_size=4))
def test_toml_values_are_taken_exactly_or_refused_by_name(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text("".join(f"{k} = {_toml_literal(v)}\n" for k, v in values.items()))
        try:
            config = RunConfig.from_toml(path)
        except ValueError as exc:
            message = str(exc)
            assert "\n" not in message
            names = {k: ("K" if k == "counterfactuals" else k.replace("-", "_")) for k in values}
            named = [k for k, n in names.items() if n in message or k in message]
            assert named or "tau_high, tau_low and epsilon" in message or "unknown" in message, message
            return
    canonical = {("K" if k == "counterfactuals" else k.replace("-", "_")): v for k, v in values.items()}
    for key, value in canonical.items():
        got = getattr(config, key)
        if key == "methods":
            names = list(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
            assert got == (list(METHODS) if names == ["all"] else list(DEFAULT_METHODS) if not names else names)
        else:
            assert got == value and type(got) is type(value), (key, value, got)


# --- the store under random interruptions --------------------------------------------------------

class _Stop(Exception):
    """Stands for the process dying between two commits."""


def _config(lfw, out) -> RunConfig:
    return RunConfig(data=str(lfw), methods=["random", "saliency"], n_pairs=6, seed=1, out=str(out),
                     tau_high=0.2, tau_low=0.1, epsilon=0.05, batch_pairs=2, grid_pairs=0, preset="plain",
                     ceiling=False)  # the ceiling's rows and their resumption: tests/test_ceiling.py


def _rows(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT method, pair, verdict, round(d_high, 5), round(d_low, 5) FROM results "
                         "ORDER BY method, pair").fetchall()


@pytest.fixture(scope="module")
def uninterrupted(lfw_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    runner_for(_config(lfw_sample, out), progress=False, log=lambda *a: None).run()
    return _rows(out)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_stopped_and_resumed_runs_equal_an_uninterrupted_one(lfw_sample, uninterrupted, monkeypatch, stops):
    """Each entry of ``stops``: the run dies after that many committed batches; then it is resumed."""
    real_add = ResultsStore.add_rows
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for n_commits in stops:
            state = {"left": n_commits}

            def add_rows(self, rows, _state=state):
                if _state["left"] == 0:
                    raise _Stop
                _state["left"] -= 1
                return real_add(self, rows)

            monkeypatch.setattr(ResultsStore, "add_rows", add_rows)
            try:
                runner_for(_config(lfw_sample, out), progress=False, log=lambda *a: None).run()
            except _Stop:
                pass
            monkeypatch.setattr(ResultsStore, "add_rows", real_add)
            partial = _rows(out) if (out / "results.sqlite").exists() else []
            assert set(partial) <= set(uninterrupted)  # what is stored is never wrong
        runner_for(_config(lfw_sample, out), progress=False, log=lambda *a: None).run()
        assert _rows(out) == uninterrupted
