"""What an experiment hands the report: its :class:`Section`, made from the summary in memory.

The report is a toolkit: it knows no experiment. Whoever writes a report (the experiments'
registry, ``falsify.experiments.registry.write_report``) asks each experiment whose results the
summary holds for its section and passes the sections, in order, to
:func:`~falsify.report.tables.write_tables`, :func:`~falsify.report.figures.write_figures` and
:func:`~falsify.report.html.write_report`. A section carries:

- its heading, anchor and navigation entry;
- its tables (:class:`~falsify.report.render.Table`), each rendered once to LaTeX and once to HTML
  (:attr:`Table.latex <falsify.report.render.Table.latex>`, :attr:`Table.html`), so the ``.tex``
  files, the page's tables and the page's LaTeX sources come from the same object;
- its figures (:class:`FigureSpec`): a stem, a caption, and how to draw it from the summary
  (``None`` when the summary alone does not allow it: the figure is then shown if a run wrote it);
- its Jinja2 templates (the section's, and the lead's: what the page shows first) and the
  values they use beyond ``summary``, ``experiment`` (the section), ``tables`` and ``figures``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .render import Table


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a section: written as ``figures/<stem>.png|pdf``, shown with ``caption``.

    ``draw`` makes it (a :class:`matplotlib.figure.Figure`, or ``None`` when it cannot be made
    after all, e.g. its images are gone); ``draw`` itself is ``None`` for a figure the summary
    alone does not allow (6.1's saliency grid without the maps): the report then shows the file a
    run wrote, if there is one."""

    stem: str
    caption: str
    draw: Callable[[], "Figure | None"] | None = None


@dataclass
class Section:
    """One experiment's part of the report (see the module's docstring)."""

    title: str
    anchor: str
    nav: str
    #: the summary key it shows (None: the summary's top level, as 6.1)
    key: str | None = None
    tables: Sequence["Table"] = ()
    figures: Sequence[FigureSpec] = ()
    #: the template of its section of report.html (None: no section)
    template: str | None = None
    #: the template of its lead, shown first on the page (None: no lead)
    lead_template: str | None = None
    #: values for the templates beyond summary, experiment, tables and figures
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def captions(self) -> dict[str, str]:
        """stem -> caption of its figures, in the order the report shows them."""
        return {f.stem: f.caption for f in self.figures}
