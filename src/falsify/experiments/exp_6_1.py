"""Experiment 6.1: the falsification rate of every attribution method.

Rows: one per (method, pair) under the experiment key ``6.1`` (``Runner``): the method explains
the probe face A of each pair against its partner's embedding f(B) and the map is put to the
falsification test. Analysis: ``falsify.experiments.analysis.summarise`` (per method: counts, FR
with a Wilson CI, mean distances; McNemar against the baselines and controls, Holm-corrected).
Table 6.1, the FR bar chart, the saliency grid; the report's lead (``exp_6_1_lead.html.j2``: the headline,
the FR table and figure) and its section (``exp_6_1.html.j2``: controls, comparisons, maps).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..choices import OTHER_REFERENCE, RANDOM_MODEL
from ..report import reading
from ..report.tables import (
    as_float,
    comparison_cell,
    criterion_class,
    criterion_explained,
    criterion_of,
    find_comparison,
    fmt_int,
    fmt_num,
    fmt_p,
    fmt_rate_ci,
    latex_escape,
    method_rows,
    n_testable,
    rate_of,
    row_is_control,
    run_description,
)
from .base import Experiment

#: Methods every other method is compared against in table 6.1 (McNemar, Holm-adjusted p).
REFERENCE_METHODS: tuple[str, ...] = ("random", "gradcam")

#: The controls each method must beat, columns of table 6.1 when they were run: the centre prior,
#: and the method's own maps on a randomised model (``METHOD@random-model``).
OWN_RANDOM_MODEL = "own random model"
CONTROL_COLUMNS: tuple[str, ...] = ("centre", OWN_RANDOM_MODEL)

#: Kinds of control: (name or ``@suffix``, label, what it is). Controls cannot be right about the
#: model on this image; captions and the report describe those a run has.
CONTROL_KINDS: tuple[tuple[str, str, str], ...] = (
    ("random", "random", "a random map"),
    ("centre", "centre", "the model's image-independent prior map (the mean of its own occlusion maps "
     "over untested images)"),
    ("edge", "edge", "the Sobel gradient magnitude of the image (model-free)"),
    (RANDOM_MODEL, "METHOD" + RANDOM_MODEL, "the method's map computed on a randomised copy of the model, "
     "tested on the real model"),
    (OTHER_REFERENCE, "METHOD" + OTHER_REFERENCE, "the method's map made against another pair's face"),
)


def control_kinds(names: Sequence[str]) -> list[tuple[str, str]]:
    """(label, description) of each kind of control among the row ``names``, in :data:`CONTROL_KINDS` order."""
    return [(label, text) for key, label, text in CONTROL_KINDS
            if any(n == key or (key.startswith("@") and n.endswith(key)) for n in names)]


def control_verdicts(summary: Mapping) -> list[Mapping]:
    """``summary["controls"]``: per checked method, whether it beats ``centre`` and its own
    randomised-model rows; empty when those controls were not run (or the summary predates them)."""
    return [v for v in summary.get("controls") or [] if isinstance(v, Mapping) and v.get("method") is not None]


#: the column of table 6.1 beside the plain FR: the method's FR on the pairs where the test's ceiling passes
CEILING_COLUMN = "FR where ceiling passes"


def ceiling_of(summary: Mapping) -> Mapping | None:
    """``summary["ceiling"]`` when the run searched the test's ceiling (None for summaries before
    it, runs with ``--no-ceiling``, and runs whose test the search does not support)."""
    c = summary.get("ceiling")
    return c if isinstance(c, Mapping) and isinstance(c.get("fr_where_ceiling_passes"), Mapping) else None


def ceiling_cell(summary: Mapping, method: str) -> str | None:
    """'33.3 [12.1, 64.6] (n=6)': the method's FR on the pairs where the ceiling passes, with its
    Wilson CI and the number of those pairs its map was testable on; None without one."""
    c = ceiling_of(summary)
    row = (c or {}).get("fr_where_ceiling_passes", {}).get(method)
    if not isinstance(row, Mapping):
        return None
    text = fmt_rate_ci(row.get("fr"), row.get("ci_low"), row.get("ci_high"))
    n = as_float(row.get("n"))
    return None if text is None else text + ("" if n is None else f" (n={int(n)})")


def ceiling_sentence(summary: Mapping) -> str | None:
    """The line on the ceiling's own result: how often even the best map the search finds is
    falsified (no map the search finds passes there); None without a ceiling."""
    c = ceiling_of(summary)
    if c is None:
        return None
    n, n_f = as_float(c.get("n")), as_float(c.get("n_falsified"))
    if not n:
        return "The test's ceiling: no pair had a testable ceiling."
    share, lo, hi = (as_float(c.get(k)) for k in ("share_falsified", "ci_low", "ci_high"))
    ci = "" if lo is None or hi is None else f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
    pct = "" if share is None else f", {100 * share:.1f}%{ci}"
    return (f"The test's ceiling (the best map a greedy search finds under the test's own regions, fill and "
            f"criterion) is falsified on {int(n_f)} of {int(n)} pairs{pct}: there no map the search finds passes. "
            "FR where ceiling passes: each method's FR on the pairs where the ceiling passes (n: those its map was "
            "testable on). The search is greedy: a lower bound on the best map.")


def control_label(name: Any) -> str:
    """'centre', or 'own random model' for a ``METHOD@random-model`` baseline."""
    return OWN_RANDOM_MODEL if str(name).endswith(RANDOM_MODEL) else str(name)


def beats_cell(verdict: Mapping | None) -> str | None:
    """'yes' when the method beats every control it was checked against, else 'no (centre, ...)'."""
    if verdict is None:
        return None
    if verdict.get("beats_all") is True:
        return "yes"
    missed = [control_label(b) for b in verdict.get("not_beaten") or []]
    return "no" + (f" ({', '.join(missed)})" if missed else "")


def _rate_text(row: Mapping | None) -> str | None:
    """'21.1% (95% CI 11.1–36.3%)'; None without a rate."""
    fr, lo, hi = rate_of(row) if row is not None else (None, None, None)
    if fr is None:
        return None
    return f"{100 * fr:.1f}%" + ("" if lo is None or hi is None else f" (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)")


def _pct_of(row: Mapping | None) -> str | None:
    fr = rate_of(row)[0] if row is not None else None
    return None if fr is None else f"{100 * fr:.1f}%"


def _beats(summary: Mapping, rows: Mapping[str, Mapping], method: str, control: str) -> bool | None:
    """Whether ``method`` is falsified significantly less often than ``control`` (the comparison's
    ``beats``; for summaries without it: significant and the lower rate); None when not compared."""
    c = find_comparison(summary, method, control)
    if c is None:
        return None
    if isinstance(c.get("beats"), bool) and c.get("method") == method:
        return c["beats"]
    fr, fr_c = rate_of(rows.get(method) or {})[0], rate_of(rows.get(control) or {})[0]
    return c.get("significant") is True and fr is not None and fr_c is not None and fr < fr_c


def headline(summary: Mapping) -> dict:
    """The answer of the run, for the top of the report: which methods are falsified significantly
    less often than their controls (McNemar, Holm-corrected), each with its FR and 95% CI and the
    controls' rates.

    ``kind``: "controls" (``summary["controls"]``: centre and the method's own randomised-model
    rows), "other" (those were not run; the comparisons with the controls that were, e.g. random),
    "none" (no method was compared with a control) or "empty" (no method row). ``items``: per
    method {method, fr, beats, controls: [{label, fr, beaten}]}, those that beat their controls
    first; ``beating``: their names; ``rates``: (method, fr) of every method, for "none"."""
    rows = {str(r["method"]): r for r in method_rows(summary)}
    methods = [m for m, r in rows.items() if not row_is_control(r)]
    controls = [m for m, r in rows.items() if row_is_control(r)]
    verdicts = control_verdicts(summary)
    items = []
    if verdicts:
        kind = "controls"
        for v in verdicts:
            m = str(v["method"])
            missed = [str(b) for b in v.get("not_beaten") or []]
            checked = [str(b) for b in v.get("checked") or []]
            items.append({"method": m, "fr": _rate_text(rows.get(m)), "beats": v.get("beats_all") is True,
                          "controls": [{"label": control_label(b), "fr": _pct_of(rows.get(b)), "beaten": b not in missed}
                                       for b in checked + [b for b in missed if b not in checked]]})
    else:
        kind = "other"
        for m in methods:
            against = [(b, _beats(summary, rows, m, b)) for b in controls]
            against = [(b, beat) for b, beat in against if beat is not None]
            if against:
                items.append({"method": m, "fr": _rate_text(rows.get(m)), "beats": all(b for _, b in against),
                              "controls": [{"label": b, "fr": _pct_of(rows.get(b)), "beaten": beat}
                                           for b, beat in against]})
        if not items:
            kind = "none" if methods else "empty"
    items = [i for i in items if i["beats"]] + [i for i in items if not i["beats"]]
    return {"kind": kind, "items": items, "beating": [i["method"] for i in items if i["beats"]],
            "rates": [(m, _rate_text(rows[m])) for m in methods],
            "centre_by_construction": getattr(criterion_class(criterion_of(summary)["criterion"]), "falsifies_centre", False)
            and any(c["label"] == "centre" for i in items for c in i["controls"])}


def control_columns(summary: Mapping) -> list[str]:
    """Those of :data:`CONTROL_COLUMNS` that some comparison of the summary was made against."""
    comps = [c for c in summary.get("comparisons") or [] if isinstance(c, Mapping)]
    cols = []
    if any("centre" in (c.get("method"), c.get("against")) for c in comps):
        cols.append("centre")
    if any(str(c.get("against")).endswith(RANDOM_MODEL) for c in comps):
        cols.append(OWN_RANDOM_MODEL)
    return cols


def _has_errors(rows: Sequence[Mapping]) -> bool:
    return any((as_float(r.get("n_error")) or 0) > 0 for r in rows)


def table_6_1_rows(summary: Mapping) -> list[tuple[Mapping, bool]]:
    """(row, is_control) of table 6.1: the methods in the summary's order, then the controls."""
    rows = [(r, row_is_control(r)) for r in method_rows(summary)]
    return [x for x in rows if not x[1]] + [x for x in rows if x[1]]


