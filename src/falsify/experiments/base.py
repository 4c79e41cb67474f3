"""What an experiment declares, so that ``falsify run``, ``falsify report`` and the report page
iterate over experiments instead of naming them (``falsify.experiments.registry``).

An experiment is one module under ``falsify/experiments`` holding one :class:`Experiment`, and
one registration (its line in ``registry.EXPERIMENTS``, or ``registry.register``). Whoever
composes a run (``registry.configure`` then ``registry.runner_for``: ``falsify run NAME``) hands
the one ``runner.Runner`` its experiment; the runner names none. The experiment declares:

- its settings: :meth:`default_methods`, :meth:`check` (its own refusals, one line each, and its
  own settings' defaults; a setting that only some experiments take declares them in the schema,
  ``config.RunConfig``'s ``setting(..., experiments=...)``, which refuses it for the others);
  :meth:`result_settings` and :meth:`models`, what its store records and a resumed run must match;
- its run: :meth:`pairs` (the pairs it runs on), whether the run loads a model
  (:attr:`needs_model`; 6.4 composes one run per model instead), needs the model's prior
  (:attr:`needs_prior`) or its randomised copy (:attr:`needs_random_model`) whatever the settings;
- :meth:`compute` ``(session, store) -> summary``: by default 6.1's rows, 6.1's summary, then
  :meth:`extend`; ``session`` (``session.RunSession``) is all it sees of the run;
- its rows, declared as a row kind (``falsify.experiments.rows.RowKind``: the keys each pair
  needs, how they are cut into units, a computer that never writes), computed by the one driver
  ``RunSession.compute_rows`` on the run's executor (in-process or Ray);
- its analysis (rows -> the summary's section ``key``): in :meth:`compute`, or for experiments
  that run on 6.1's rows in ``extend(session, store, summary)``;
- :meth:`write`: what the run writes (by default summary.json and the report, through
  ``session.write_outputs``);
- what it hands the report, :meth:`Experiment.report_section`: a
  :class:`falsify.report.section.Section` made from the summary in memory, of
  - ``tables(summary)``: :class:`falsify.report.render.Table` objects (data frames; LaTeX through
    pandas' ``Styler.to_latex``, HTML through Jinja2; each rendered once);
  - ``figures`` (file stem -> caption) and ``drawings(summary)``: how to draw each figure the
    summary allows, so ``falsify report OUT`` redraws them;
  - ``template``, the Jinja2 template of its section of ``report.html``, and ``context(summary)``
    for it; ``lead_template``: what it puts at the top of the page, before "How to read" and the
    sections (6.1: the headline, the FR table and the FR figure);
- ``text(summary)``: what ``falsify run`` prints.

The report (``falsify.report``) never imports an experiment: the registry builds the sections and
passes them (``registry.write_report``). Nothing here imports torch: the registry is read by
``falsify --help``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..report.section import FigureSpec, Section


class Experiment:
    #: the name ``falsify run`` takes
    name: str = ""
    #: its section heading and the anchor of that section in report.html
    title: str = ""
    anchor: str = ""
    #: its entry in the report's navigation
    nav: str = ""
    #: the summary key of its section (None: the summary's top level, as 6.1)
    key: str | None = None
    #: its section's template (``falsify/report/templates``)
    template: str | None = None
    #: the template of its lead: the answer, shown first on the page (None: no lead)
    lead_template: str | None = None
    #: figure file stem -> caption, in the order the report shows them
    figures: dict[str, str] = {}

    #: the experiment key of the rows whose errors ``--retry-errors`` computes again (6.1's, which
    #: most experiments build on; an experiment with rows of its own names them)
    rows_of: str = "6.1"
    #: the run loads the model, calibrates the test and computes rows (6.4: False, its runs do)
    needs_model: bool = True
    #: the run needs the model's prior map whatever its methods and criterion (the validity study)
    needs_prior: bool = False
    #: the run's driver makes the randomised copy of the model whatever ``--sanity`` says (validity)
    needs_random_model: bool = False

    def default_methods(self) -> Sequence[str] | None:
        """The methods run when none are given (None: ``choices.DEFAULT_METHODS``)."""
        return None

    def configure(self, values: dict):
        """The ``RunConfig`` of ``values`` (a dict of settings) for this experiment: its default
        methods when none are given, then the config's own checks; :meth:`check` follows
        (``registry.configure``)."""
        from .config import RunConfig

        defaults = self.default_methods()
        if defaults is not None and not values.get("methods"):
            values = {**values, "methods": list(defaults)}
        return RunConfig(**values)

    def check(self, config) -> None:
        """Refuse (``ValueError``, one line naming the fix) a run configuration this experiment
        cannot run, before anything is loaded or written, and fill in the defaults of its own
        settings; by default every one is accepted. Called again on a checked config, it
        changes nothing."""

    def result_settings(self, config) -> dict:
        """The settings that decide this experiment's results (``RunConfig.result_settings``)."""
        return config.result_settings()

    def models(self, config) -> list[str]:
        """The models the run uses, as the settings name them (each file's sha256 goes in the
        store's settings)."""
        return [config.model]

    def pairs(self, config, log=None):
        """The pairs of a run (``session.load_run_pairs``; ``log`` gets the line saying when
        ``n_pairs`` asks for more than there are)."""
        from .session import load_run_pairs

        return load_run_pairs(config, log=log)

    def compute(self, session, store) -> dict:
        """The summary of the run, its rows computed into ``store`` (``session``:
        ``session.RunSession``, fixed before the first row). By default 6.1's rows (one test per
        (method, pair), ``executor.Rows61``), 6.1's summary, then :meth:`extend`."""
        import time

        from .analysis import summarise
        from .executor import Rows61
        from .truth_table import for_summary

        c = session.config
        session.compute_rows(store, Rows61(session.context(self.rows_of), self.rows_of))
        summary = summarise(store, c, session.pairs, session.model.name, session.threshold, elapsed_s=None,
                            started=session.started)
        summary["alignment"] = session.alignment()
        summary["test_validity"] = for_summary(summary)  # the known-truth benchmark's rates for this test
        self.extend(session, store, summary)  # 6.2, 6.5, ...: their analysis (and rows) on 6.1's
        summary["elapsed_s"] = time.perf_counter() - session.t0
        n_err = summary["n_errors"]
        if n_err:
            session.log(f"{n_err} error row{'s' * (n_err != 1)} (see the summary); after fixing the cause, rerun "
                        "with --retry-errors to compute them again")
        return summary

    def extend(self, session, store, summary: dict) -> None:
        """For experiments that run on 6.1's rows: compute what else they need (their own rows,
        declared as a row kind, ``rows.RowKind``, and computed by ``session.compute_rows``) and
        add their section to ``summary``. Called by :meth:`compute` once 6.1's rows are all in
        the store; ``session`` (``session.RunSession``) holds the run's pairs, model, calibrated
        test, prior, explainers and labels."""

    def write(self, session, summary: dict) -> None:
        """What the run writes once ``summary`` is computed: summary.json and the report
        (``session.write_outputs``), with the example maps of 6.1's saliency grid."""
        session.write_outputs(session.out, summary, session.grid_explanations())

    def present(self, summary: Mapping) -> bool:
        """Whether ``summary`` holds this experiment's section."""
        return self.key is not None and isinstance(summary.get(self.key), Mapping)

    def tables(self, summary: Mapping) -> list:
        """Its tables, as :class:`falsify.report.render.Table` (empty when not present)."""
        return []

    def drawings(self, summary: Mapping, explanations=None, pair_labels=None) -> dict[str, Callable[[], Any]]:
        """stem -> a function drawing that figure (a :class:`matplotlib.figure.Figure`, or None when it
        cannot be drawn after all), for each of :attr:`figures` that ``summary`` allows (and
        ``explanations``, the example maps of a run, when given)."""
        return {}

    def context(self, summary: Mapping) -> dict:
        """Values for its templates beyond ``summary``, ``experiment``, ``tables`` and ``figures``."""
        return {}

    def report_section(self, summary: Mapping, explanations=None, pair_labels=None) -> Section | None:
        """What it hands the report: its :class:`~falsify.report.section.Section`, made from
        ``summary`` (None when the summary does not hold it)."""
        if not self.present(summary):
            return None
        draw = self.drawings(summary, explanations=explanations, pair_labels=pair_labels)
        return Section(title=self.title, anchor=self.anchor, nav=self.nav, key=self.key,
                       tables=self.tables(summary),
                       figures=[FigureSpec(stem, caption, draw.get(stem)) for stem, caption in self.figures.items()],
                       template=self.template, lead_template=self.lead_template, context=self.context(summary))

    def text(self, summary: Mapping) -> str:
        """What ``falsify run`` prints of this experiment ("" for nothing)."""
        return ""

    def report_summary(self, out) -> dict:
        """``out/summary.json`` as ``falsify report OUT`` uses it, checked to be a summary of this
        experiment's runs: a missing, corrupt or foreign summary fails (one line, naming the file)
        before anything is written."""
        from ..report.html import load_summary

        return refresh_validity(load_summary(out))

    def rewrite(self, out, summary: Mapping, report: Callable[..., list[Path]], figures: bool = True) -> Path:
        """``falsify report OUT`` on a run of this experiment, given its :meth:`report_summary`:
        ``report`` (``registry.write_report``) writes the tables, the figures that the summary
        allows (unless ``figures`` is false) and report.html; returns the page's path."""
        return report(out, summary, figures=figures)[-1]

    def outputs(self, out) -> str:
        """The lines ``falsify run`` prints last: where the results are."""
        return f"results: {out}/results.sqlite\nreport:  {out}/report.html"


def refresh_validity(summary: dict) -> dict:
    """``summary`` with its ``test_validity`` (the known-truth benchmark's rates for its test, as
    the table held when the run was made) read again from today's table when the stored one holds
    no confirmation-half rates (not measured then, or pooled rates of the table's earlier schema);
    a summary without the key (before the table) is left as it is."""
    from ..report.reading import is_confirmation
    from .truth_table import for_summary

    tv = summary.get("test_validity")
    if isinstance(tv, Mapping) and not is_confirmation(tv):
        fresh = for_summary(summary)
        if fresh is not None:
            summary["test_validity"] = fresh
    return summary


def load_raw_summary(out) -> dict:
    """``out/summary.json`` as written, for experiments whose summary is not 6.1's schema (one-line
    errors naming the file)."""
    import json

    path = Path(out) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out} the output folder of 'falsify run'?")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun 'falsify run' with the same --out") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path} does not hold a JSON object; rerun 'falsify run' with the same --out")
    return summary
