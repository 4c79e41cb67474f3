"""Rendering shared by every experiment: tables as data frames, LaTeX through pandas'
``Styler.to_latex``, HTML through Jinja2 templates (``falsify/report/templates``).

An experiment declares its tables as :class:`Table` objects (in its
:class:`~falsify.report.section.Section`): a data frame of plain-text cells (``None``: not
applicable; a tuple: several lines) and what the two renderings need (caption, label, two-line
LaTeX header, row classes). Each is rendered once to each (:attr:`Table.latex`, :attr:`Table.html`).
Nothing here knows an experiment.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

#: The n/a cell of the HTML tables.
NA_HTML = '<span class="na">&ndash;</span>'

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}
_MINUS = re.compile(r"(?<![\w.])-(?=\d)")


def latex_escape(text: Any) -> str:
    """``text`` as LaTeX text: the ten special characters and ``<``/``>`` escaped."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def tex_num(text: Any) -> str:
    """A cell as LaTeX: escaped, with a real minus sign before numbers (``-0.21`` -> ``$-$0.21``)."""
    return _MINUS.sub("$-$", latex_escape(text))


def tex_cell(cell: Any, align: str = "r") -> str:
    """A cell of one or more lines as LaTeX; ``None`` is ``--``; several lines become a nested
    top-aligned tabular (``\\\\{}`` so that a line starting with "[" is not an argument of ``\\\\``)."""
    if cell is None:
        return "--"
    if isinstance(cell, str):
        return tex_num(cell)
    if len(cell) == 1:
        return tex_num(cell[0])
    inner = r"\\{}".join(tex_num(x) for x in cell)
    return rf"\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}{inner}\end{{tabular}}"