def table_6_1_cells(summary: Mapping) -> tuple[list[str], list[list[str | None]]]:
    """Plain-text header and cells of table 6.1: one row per method, in the summary's order, then
    the controls (:func:`table_6_1_rows`).

    Columns: method, passed, falsified, untestable, (errors, only when some method had one),
    FR % [95% CI], (where the run searched the test's ceiling: the FR on the pairs where the
    ceiling passes, :data:`CEILING_COLUMN`), mean d_high, mean d_low (radians), mean d', and the Holm-adjusted McNemar p
    against each of :data:`REFERENCE_METHODS` (``*``: significant); then, where they were run,
    against each of :data:`CONTROL_COLUMNS` and whether the method beats them ("yes", or "no"
    with those it does not beat; from ``summary["controls"]``).
    """
    ordered = table_6_1_rows(summary)
    rows = [r for r, _ in ordered]
    errors = _has_errors(rows)
    controls = control_columns(summary)
    verdicts = {str(v["method"]): v for v in control_verdicts(summary)}
    header = ["Method", "Passed", "Falsified", "Untestable"]
    if errors:
        header.append("Errors")
    ceiling = ceiling_of(summary) is not None
    header += ["FR % [95% CI]"] + ([CEILING_COLUMN] if ceiling else []) + ["d_high", "d_low", "d'"]
    header += [f"p vs {ref}" for ref in REFERENCE_METHODS + tuple(controls)]
    if verdicts:
        header.append("Beats controls")
    cells: list[list[str | None]] = []
    for r in rows:
        m = str(r["method"])
        fr, lo, hi = rate_of(r)
        line: list[str | None] = [m, fmt_int(r.get("n_passed")), fmt_int(r.get("n_falsified")), fmt_int(r.get("n_untestable"))]
        if errors:
            line.append(fmt_int(r.get("n_error")))
        line.append(fmt_rate_ci(fr, lo, hi))
        if ceiling:
            line.append(ceiling_cell(summary, m))
        line += [
            fmt_num(r.get("mean_d_high"), 3),
            fmt_num(r.get("mean_d_low"), 3),
            fmt_num(r.get("mean_d_prime"), 2),
        ]
        line += [comparison_cell(summary, m, ref) for ref in REFERENCE_METHODS]
        line += [comparison_cell(summary, m, m + RANDOM_MODEL if c == OWN_RANDOM_MODEL else c) for c in controls]
        if verdicts:
            line.append(beats_cell(verdicts.get(m)))
        cells.append(line)
    return header, cells


