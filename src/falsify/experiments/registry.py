"""The experiments ``falsify run`` knows, in the order the report shows them.

A run is composed here: :func:`configure` builds its settings (the experiment's defaults, then
its checks), :func:`runner_for` hands the one ``runner.Runner`` its experiment and the writer of
its outputs. The report is wired here too: each experiment whose results a summary holds hands
over its section (:meth:`Experiment.report_section`), and :func:`write_report` passes them to the
report's toolkit (``falsify.report``, which imports no experiment). Adding an experiment is one
module under ``falsify/experiments`` (and its template under ``falsify/report/templates``) plus
its line below and its name in ``falsify.choices`` (for ``falsify run NAME``); or, from outside
the package, :func:`register` (docs/method.md, "Architecture").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from ..choices import EXPERIMENTS as NAMES
from ..report.tables import write_summary_json
from . import exp_6_1, exp_6_2, exp_6_3, exp_6_4, exp_6_5, exp_6_6, known_truth, validity
from .base import Experiment
from .config import RunConfig
from .runner import Runner

#: name -> experiment, in report order
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (exp_6_1.EXPERIMENT, exp_6_2.EXPERIMENT, exp_6_3.EXPERIMENT, exp_6_4.EXPERIMENT, exp_6_5.EXPERIMENT,
                      exp_6_6.EXPERIMENT, validity.EXPERIMENT, known_truth.EXPERIMENT)
}

if tuple(EXPERIMENTS) != NAMES:  # pragma: no cover - a programming error, caught by the tests too
    raise RuntimeError(f"falsify.choices.EXPERIMENTS {NAMES} and the registry {tuple(EXPERIMENTS)} differ")


def get(name: str) -> Experiment:
    """The experiment called ``name`` (``ValueError`` naming the choices otherwise)."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}") from None


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the experiments runs and reports know (after the built-in ones), so
    that :func:`configure`, :func:`runner_for` and the report take it like theirs; returns it. A
    name already taken is refused. :func:`unregister` takes it away again."""
    if not experiment.name or experiment.name in EXPERIMENTS:
        raise ValueError(f"an experiment needs a name of its own, got {experiment.name!r} "
                         f"(taken: {', '.join(EXPERIMENTS)})")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    """Take away an experiment added by :func:`register` (the built-in ones stay)."""
    if name in NAMES:
        raise ValueError(f"experiment {name} is built in; only registered experiments can be taken away")
    EXPERIMENTS.pop(name, None)


def configure(config_file=None, *, flags: dict | None = None, **overrides) -> RunConfig:
    """The settings of a run (``RunConfig.resolve_values``: the defaults, an existing ``out``'s
    store, ``config_file``, ``flags``, ``overrides``), made by its experiment (its default methods,
    ``Experiment.configure``) and checked by it (:func:`check`)."""
    values = RunConfig.resolve_values(config_file, flags=flags, **overrides)
    experiment = get(values.get("experiment") or RunConfig.experiment)
    return check(experiment.configure(values))


def check(config: RunConfig) -> RunConfig:
    """``config``, once its experiment accepts it (``Experiment.check``, which fills in its own
    defaults; a setting given to an experiment that does not take it was refused by the schema)."""
    get(config.experiment).check(config)
    return config


def runner_for(config: RunConfig, **kw) -> Runner:
    """The runner of ``config`` (checked, :func:`check`): the one ``Runner``, handed the experiment
    ``config.experiment`` names and :func:`write_outputs`; ``kw``: progress, log, retry_errors,
    executor."""
    return Runner(check(config), get(config.experiment), write_outputs, **kw)


def of_summary(summary: Mapping) -> Experiment:
    """The experiment whose run wrote ``summary`` (6.1 when it does not say)."""
    return EXPERIMENTS.get(str(summary.get("experiment") or "6.1"), EXPERIMENTS["6.1"])


def experiments_in(summary: Mapping) -> list[Experiment]:
    """The experiments whose sections ``summary`` holds, in report order."""
    return [e for e in EXPERIMENTS.values() if e.present(summary)]


def sections(summary: Mapping, explanations: Sequence | None = None,
             pair_labels: Sequence[str] | None = None) -> list:
    """The report's sections of ``summary`` (:class:`falsify.report.section.Section`), one per
    experiment whose results it holds, in report order; ``explanations`` (example maps of a run,
    ``falsify.report.explain.PairExplanation``) and ``pair_labels`` let 6.1 draw its saliency grid."""
    out = [e.report_section(summary, explanations=explanations, pair_labels=pair_labels)
           for e in experiments_in(summary)]
    return [s for s in out if s is not None]


def write_report(out, summary: Mapping, explanations: Sequence | None = None,
                 pair_labels: Sequence[str] | None = None, figures: bool = True) -> list[Path]:
    """Write the report of ``summary`` (in memory) under ``out``: ``tables/*.tex``, the figures
    (unless ``figures`` is false) and ``report.html``, last; returns the paths written."""
    from ..report.figures import write_figures
    from ..report.tables import write_tables

    parts = sections(summary, explanations, pair_labels)
    written = write_tables(parts, out)
    if figures:
        written += write_figures(parts, out)
    written.append(write_page(out, summary, parts))
    return written


def write_page(out, summary: Mapping, parts: Sequence | None = None) -> Path:
    """Write ``out/report.html`` alone, of ``summary`` and its sections (``parts``; by default
    :func:`sections`), embedding the figures under ``out/figures``; returns its path. The keys and
    figures of every experiment are known to the page: none is listed under "Other"."""
    from ..report.html import write_report as write

    parts = sections(summary) if parts is None else parts
    return write(summary, parts, out, known_keys={e.key for e in EXPERIMENTS.values() if e.key},
                 known_figures={stem for e in EXPERIMENTS.values() for stem in e.figures})


def write_outputs(out, summary: dict, explanations=None) -> list[Path]:
    """What a run writes in ``out``: summary.json, then its report (:func:`write_report`) from the
    summary as written (its JSON, not the file read back). ``explanations``: (pair, explanation)
    of the example pairs, for 6.1's saliency grid."""
    out = Path(out)
    text = write_summary_json(out, summary)
    pair_labels = expl = None
    if explanations:
        expl = [e for _, e in explanations]
        pair_labels = [f"{'genuine' if p.same else 'impostor'}, cos {e.cosine:.3f}" for p, e in explanations]
    return [out / "summary.json"] + write_report(out, json.loads(text), expl, pair_labels)


def rewrite(out, figures: bool = True) -> Path:
    """``falsify report OUT``: the tables, figures and page of a run, rewritten from
    ``OUT/summary.json`` by the experiment that wrote it; returns the page's path (validity: its
    table). A missing, corrupt or foreign summary fails, naming the file, before anything is written."""
    from .base import load_raw_summary

    problem = unfinished(out)
    if problem:
        raise ValueError(problem)
    try:
        raw = load_raw_summary(out)
    except (OSError, ValueError):
        raw = {}  # the experiment's report_summary says what is wrong, naming the file
    experiment = of_summary(raw)
    summary = experiment.report_summary(out)
    return experiment.rewrite(Path(out), summary, write_report, figures=figures)


def unfinished(out) -> str | None:
    """One line when ``out`` holds the store of a run that has not finished (no summary.json: it
    was stopped, or failed, before its report): how far it got and the command that finishes it.
    None otherwise (no folder, no store, a finished run, a file that is not a store)."""
    from .store import count_rows, inspect_store

    out = Path(out)
    if (out / "summary.json").exists():
        return None
    try:
        stored = inspect_store(out / "results.sqlite")
        n_rows = sum(count_rows(p) for p in sorted(out.rglob("results.sqlite")))  # 6.4: each model's too
    except (OSError, ValueError):
        return None
    settings = (stored or {}).get("meta", {}).get("settings")
    if not settings:
        return None
    n_pairs = (settings.get("pairs_fingerprint") or {}).get("n_pairs", "?")
    got = f"{n_rows} row{'s' * (n_rows != 1)} stored for its {n_pairs} pairs"
    if not stored["runs"]:
        return (f"{out} holds a run that has not finished ({got}, no summary.json yet): rerun the 'falsify run' "
                f"command that made it, with --out {out}, to finish it")
    last = stored["runs"][-1]  # the stored settings are taken again (RunConfig.resolve); these are not among them
    flags = [f"--out {out}"] + (["--no-ceiling"] if last.get("ceiling") is False else []) \
        + ([f"--truth-min-effect {last['truth_min_effect']:g}"] if last.get("truth_min_effect") else []) \
        + (["--trust-pickle"] if last.get("trust_pickle") else [])
    command = f"falsify run {last.get('experiment', '6.1')} {' '.join(flags)}"
    return (f"{out} holds a run that has not finished ({n_rows} row{'s' * (n_rows != 1)} stored for its {n_pairs} "
            f"pairs, no summary.json yet): finish it with '{command}', which resumes it and writes the report")