@dataclass
class Table:
    """One table of an experiment, rendered to LaTeX (:func:`to_latex`) and HTML (:func:`to_html`).

    ``frame`` holds the cells, columns named by their plain header. LaTeX: ``tex_header`` gives per
    column (group, line 1, line 2) already in LaTeX; equal consecutive ``group`` keys that are not
    ``None`` become one ``\\multicolumn`` heading with a ``\\cmidrule`` under it (the group key is then
    shown); otherwise line 1 is shown. Without ``tex_header`` the header is one line of escaped column
    names. ``tex_groups`` maps a row position to a group heading (a spanning italic row, a rule above
    it unless it is the first row). HTML: ``html_header`` (raw HTML per column; default: the column
    names, escaped), ``html_sub_header``, ``row_class`` per row, ``split`` (rows from there on go in
    a second ``<tbody class="controls">``), ``numeric`` column positions. ``drop_empty_columns``: the
    HTML leaves out every column but the first whose cells are all n/a (e.g. mean d' under a
    deterministic fill); the LaTeX keeps them.
    """

    name: str
    frame: pd.DataFrame
    label: str = ""
    caption: str = ""  # LaTeX
    tex_header: Sequence[tuple[str | None, str, str]] | None = None
    tex_groups: dict[int, str] = field(default_factory=dict)
    tex_empty: str = "no rows"
    size: str = r"\small"
    row_sep: str | None = None
    html_id: str | None = None
    html_header: Sequence[str] | None = None
    html_sub_header: Sequence[str] | None = None
    row_class: Sequence[str] | None = None
    split: int | None = None
    numeric: Sequence[int] = ()
    first_is_method: bool = True
    drop_empty_columns: bool = True

    @property
    def header(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def cells(self) -> list[list]:
        """The cells as Python values (``None`` for n/a)."""
        return [[None if _missing(v) else v for v in row] for row in self.frame.itertuples(index=False, name=None)]

    @cached_property
    def latex(self) -> str:
        """The table as LaTeX (:func:`to_latex`), rendered once: the ``.tex`` file and the report's
        LaTeX sources are this text."""
        return to_latex(self)

    @cached_property
    def html(self) -> "Html":
        """The table as HTML (:func:`to_html`), rendered once."""
        return to_html(self)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def frame(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """A data frame of cells (object dtype: strings, tuples and None are kept as they are)."""
    return pd.DataFrame([list(r) for r in cells], columns=list(header), dtype=object)


# ---------------------------------------------------------------------------------------------
# LaTeX


def _tabular(table: Table) -> str:
    """The tabular of ``table``: pandas' ``Styler.to_latex`` (booktabs rules), a two-level column
    index for two-line headers; group rows and ``\\cmidrule`` under spanning headings added after."""
    df = table.frame.copy()
    n_cols = df.shape[1]
    align = "l" + "r" * (n_cols - 1)
    if df.empty:
        df = pd.DataFrame([["" for _ in range(n_cols)]], columns=df.columns, dtype=object)
    if table.tex_header is not None:
        keys = []
        for i, (group, top, bottom) in enumerate(table.tex_header):
            # equal level-0 keys are merged by the Styler: unique keys unless a group is wanted
            keys.append((f"g:{group}" if group is not None else f"c:{i}", f"{i}"))
        df.columns = pd.MultiIndex.from_tuples(keys)
        top = {k: (k[0][2:] if k[0].startswith("g:") else table.tex_header[int(k[1])][1]) for k in keys}
        shown0 = {k[0]: top[k] for k in keys}
        shown1 = {k[1]: table.tex_header[int(k[1])][2] for k in keys}
        styler = df.style.hide(axis="index")
        styler = styler.format_index(lambda v: shown0[v], axis=1, level=0)
        styler = styler.format_index(lambda v: shown1[v], axis=1, level=1)
    else:
        df.columns = [latex_escape(c) for c in df.columns]
        styler = df.style.hide(axis="index")
    styler = styler.format(tex_cell)
    tex = styler.to_latex(hrules=True, column_format=align, multicol_align="c")
    lines = tex.rstrip("\n").splitlines()
    if table.frame.empty:
        i = lines.index(r"\midrule")
        lines[i + 1] = rf"\multicolumn{{{n_cols}}}{{c}}{{{table.tex_empty}}} \\"
    if table.tex_header is not None:
        # \cmidrule under each multi-column group heading of the first header line
        spans, col = [], 1
        for cell in _split_row(lines[2]):
            m = re.fullmatch(r"\\multicolumn\{(\d+)\}\{c\}\{(.*)\}", cell.strip())
            width = int(m.group(1)) if m else 1
            if m and m.group(2).strip():
                spans.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
            col += width
        lines[3:3] = spans
    body_start = lines.index(r"\midrule") + 1
    for pos in sorted(table.tex_groups, reverse=True):
        group = [rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{table.tex_groups[pos]}}}}} \\"]
        if pos > 0:
            group.insert(0, r"\midrule")
        lines[body_start + pos : body_start + pos] = group
    if table.row_sep:
        body_end = lines.index(r"\bottomrule")
        rows = lines[body_start:body_end]
        spaced = []
        for i, r in enumerate(rows):
            if i:
                spaced.append(table.row_sep)
            spaced.append(r)
        lines[body_start:body_end] = spaced
    return "\n".join(lines)


def _split_row(line: str) -> list[str]:
    """The cells of one LaTeX row (``a & b \\\\``), split at unescaped ``&`` outside braces."""
    body = line.rstrip()
    if body.endswith(r"\\"):
        body = body[:-2]
    cells, depth, cur, prev = [], 0, "", ""
    for ch in body:
        if ch == "{" and prev != "\\":
            depth += 1
        elif ch == "}" and prev != "\\":
            depth -= 1
        if ch == "&" and prev != "\\" and depth == 0:
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        prev = ch
    cells.append(cur)
    return cells


def to_latex(table: Table) -> str:
    """``table`` as a LaTeX ``table`` float (needs ``booktabs`` and ``graphicx``): the caption and
    label, and the tabular shrunk to the line width only when it is wider."""
    return latex_environment().get_template("table.tex.j2").render(table=table, tabular=_tabular(table))