#: LaTeX header of table 6.1: (group, line 1, line 2) per plain header; the verdict counts sit under
#: a "Pairs" heading spanning them, so their own labels can be short.
_HEADER_6_1_TEX = {
    "Method": (None, "", "Method"),
    "Passed": ("Pairs", "", "pass"),
    "Falsified": ("Pairs", "", "fals."),
    "Untestable": ("Pairs", "", "untest."),
    "Errors": ("Pairs", "", "error"),
    "FR % [95% CI]": (None, r"FR \%", r"[95\% CI]"),
    CEILING_COLUMN: (None, r"FR \% where", r"ceiling passes"),
    "d_high": (None, "", r"$\bar d_{\mathrm{high}}$"),
    "d_low": (None, "", r"$\bar d_{\mathrm{low}}$"),
    "d'": (None, "", r"$\bar d'$"),
    "p vs " + OWN_RANDOM_MODEL: (None, r"$p$ vs own", r"rand.\ model"),
    "Beats controls": (None, "Beats", "controls"),
}

#: Plain header -> HTML header of table 6.1 (others are escaped), and the unit of each column (the
#: HTML's second header line; "p vs ..." columns: Holm-adjusted p).
_HTML_HEADER_6_1 = {
    "FR % [95% CI]": "FR",
    CEILING_COLUMN: "FR where<br>ceiling passes",
    "d_high": "mean d<sub>high</sub>",
    "d_low": "mean d<sub>low</sub>",
    "d'": "mean d&prime;",
    "p vs " + OWN_RANDOM_MODEL: "p vs own<br>random model",
    "Beats controls": "Beats<br>controls",
}
_HTML_UNIT_6_1 = {
    "Method": "", "Passed": "pairs", "Falsified": "pairs", "Untestable": "pairs", "Errors": "pairs",
    "FR % [95% CI]": "% [95% CI]", CEILING_COLUMN: "% [95% CI] (n)", "d_high": "rad", "d_low": "rad", "d'": "pooled SD", "Beats controls": "",
}


