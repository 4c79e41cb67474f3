"""What an experiment declares, so that ``falsify run``, ``falsify report`` and the report page
iterate over experiments instead of naming them (``falsify.experiments.registry``).

An experiment is one module under ``falsify/experiments`` holding one :class:`Experiment`:

- ``runner(config)``: what ``falsify run NAME`` computes, as a resumable runner whose rows go to
  the run folder's store (``rows_of``: the experiment key of those rows; 6.2 reads 6.1's); by
  default the ``Runner`` of 6.1's rows and ``extend``, once ``check(config)`` (the experiment's
  own refusals, one line each) accepts the configuration;
- its rows, declared as a row kind (``falsify.experiments.rows.RowKind``: the keys each pair
  needs, how they are cut into units, a computer that never writes), computed by the one driver
  ``RunSession.compute_rows`` on the run's executor (in-process or Ray);
- its analysis (rows -> the summary's section ``key``): ``extend(session, store, summary)`` for
  experiments that run on 6.1's rows (called by ``Runner`` once those rows are in the store);
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
from typing import Any, Callable, Mapping

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

    def check(self, config) -> None:
        """Refuse (``ValueError``, one line naming the fix) a run configuration this experiment
        cannot run, before anything is loaded or written; by default every one is accepted."""

    def runner(self, config, **kw):
        """The runner ``falsify run NAME`` uses (it computes the rows and calls the analysis): by
        default, once :meth:`check` accepts ``config``, ``Runner``, which computes 6.1's rows and
        then calls :meth:`extend`."""
        self.check(config)
        from .runner import Runner

        return Runner(config, **kw)

    def extend(self, session, store, summary: dict) -> None:
        """For experiments that run on 6.1's rows: compute what else they need (their own rows,
        declared as a row kind, ``rows.RowKind``, and computed by ``session.compute_rows``) and
        add their section to ``summary``. Called by ``Runner`` once 6.1's rows are all in the
        store; ``session`` (``runner.RunSession``) holds the run's pairs, model, calibrated test,
        prior, explainers and labels."""

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

        return load_summary(out)

    def rewrite(self, out, summary: Mapping, report: Callable[..., list[Path]], figures: bool = True) -> Path:
        """``falsify report OUT`` on a run of this experiment, given its :meth:`report_summary`:
        ``report`` (``registry.write_report``) writes the tables, the figures that the summary
        allows (unless ``figures`` is false) and report.html; returns the page's path."""
        return report(out, summary, figures=figures)[-1]

    def outputs(self, out) -> str:
        """The lines ``falsify run`` prints last: where the results are."""
        return f"results: {out}/results.sqlite\nreport:  {out}/report.html"


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