@lru_cache(maxsize=1)
def latex_environment():
    """The Jinja2 environment of the LaTeX templates: ``((( value )))`` and ``((* block *))``, since
    LaTeX itself is full of ``{%`` and ``{{``; nothing is escaped (the cells are LaTeX already)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("falsify.report", "templates"), autoescape=False,
                       block_start_string="((*", block_end_string="*))", variable_start_string="(((",
                       variable_end_string=")))", comment_start_string="((=", comment_end_string="=))",
                       undefined=StrictUndefined, keep_trailing_newline=True)


# ---------------------------------------------------------------------------------------------
# HTML


def escape(x: Any) -> str:
    return html.escape(str(x), quote=True)


from markupsafe import Markup as Html  # noqa: E402 (text that is already HTML: shown as it is)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` of a template: HTML (:class:`Html`) as it is, ``None`` as nothing,
    anything else escaped with :func:`html.escape` (quotes included, as ``&#x27;``)."""
    if value is None:
        return Html("")
    if hasattr(value, "__html__"):
        return value
    return Html(escape(value))


def html_cell(x: Any) -> Html:
    """A table cell: None is n/a, a tuple is several lines."""
    if _missing(x):
        return Html(NA_HTML)
    if isinstance(x, tuple):
        return Html("<br>".join(escape(v) for v in x))
    return Html(escape(x))


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the package's templates (``falsify/report/templates``)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("falsify.report", "templates"), autoescape=True,
                      finalize=_finalize, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters["cell"] = html_cell
    env.filters["html"] = Html
    env.filters["e"] = lambda x: Html(escape(x))
    return env


def render(template: str, **context: Any) -> str:
    """Render one of the package's templates."""
    return environment().get_template(template).render(**context)


def shown_columns(table: Table) -> list[int]:
    """Positions of the columns the HTML shows: all of them, or (``drop_empty_columns``) the first
    and every other that has a cell that is not n/a; all of them when there is no row."""
    rows = table.cells()
    n = len(table.header)
    if not table.drop_empty_columns or not rows:
        return list(range(n))
    return [i for i in range(n) if i == 0 or any(not _missing(r[i]) for r in rows)]


def to_html(table: Table) -> Html:
    """``table`` as an HTML table (``table.html.j2``), without its empty columns (:func:`shown_columns`)."""
    keep = shown_columns(table)
    header = list(table.html_header) if table.html_header is not None else [escape(h) for h in table.header]
    sub = None if table.html_sub_header is None else [table.html_sub_header[i] for i in keep]
    numeric = {j for j, i in enumerate(keep) if i in set(table.numeric)}
    rows = [[r[i] for i in keep] for r in table.cells()]
    return Html(render("table.html.j2", table=table, header=[Html(header[i]) for i in keep], sub_header=sub,
                       rows=rows, numeric=numeric).strip())


def png_display_width(data: bytes) -> int | None:
    """CSS width (px at 96 dpi) of a PNG from its IHDR width and pHYs resolution, so a 150-dpi figure
    is shown at its intended size (and sharp on high-density screens); None if unknown."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"pHYs" and length == 9:
            ppu = int.from_bytes(data[pos + 8 : pos + 12], "big")
            if data[pos + 16] == 1 and ppu > 0:  # unit: metre
                return max(1, round(width * 96 / (ppu * 0.0254)))
            return None
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return None


def figure_html(path: Path, alt: str, caption: str, fig_id: str) -> Html:
    """A figure embedded as a PNG data URI, with its caption (``figure.html.j2``)."""
    raw = Path(path).read_bytes()
    return Html(render("figure.html.j2", fig_id=fig_id, alt=alt, caption=caption, width=png_display_width(raw),
                       data=base64.b64encode(raw).decode("ascii")).strip())