def _tex_header(h: str) -> tuple[str | None, str, str]:
    if h in _HEADER_6_1_TEX:
        return _HEADER_6_1_TEX[h]
    if h.startswith("p vs "):
        return None, r"$p$ vs", latex_escape(h[5:])
    return None, "", latex_escape(h)


def _criterion_tex(summary: Mapping) -> str:
    """The caption's sentence on the criterion: its own (``Criterion.explain_tex``: absolute
    thresholds, or beyond the prior by delta), else its name."""
    cls, c = criterion_explained(summary)
    text = None if cls is None else cls.explain_tex(c)
    return text if text is not None else f"Criterion: {latex_escape(c['criterion'])}."


def _controls_tex(summary: Mapping, header: Sequence[str]) -> str:
    """The caption's sentences on the controls among the rows and the columns comparing with them."""
    names = [str(r["method"]) for r, control in table_6_1_rows(summary) if control]
    kinds = control_kinds(names)
    text = ""
    if names:
        text += " Controls (below the rule) cannot be right about the model on this image"
        text += "".join(f"{'; ' if i else ': '}{latex_escape(label)}, {latex_escape(what)}"
                        for i, (label, what) in enumerate(kinds)) + "."
    if "p vs centre" in header or "p vs " + OWN_RANDOM_MODEL in header:
        text += (r" $p$ vs centre, vs own rand.\ model: against the centre prior and against the method's own"
                 r" maps on a randomised model.")
    if "Beats controls" in header:
        text += (" Beats controls: FR significantly (Holm) lower than each of those it was compared with;"
                 " no: it is not shown to explain this model on these images.")
    return text


