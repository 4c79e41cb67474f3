"""What an experiment declares, so that ``falsify run``, ``falsify report`` and the report page
iterate over experiments instead of naming them (``falsify.experiments.registry``).

An experiment is one module under ``falsify/experiments`` holding one :class:`Experiment`:

- ``runner(config)``: what ``falsify run NAME`` computes, as a resumable runner whose rows go to
  the run folder's store (``rows_of``: the experiment key of those rows; 6.2 reads 6.1's);
- its rows, declared as a row kind (``falsify.experiments.rows.RowKind``: the keys each pair
  needs, how they are cut into units, a computer that never writes), computed by the one driver
  ``RunSession.compute_rows`` on the run's executor (in-process or Ray);
- its analysis (rows -> the summary's section ``key``): ``extend(session, store, summary)`` for
  experiments that run on 6.1's rows (called by ``Runner`` once those rows are in the store);
- ``tables(summary)``: :class:`falsify.report.render.Table` objects (data frames; LaTeX through
  pandas' ``Styler.to_latex``, HTML through Jinja2);
- ``figures``: file stem -> caption, and ``write_figures`` that draws them;
- ``template``: the Jinja2 template of its section of ``report.html`` and ``context`` for it;
  ``lead_template``: what it puts at the top of the page, before "How to read" and the sections
  (6.1: the headline, the FR table and the FR figure);
- ``text(summary)``: what ``falsify run`` prints.

Nothing here imports torch: the registry is read by ``falsify --help``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


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

    def runner(self, config, **kw):
        """The runner ``falsify run NAME`` uses (it computes the rows and calls the analysis)."""
        raise NotImplementedError

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

    def write_figures(self, summary: Mapping, out_dir: Path, **kw: Any) -> list[Path]:
        """Draw its figures under ``out_dir/figures``; returns the paths written."""
        return []

    def context(self, summary: Mapping, out_dir: Path) -> dict:
        """Values for its template beyond ``summary``, ``experiment``, ``tables`` and ``figures``."""
        return {}

    def section(self, summary: Mapping, out_dir: Path) -> str:
        """Its section of report.html ("" when the summary does not hold it)."""
        return self._render(self.template, summary, out_dir)

    def lead(self, summary: Mapping, out_dir: Path) -> str:
        """Its lead: what report.html shows first, before "How to read" and every section ("" for none)."""
        return self._render(self.lead_template, summary, out_dir)

    def _render(self, template: str | None, summary: Mapping, out_dir: Path) -> str:
        """``template`` with ``summary``, ``experiment``, ``tables`` (name -> HTML), ``figures`` (stem ->
        HTML, for the PNGs under ``out_dir/figures``; each read only when the template shows it) and
        :meth:`context`."""
        if template is None or not self.present(summary):
            return ""
        from ..report.render import render, to_html

        tables = {t.name: to_html(t) for t in self.tables(summary)}
        figures = _Figures(Path(out_dir) / "figures", self.figures)
        return render(template, summary=summary, experiment=self, tables=tables, figures=figures,
                      **self.context(summary, out_dir)).strip()

    def text(self, summary: Mapping) -> str:
        """What ``falsify run`` prints of this experiment ("" for nothing)."""
        return ""

    def rewrite(self, out, figures: bool = True) -> Path:
        """``falsify report OUT`` on a run of this experiment: the tables, the figures that the
        summary alone allows (unless ``figures`` is false) and report.html, from ``OUT/summary.json``;
        returns the page's path. A missing, corrupt or foreign summary fails before anything is written."""
        from ..report.figures import write_figures
        from ..report.html import load_summary, write_report
        from ..report.tables import write_tables

        summary = load_summary(out)
        write_tables(summary, out)
        if figures:
            write_figures(summary, out)
        return write_report(out)

    def outputs(self, out) -> str:
        """The lines ``falsify run`` prints last: where the results are."""
        return f"results: {out}/results.sqlite\nreport:  {out}/report.html"


class _Figures(Mapping):
    """stem -> the figure as HTML, for each of ``captions`` whose PNG is in ``folder``, in that
    order; a figure is read and encoded when a template first shows it."""

    def __init__(self, folder: Path, captions: Mapping[str, str]) -> None:
        self._captions = {s: c for s, c in captions.items() if (folder / f"{s}.png").is_file()}
        self._folder, self._html = folder, {}

    def __getitem__(self, stem: str):
        if stem not in self._html:
            from ..report.render import figure_html

            self._html[stem] = figure_html(self._folder / f"{stem}.png", stem.replace("_", " "),
                                           self._captions[stem], stem)
        return self._html[stem]

    def __iter__(self):
        return iter(self._captions)

    def __len__(self) -> int:
        return len(self._captions)


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
