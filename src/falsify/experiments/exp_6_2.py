"""Experiment 6.2: the falsification rate by the pair's verification margin.

Rows: those of 6.1 (``falsify run 6.2`` computes whichever are missing; on a 6.1 run folder it
reuses them). Analysis: :func:`margin_analysis` (FR per quartile of cos - threshold, Spearman's
rho between margin and verdict; every statistic counts pairs). Table 6.2, the FR-by-margin figure
and the report section ``exp_6_2.html.j2``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..report.tables import (
    as_float,
    as_int,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_rate_ci,
    latex_escape,
    method_rows,
    n_testable,
    rate_of,
    row_is_control,
    run_description,
    tex_num,
)
from .base import Experiment

KEY = "experiment_6_2"


def margin_analysis(rows_by_method: dict[str, list[dict]], threshold: float) -> dict:
    """Experiment 6.2: FR by quartile of the verification margin (cos - threshold), and the
    Spearman correlation of margin with the per-pair verdict (falsified = 1, passed = 0)."""
    from scipy.stats import spearmanr

    from ..falsification import stats
    from .analysis import _f

    margin_of = {}
    for rows in rows_by_method.values():
        for r in rows:
            if r["cosine"] is not None:
                margin_of[r["pair"]] = r["cosine"] - threshold
    if len(margin_of) < 4:
        raise ValueError(f"experiment 6.2 needs at least 4 pairs with a similarity, got {len(margin_of)}")
    values = np.array(sorted(margin_of.values()))
    edges = np.quantile(values, [0, 0.25, 0.5, 0.75, 1.0])

    def quartile(m: float) -> int:
        return int(min(3, np.searchsorted(edges[1:-1], m, side="right"))) + 1

    strata, corr = [], []
    for method, rows in rows_by_method.items():
        tested = [r for r in rows if r["verdict"] != "error" and r["pair"] in margin_of]
        for q in range(1, 5):
            inq = [r["verdict"] for r in tested if quartile(margin_of[r["pair"]]) == q]
            rate = stats.falsification_rate(inq) if inq else None
            strata.append({
                "method": method, "quartile": q, "margin_low": _f(edges[q - 1]), "margin_high": _f(edges[q]),
                "n_pairs": len(inq), "n_passed": rate.n_passed if rate else 0,
                "n_falsified": rate.n_falsified if rate else 0, "n_untestable": rate.n_untestable if rate else 0,
                "fr": _f(rate.rate) if rate else None, "ci_low": _f(rate.ci_low) if rate else None,
                "ci_high": _f(rate.ci_high) if rate else None,
            })
        testable = [r for r in tested if r["verdict"] in ("passed", "falsified")]
        x = [margin_of[r["pair"]] for r in testable]
        y = [1.0 if r["verdict"] == "falsified" else 0.0 for r in testable]
        rho = p = None
        if len(testable) >= 3 and np.ptp(y) > 0 and np.ptp(x) > 0:
            res = spearmanr(x, y)
            rho, p = _f(res.statistic), _f(res.pvalue)
        corr.append({"method": method, "n": len(testable), "spearman_rho": rho, "p": p})
    return {
        "threshold_cos": _f(threshold),
        "quartile_edges": [_f(e) for e in edges],
        "strata": strata,
        "correlation": corr,
        "unit": "pair",
    }


def exp_6_2(summary: Mapping) -> Mapping | None:
    """The 6.2 section of the summary, or None when 6.2 was not run (or has no strata)."""
    s = summary.get(KEY)
    if not isinstance(s, Mapping) or not s.get("strata"):
        return None
    return s


def quartiles_of(section: Mapping) -> list[tuple[int, float | None, float | None]]:
    """[(quartile, margin_low, margin_high)] in order, from the edges or the strata."""
    strata = [s for s in section.get("strata") or [] if isinstance(s, Mapping)]
    qs = sorted({as_int(s.get("quartile")) for s in strata if as_int(s.get("quartile")) is not None})
    edges = [as_float(e) for e in section.get("quartile_edges") or []]
    if not qs and len(edges) >= 2:
        qs = list(range(1, len(edges)))
    out = []
    for q in qs:
        lo = hi = None
        if len(edges) > q:
            lo, hi = edges[q - 1], edges[q]
        for s in strata:
            if as_int(s.get("quartile")) == q:
                lo = as_float(s.get("margin_low")) if lo is None else lo
                hi = as_float(s.get("margin_high")) if hi is None else hi
        out.append((q, lo, hi))
    return out


def methods_6_2(summary: Mapping, section: Mapping) -> list[str]:
    """Methods of 6.2, in the order of ``summary["methods"]`` then first appearance."""
    seen = [str(r["method"]) for r in method_rows(summary)]
    names = []
    for s in list(section.get("strata") or []) + list(section.get("correlation") or []):
        if isinstance(s, Mapping) and s.get("method") is not None and str(s["method"]) not in names:
            names.append(str(s["method"]))
    return [m for m in seen if m in names] + [m for m in names if m not in seen]


def stratum(section: Mapping, method: str, quartile: int) -> Mapping | None:
    for s in section.get("strata") or []:
        if isinstance(s, Mapping) and str(s.get("method")) == method and as_int(s.get("quartile")) == quartile:
            return s
    return None


def correlation_of(section: Mapping, method: str) -> Mapping | None:
    for c in section.get("correlation") or []:
        if isinstance(c, Mapping) and str(c.get("method")) == method:
            return c
    return None


def margin_range(lo: float | None, hi: float | None) -> str:
    f = lambda x: "?" if x is None else f"{x:+.2f}"  # noqa: E731
    return f"[{f(lo)}, {f(hi)}]"


def table_6_2_cells(summary: Mapping) -> tuple[list[str], list[str], list[list]] | None:
    """Header, sub-header (margin range of each quartile) and cells of table 6.2; None without 6.2.

    One row per method; one column per margin quartile, and a last column with Spearman's rho between
    margin and falsification. Quartile and rho cells are tuples of lines (``("60.0 (n=10)",
    "[31.3, 83.2]")``: FR % with the number of testable units, then the Wilson 95% CI; ``("-0.21",
    "p=0.20")``), the method cell a string; None where there is nothing.
    """
    section = exp_6_2(summary)
    if section is None:
        return None
    quarts = quartiles_of(section)
    header = ["Method"] + [f"Q{q}" for q, _, _ in quarts] + ["Spearman rho"]
    sub = [""] + [margin_range(lo, hi) for _, lo, hi in quarts] + ["(p)"]
    cells: list[list] = []
    for m in methods_6_2(summary, section):
        line: list = [m]
        for q, _, _ in quarts:
            s = stratum(section, m, q)
            if s is None:
                line.append(None)
                continue
            fr, lo, hi = rate_of(s)
            n = n_testable(s)
            n_text = "" if n is None else f" (n={n})"
            if fr is None:
                line.append(None if n is None else ("n/a" + n_text,))
                continue
            ci = fmt_rate_ci(None if lo is None or hi is None else 0.0, lo, hi)
            first = fmt_pct(fr) + n_text
            line.append((first, ci[ci.index("["):]) if ci and "[" in ci else (first,))
        c = correlation_of(section, m)
        rho = fmt_num(c.get("spearman_rho"), 2) if c else None
        if rho is not None:
            p = fmt_p(c.get("p"))
            line.append((rho, "p" + ("" if p.startswith("<") else "=") + p) if p else (rho,))
        else:
            line.append(None)
        cells.append(line)
    return header, sub, cells


def table_6_2(summary: Mapping):
    """Table 6.2 as a :class:`~falsify.report.render.Table` (None without 6.2); LaTeX label
    ``tab:exp-6-2``, HTML id ``table-6-2``."""
    from ..report.render import Table, escape, frame

    built = table_6_2_cells(summary)
    if built is None:
        return None
    header, sub, cells = built
    section = exp_6_2(summary) or {}
    unit = section.get("unit") or "pair"
    desc = run_description(summary)
    caption = (
        "Experiment 6.2: falsification rate by verification-margin quartile"
        + (f" ({latex_escape(desc)})" if desc else "")
        + r". Each cell: FR \% with the number $n$ of testable "
        + latex_escape(str(unit))
        + r"s, and below it the Wilson 95\% CI; the margin range of each quartile is given under its"
        r" name (margin 0 is the decision threshold). Last column: Spearman's $\rho$ between margin and"
        r" falsification, with its $p$; -- not available."
    )
    tex_header = ["Method"] + [latex_escape(h) for h in header[1:-1]] + [r"Spearman $\rho$"]
    tex_sub = [tex_num(x) for x in sub[:-1]] + [r"($p$)"]
    flags = {str(r["method"]): row_is_control(r) for r in method_rows(summary)}
    return Table(
        name="table_6_2", frame=frame(header, cells), label="tab:exp-6-2", caption=caption,
        tex_header=[(None, h, sub) for h, sub in zip(tex_header, tex_sub)], tex_empty="no strata",
        size=r"\footnotesize", row_sep=r"\addlinespace[3pt]", html_id="table-6-2",
        html_header=[escape(h).replace("Spearman rho", "Spearman &rho;") for h in header], html_sub_header=sub,
        row_class=["control" if flags.get(c[0], c[0] == "random") else "" for c in cells],
        numeric=range(1, len(header)),
    )


def table_6_2_tex(summary: Mapping) -> str | None:
    """Table 6.2 as a LaTeX ``table`` (booktabs); label ``tab:exp-6-2``; None when 6.2 is absent."""
    from ..report.render import to_latex

    table = table_6_2(summary)
    return None if table is None else to_latex(table)


def correlation_table(summary: Mapping):
    from ..report.render import Table, frame

    section = exp_6_2(summary) or {}
    corr = [c for c in section.get("correlation") or [] if isinstance(c, Mapping)]
    order = methods_6_2(summary, section)
    corr.sort(key=lambda c: order.index(str(c.get("method"))) if str(c.get("method")) in order else len(order))
    rows = [[c.get("method"), fmt_num(c.get("n"), 0), fmt_num(c.get("spearman_rho"), 3), fmt_p(c.get("p"))]
            for c in corr]
    return Table(name="correlation", frame=frame(["Method", "n", "Spearman rho", "p"], rows),
                 html_header=["Method", "n", "Spearman &rho;", "p"], html_id="correlation-table", numeric=range(1, 4))


# ---------------------------------------------------------------------------------------------


def _threshold_x(quarts) -> float | None:
    """Position of margin 0 on the quartile-index axis (quartile q spans q-0.5..q+0.5)."""
    for q, lo, hi in quarts:
        if lo is not None and hi is not None and lo <= 0.0 <= hi:
            return q - 0.5 + (0.0 - lo) / (hi - lo) if hi > lo else float(q)
    return None


def fr_vs_margin(summary: Mapping):
    """Experiment 6.2: falsification rate per verification-margin quartile, one line per method
    with Wilson 95% whiskers; x: quartile, labelled with its margin range; margin 0 marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from ..choices import is_control
    from ..report.figures import method_colours

    section = exp_6_2(summary)
    if section is None:
        raise ValueError("the summary has no experiment_6_2 strata")
    quarts = quartiles_of(section)
    methods = methods_6_2(summary, section)
    colours = method_colours(methods)
    fig = Figure(figsize=(8.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    k = len(methods)
    spread = 0.32
    flags = {str(r["method"]): row_is_control(r) for r in method_rows(summary)}
    for j, m in enumerate(methods):
        dx = (j - (k - 1) / 2) * (spread / max(k - 1, 1)) if k > 1 else 0.0
        xs, ys, lo_err, hi_err = [], [], [], []
        for q, _, _ in quarts:
            s = stratum(section, m, q)
            fr, lo, hi = rate_of(s) if s is not None else (None, None, None)
            xs.append(q + dx)
            ys.append(np.nan if fr is None else fr)
            lo_err.append(0.0 if fr is None or lo is None else max(fr - lo, 0.0))
            hi_err.append(0.0 if fr is None or hi is None else max(hi - fr, 0.0))
        control = flags.get(m, is_control(m))
        if all(np.isnan(ys)):
            m = f"{m} (no testable {section.get('unit') or 'pair'})"
        colour = colours[methods[j]]
        ax.errorbar(
            xs, ys, yerr=[lo_err, hi_err], color=colour, ecolor=colour,
            ls="--" if control else "-", marker="s" if control else "o", ms=4.5,
            lw=1.6 if control else 1.3, elinewidth=0.9, capsize=2.5, alpha=0.95, label=m,
        )
    x0 = _threshold_x(quarts)
    if x0 is not None:
        ax.axvline(x0, color="k", ls=":", lw=1.2, label="margin 0 (decision threshold)")
        ax.text(x0 - 0.04, 1.045, "margin < 0", ha="right", va="center", fontsize=8, color="0.25")
        ax.text(x0 + 0.04, 1.045, "margin > 0", ha="left", va="center", fontsize=8, color="0.25")
    ax.set_xticks([q for q, _, _ in quarts])
    ax.set_xticklabels(
        [f"Q{q}\n[{'?' if lo is None else f'{lo:+.2f}'}, {'?' if hi is None else f'{hi:+.2f}'}]" for q, lo, hi in quarts],
        fontsize=8.5,
    )
    if quarts:
        ax.set_xlim(quarts[0][0] - 0.5, quarts[-1][0] + 0.5)
    ax.set_xlabel("verification-margin quartile [margin range]")
    ax.set_ylim(0, 1.08)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("falsification rate")
    ax.grid(axis="y", lw=0.5, alpha=0.4)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("margin 0"))  # methods first
    ax.legend([handles[i] for i in order], [labels[i] for i in order],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    desc = run_description(summary)
    unit = section.get("unit") or "pair"
    ax.set_title("Experiment 6.2: falsification rate by verification margin"
                 + (f"\n{desc}; unit: {unit}" if desc else f"\nunit: {unit}"), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------


class Experiment62(Experiment):
    name = "6.2"
    title = "Experiment 6.2: falsification rate by verification margin"
    anchor = "exp-6-2"
    nav = "6.2 by margin"
    key = KEY
    template = "exp_6_2.html.j2"
    figures = {
        "fig_6_2_fr_vs_margin": (
            "Falsification rate per verification-margin quartile (x: quartile, with its margin range), with "
            "Wilson 95% whiskers; methods are offset sideways so whiskers do not overlap. The dotted line "
            "marks margin 0, the decision threshold."
        ),
    }

    def extend(self, session, store, summary: dict) -> None:
        """6.1's rows by the pair's verification margin (cos - the model's threshold)."""
        if session.threshold is None:
            raise ValueError("experiment 6.2 needs the model's decision threshold: run with calibration "
                             "(leave tau_high/tau_low/epsilon unset) or use a model with a threshold")
        methods = session.config.row_methods()
        ids = {p.id for p in session.pairs}
        rows = store.rows("6.1", session.model.name, methods, pairs=ids)
        summary[KEY] = margin_analysis({m: [r for r in rows if r["method"] == m] for m in methods}, session.threshold)

    def present(self, summary: Mapping) -> bool:
        return exp_6_2(summary) is not None

    def tables(self, summary: Mapping) -> list:
        table = table_6_2(summary)
        return [] if table is None else [table]

    def drawings(self, summary: Mapping, **kw) -> dict:
        if exp_6_2(summary) is None:
            return {}
        return {"fig_6_2_fr_vs_margin": lambda: fr_vs_margin(summary)}

    def context(self, summary: Mapping) -> dict:
        from ..report.render import to_html

        section = exp_6_2(summary) or {}
        edges = [as_float(e) for e in section.get("quartile_edges") or []]
        corr = [c for c in section.get("correlation") or [] if isinstance(c, Mapping)]
        return {"unit": section.get("unit") or "pair",
                "edges": ", ".join("?" if e is None else f"{e:+.3f}" for e in edges) if edges else None,
                "correlation": to_html(correlation_table(summary)) if corr else None}

    def text(self, summary: Mapping) -> str:
        analysis = summary[KEY]
        edges = analysis["quartile_edges"]
        head = "  ".join(f"Q{q} [{edges[q - 1]:+.3f},{edges[q]:+.3f}]" for q in range(1, 5))
        lines = [f"experiment 6.2: FR% by quartile of the margin cos - {analysis['threshold_cos']:.4f} (pairs per quartile)",
                 f"{'method':18s} {head}   rho     p"]
        rho = {c["method"]: c for c in analysis["correlation"]}
        methods = list(dict.fromkeys(s["method"] for s in analysis["strata"]))
        pct = lambda x: "  n/a" if x is None else f"{100 * x:5.1f}"  # noqa: E731
        for m in methods:
            cells = []
            for q in range(1, 5):
                s = next(s for s in analysis["strata"] if s["method"] == m and s["quartile"] == q)
                cells.append(f"{pct(s['fr'])} (n={s['n_pairs']:>3d})".ljust(len(f"Q{q} [+0.000,+0.000]")))
            c = rho.get(m, {})
            r = "  n/a" if c.get("spearman_rho") is None else f"{c['spearman_rho']:+.3f}"
            p = "  n/a" if c.get("p") is None else f"{c['p']:.3g}"
            lines.append(f"{m:18s} {'  '.join(cells)}  {r}  {p}")
        return "\n".join(lines)


EXPERIMENT = Experiment62()