def table_6_1(summary: Mapping):
    """Table 6.1 as a :class:`~falsify.report.render.Table`; LaTeX label ``tab:exp-6-1``, HTML id
    ``table-6-1``. The controls are grouped under a "Controls" row below a rule (LaTeX) and in a
    second table body (HTML); the caption states the criterion."""
    from ..report.render import Table, frame

    header, cells = table_6_1_cells(summary)
    flags = [control for _, control in table_6_1_rows(summary)]
    desc = run_description(summary)
    err = ", error: the method failed" if "Errors" in header else ""
    caption = (
        "Experiment 6.1: falsification rate (FR) of each attribution method"
        + (f" ({latex_escape(desc)})" if desc else "")
        + r". Pairs whose map passed the test, was falsified, was untestable"
        + err
        + r". FR = falsified / (passed + falsified), untestable maps excluded, with a Wilson 95\% CI."
        + r" $\bar d_{\mathrm{high}}$, $\bar d_{\mathrm{low}}$: mean "
        + latex_escape(reading.distance_words(summary))
        + r" when hiding the highest / lowest ranked features; $\bar d'$: mean separation. "
        + _criterion_tex(summary)
        + r" $p$: exact McNemar test on the pairs where both methods are testable, Holm-adjusted"
        r" (* significant at $\alpha = 0.05$); -- not applicable."
        + _controls_tex(summary, header)
        + ("" if ceiling_sentence(summary) is None else " " + latex_escape(ceiling_sentence(summary)))
        + ("" if reading.null_sentence(summary) is None else " " + latex_escape(reading.null_sentence(summary)))
    )
    split = flags.index(True) if True in flags else None
    return Table(
        name="table_6_1", frame=frame(header, cells), label="tab:exp-6-1", caption=caption,
        tex_header=[_tex_header(h) for h in header], tex_groups={} if split is None else {split: "Controls"},
        tex_empty="no methods", html_id="table-6-1",
        html_header=[_HTML_HEADER_6_1.get(h) or (f"p vs<br>{_escape(h[5:])}" if h.startswith("p vs ") else _escape(h))
                     for h in header],
        html_sub_header=[_HTML_UNIT_6_1.get(h, "Holm p") for h in header],
        row_class=["control" if f else "" for f in flags], split=split,
        numeric=[i for i, h in enumerate(header) if i and h != "Beats controls"],
    )


def _escape(text: str) -> str:
    from ..report.render import escape

    return escape(text)


def table_6_1_tex(summary: Mapping) -> str:
    """Table 6.1 as a LaTeX ``table`` (needs ``booktabs`` and ``graphicx``); label ``tab:exp-6-1``."""
    from ..report.render import to_latex

    return to_latex(table_6_1(summary))


def comparisons_table(summary: Mapping):
    """The paired comparisons of the run (McNemar), as a table (HTML only)."""
    from ..report.render import Table, frame

    comps = [c for c in summary.get("comparisons") or [] if isinstance(c, Mapping)]
    yes_no = lambda x: None if not isinstance(x, bool) else ("yes" if x else "no")  # noqa: E731
    with_beats = any("beats" in c for c in comps)
    rows = [[
        c.get("method"), c.get("against"), fmt_num(c.get("n_paired"), 0), fmt_num(c.get("n01"), 0),
        fmt_num(c.get("n10"), 0), fmt_p(c.get("p")), fmt_p(c.get("p_holm")), fmt_num(c.get("cohens_h"), 2),
        yes_no(c.get("significant")),
    ] + ([yes_no(c.get("beats"))] if with_beats else []) for c in comps]
    header = (["Method", "Against", "n paired", "n01", "n10", "p", "p (Holm)", "Cohen's h", "Significant"]
              + (["Beats"] if with_beats else []))
    units = ["", "", "pairs", "pairs", "pairs", "", "", "", ""] + ([""] if with_beats else [])
    return Table(name="comparisons", frame=frame(header, rows), html_id="comparisons-table", numeric=range(2, 8),
                 html_sub_header=units)


# ---------------------------------------------------------------------------------------------
# figures


def fr_bar_chart(summary: Mapping):
    """Falsification rate per method (bars) with Wilson 95% CI whiskers; the controls after the
    methods, grey and hatched, behind a dotted separator and with a legend entry "control"; a
    dashed line at random's rate. Methods without a testable pair are marked n/a."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    from ..report.figures import CONTROL_STYLE, RANDOM, method_colours

    ordered = table_6_1_rows(summary)
    rows = [r for r, _ in ordered]
    names = [str(r["method"]) for r in rows]
    colours = method_colours([m for m, (_, control) in zip(names, ordered) if not control])
    k = len(names)
    fig = Figure(figsize=(max(5.0, 0.78 * k + 1.9), 4.3), layout="constrained")
    ax = fig.add_subplot()
    random_fr = None
    rotate = k > 6 or max((len(n) for n in names), default=0) > 14
    for i, (m, (r, control)) in enumerate(zip(names, ordered)):
        fr, lo, hi = rate_of(r)
        if m == RANDOM:
            random_fr = fr
        if fr is None:
            ax.text(i, 0.015, "n/a", ha="center", va="bottom", fontsize=8, color="0.35")
            continue
        style = CONTROL_STYLE if control else dict(facecolor=colours[m], alpha=0.9, edgecolor="none")
        ax.bar(i, fr, width=0.66, linewidth=0.8, **style)
        top = fr
        if lo is not None and hi is not None:
            ax.errorbar(i, fr, yerr=[[max(fr - lo, 0.0)], [max(hi - fr, 0.0)]], fmt="none",
                        ecolor="0.1", elinewidth=1.1, capsize=4)
            top = hi
        ax.text(i, top + 0.015, f"{100 * fr:.0f}%", ha="center", va="bottom", fontsize=8)
    if random_fr is not None:
        ax.axhline(random_fr, ls="--", lw=1.0, color="0.3", zorder=0.5)
        # labelled at the line's right end, outside the bars (a legend would cover bar labels)
        ax.text(k - 0.4 + 0.08, random_fr, f"random\n{100 * random_fr:.1f}%", ha="left", va="center",
                fontsize=8, color="0.3", clip_on=False)
    n_methods = sum(not control for _, control in ordered)
    if 0 < n_methods < k:
        ax.axvline(n_methods - 0.5, ls=":", lw=1.0, color="0.35")
    if n_methods < k:
        fig.legend(handles=[Patch(linewidth=0.8, label="control", **CONTROL_STYLE)], loc="outside upper right",
                   fontsize=8, frameon=False)
    labels = []
    for m, r in zip(names, rows):
        n = n_testable(r)
        labels.append(m if n is None else f"{m} (n={n})" if rotate else f"{m}\nn={n}")
    ax.set_xticks(range(k))
    ax.set_xticklabels(labels, fontsize=8.5, rotation=35 if rotate else 0,
                       ha="right" if rotate else "center", rotation_mode="anchor" if rotate else "default")
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 1.08)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("falsification rate")
    ax.grid(axis="y", lw=0.5, alpha=0.4)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    desc = run_description(summary)
    ax.set_title("Experiment 6.1: falsification rate per method" + (f"\n{desc}" if desc else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# the experiment


class Experiment61(Experiment):
    name = "6.1"
    title = "Experiment 6.1: falsification rate per method"
    anchor = "exp-6-1"
    nav = "6.1 results"
    template = "exp_6_1.html.j2"
    lead_template = "exp_6_1_lead.html.j2"
    figures = {
        "fig_6_1_fr": (
            "Falsification rate per attribution method: falsified / (passed + falsified); untestable maps "
            "are excluded. Whiskers: Wilson 95% confidence interval; n: testable pairs. Controls (maps that "
            "cannot be right about the model on this image) are grey and hatched, right of the dotted line; "
            "the dashed line marks the random map's rate."
        ),
        "fig_6_1_saliency": (
            "Attribution maps of example pairs: each row is a pair (first face, explained against the "
            "second face's embedding), each column a method's map overlaid on the face (red: ranked highest)."
        ),
    }

    def present(self, summary: Mapping) -> bool:
        return "methods" in summary and summary.get("experiment") != "6.4"  # 6.4: one 6.1 run per model

    def tables(self, summary: Mapping) -> list:
        if summary.get("methods") is None:
            return []
        return [table_6_1(summary)]

    def drawings(self, summary: Mapping, explanations=None, pair_labels=None) -> dict:
        out = {}
        if method_rows(summary):
            out["fig_6_1_fr"] = lambda: fr_bar_chart(summary)
        if explanations:
            def saliency():
                from ..report.figures import saliency_grid

                present = list(getattr(explanations[0], "maps_a", {}) or {})
                order = [str(r["method"]) for r in method_rows(summary)]
                methods = [m for m in order if m in present] + [m for m in present if m not in order]
                return saliency_grid(explanations, methods, pair_labels)

            out["fig_6_1_saliency"] = saliency  # the maps are not in the summary: drawn by the run only
        return out

    def context(self, summary: Mapping) -> dict:
        from ..report.render import to_html

        header, cells = table_6_1_cells(summary)
        names = [str(r["method"]) for r, control in table_6_1_rows(summary) if control]
        verdicts = control_verdicts(summary)
        comps = [c for c in summary.get("comparisons") or [] if isinstance(c, Mapping)]
        return {
            "description": run_description(summary), "has_cells": bool(cells),
            "control_columns": "p vs centre" in header or "p vs own random model" in header,
            "beats_column": "Beats controls" in header, "control_names": names, "kinds": control_kinds(names),
            "verdicts": verdicts, "failing": [v for v in verdicts if v.get("beats_all") is not True],
            "not_beaten": {str(v["method"]): ", ".join(control_label(b) for b in v.get("not_beaten") or [])
                           for v in verdicts},
            "comparisons": to_html(comparisons_table(summary)) if comps else None,
            "with_beats": any("beats" in c for c in comps),
            "headline": headline(summary),
            "ceiling_sentence": ceiling_sentence(summary),
            "validity": reading.validity_sentence(summary),
            "placements": reading.placements(summary), "references": reading.references_sentence(summary),
            "distances": reading.distance_words(summary),
        }

    def extend(self, session, store, summary: dict) -> None:
        """The run's two references, after 6.1's rows, each under its own key: the null maps of
        each pair (``falsify.experiments.null_reference``; the summary's ``null_maps``, which says
        why when the run has no prior), and the test's ceiling on each pair
        (``falsify.experiments.ceiling``; ``ceiling``, left out with ``--no-ceiling``, and with a
        line saying why for a test the search does not support)."""
        from .null_reference import NULL_OF, RowsNull, null_summary

        if session.prior_map is None:
            summary["null_maps"] = {"skipped": "the null maps need the model's prior: the run has none (the absolute "
                                               "criterion and no centre among --methods)"}
        else:
            session.compute_rows(store, RowsNull(session.context(NULL_OF)))
            summary["null_maps"] = null_summary(store, session.pairs, session.model.name)
        if not session.config.ceiling:
            return
        from ..falsification.ceiling import CeilingSearch, check_searchable
        from .ceiling import CEILING_OF, RowsCeiling, ceiling_summary

        try:
            check_searchable(session.fconfig)
        except ValueError as exc:
            session.log(f"the test's ceiling is not searched: {exc}")
            summary["ceiling"] = {"skipped": str(exc)}
            return
        session.compute_rows(store, RowsCeiling(session.context(CEILING_OF)))
        summary["ceiling"] = ceiling_summary(store, session.pairs, session.model.name, session.config.row_methods(),
                                             "6.1", CeilingSearch().to_dict())

    def text(self, summary: Mapping) -> str:
        lines = [_run_table(summary)]
        if any(m.get("deletion") for m in summary.get("methods") or []):
            lines += ["", _deletion_table(summary)]
        lines += [f"{p['method']}: {p['text']}" for p in reading.placements(summary)]
        for sentence in (reading.references_sentence(summary), reading.validity_sentence(summary)):
            if sentence:
                lines.append(sentence)
        return "\n".join(lines)


def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def _run_table(summary: Mapping) -> str:
    ceiling = ceiling_of(summary)
    where = (ceiling or {}).get("fr_where_ceiling_passes", {})
    n = max([18, *(len(m["method"]) for m in summary["methods"])])  # a user's module.path:callable is long
    lines = [f"experiment {summary['experiment']} on {summary['data']['n_pairs']} pairs, model {summary['model']}",
             f"{'method':{n}s} {'pass':>5s} {'fals':>5s} {'untest':>6s} {'err':>4s}   FR%  [95% CI]      "
             + ("FR% where ceiling passes  " if ceiling else "") + "d_high  d_low  s/pair"]
    for m in summary["methods"]:
        dh = "  n/a" if m["mean_d_high"] is None else f"{m['mean_d_high']:.3f}"
        dl = "  n/a" if m["mean_d_low"] is None else f"{m['mean_d_low']:.3f}"
        sp = "" if m["seconds_per_pair"] is None else f"{m['seconds_per_pair']:.2f}"
        w = ""
        if ceiling:
            c = where.get(m["method"]) or {}
            w = f"{_pct(c.get('fr'))} [{_pct(c.get('ci_low'))},{_pct(c.get('ci_high'))}] n={c.get('n', 0):<3d}   "
        lines.append(f"{m['method']:{n}s} {m['n_passed']:5d} {m['n_falsified']:5d} {m['n_untestable']:6d} "
                     f"{m['n_error']:4d}  {_pct(m['fr'])} [{_pct(m['ci_low'])},{_pct(m['ci_high'])}]   {w}{dh}  {dl}  {sp}")
    if ceiling:
        sp = ceiling.get("seconds_per_pair")
        lines.append(f"{'ceiling':{n}s} {ceiling['n_passed']:5d} {ceiling['n_falsified']:5d} {ceiling['n_untestable']:6d} "
                     f"{ceiling['n_error']:4d}  {_pct(ceiling['share_falsified'])} [{_pct(ceiling['ci_low'])},"
                     f"{_pct(ceiling['ci_high'])}]   the test's ceiling (greedy search), not a method"
                     + ("" if sp is None else f"; {sp:.2f} s/pair"))
    elif isinstance(summary.get("ceiling"), Mapping) and summary["ceiling"].get("skipped"):
        lines.append(f"the test's ceiling was not searched: {summary['ceiling']['skipped']}")
    null = summary.get("null_maps")
    if isinstance(null, Mapping) and null.get("n_pairs") is not None:
        lines.append(f"{'null maps':{n}s} {null['n_passed']:5d} {null['n_falsified']:5d} {null['n_untestable']:6d} "
                     f"{null['n_error']:4d}  {_pct(null['fr'])} [{_pct(null['ci_low'])},{_pct(null['ci_high'])}]   "
                     "maps that know only the prior, a reference, not a method")
    elif isinstance(null, Mapping) and null.get("skipped"):
        lines.append(f"no null maps: {null['skipped']}")
    return "\n".join(lines)


def _deletion_table(summary: Mapping) -> str:
    """The deletion curves (``--deletion``) as text, one line per method that has them."""
    lines = ["deletion curves (genuine pairs the model accepts; cells blurred in the map's order)",
             f"{'method':28s} {'curves':>6s} {'flipped':>8s} {'median hidden at flip':>22s} {'mean area':>10s}"]
    for m in summary["methods"]:
        d = m.get("deletion")
        if d:
            lines.append(f"{m['method']:28s} {d['n']:6d} {100 * d['flipped']:7.0f}% {d['median_flip_fraction']:22.2f} "
                         f"{d['mean_area']:+10.4f}")
    return "\n".join(lines)


EXPERIMENT = Experiment61()
