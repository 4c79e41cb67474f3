"""Result tables of experiments 6.1 and 6.2, from ``summary.json``.

The cells are built once, as plain text (:func:`table_6_1_cells`, :func:`table_6_2_cells`), and
rendered as LaTeX here (booktabs; :func:`table_6_1_tex`, :func:`table_6_2_tex`) and as HTML by
:mod:`falsify.report.html`, so both show the same numbers. A cell of ``None`` means "not
applicable / not available" and is written ``--`` in LaTeX.

Every key of the summary may be absent or null (NaN is written as null): such cells are n/a.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

from ..choices import DETERMINISTIC_FILLS, OTHER_REFERENCE, RANDOM_MODEL, is_control

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

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: Any) -> str:
    """``text`` as LaTeX text: the ten special characters and ``<``/``>`` escaped."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


# ---------------------------------------------------------------------------------------------
# number formatting (None for anything missing or non-finite)


def as_float(x: Any) -> float | None:
    """A finite float, or None (for None, NaN, inf, and anything that is not a number)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def as_int(x: Any) -> int | None:
    f = as_float(x)
    return None if f is None else int(round(f))


def fmt_num(x: Any, digits: int = 3) -> str | None:
    f = as_float(x)
    return None if f is None else f"{f:.{digits}f}"


def fmt_int(x: Any) -> str | None:
    i = as_int(x)
    return None if i is None else str(i)


def fmt_pct(x: Any, digits: int = 1) -> str | None:
    """A proportion in [0,1] as a percentage without the sign: 0.2105 -> '21.1'."""
    f = as_float(x)
    return None if f is None else f"{100.0 * f:.{digits}f}"


def fmt_rate_ci(rate: Any, low: Any, high: Any) -> str | None:
    """'21.1 [11.0, 36.0]' (percent); the CI is left out when it is missing; None without a rate."""
    r = fmt_pct(rate)
    if r is None:
        return None
    lo, hi = fmt_pct(low), fmt_pct(high)
    return r if lo is None or hi is None else f"{r} [{lo}, {hi}]"


def fmt_p(p: Any) -> str | None:
    """A p-value: '<0.001', three decimals below 0.1, two above (e.g. '0.035', '0.42', '1.00')."""
    f = as_float(p)
    if f is None:
        return None
    if f < 0.001:
        return "<0.001"
    if f < 0.1:
        return f"{f:.3f}"
    return f"{min(f, 1.0):.2f}"


def wilson_ci(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials (95% by default); None when n == 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------
# summary access


def method_rows(summary: Mapping) -> list[dict]:
    """The summary's per-method rows (``summary["methods"]``), skipping anything malformed."""
    rows = summary.get("methods") or []
    return [r for r in rows if isinstance(r, Mapping) and r.get("method") is not None]


def rate_of(row: Mapping) -> tuple[float | None, float | None, float | None]:
    """(fr, ci_low, ci_high) of a method or stratum row; computed from the counts where absent."""
    fr, lo, hi = as_float(row.get("fr")), as_float(row.get("ci_low")), as_float(row.get("ci_high"))
    n_p, n_f = as_int(row.get("n_passed")), as_int(row.get("n_falsified"))
    if fr is None and "fr" not in row and n_p is not None and n_f is not None and n_p + n_f > 0:
        fr = n_f / (n_p + n_f)
    if fr is not None and (lo is None or hi is None) and n_p is not None and n_f is not None:
        ci = wilson_ci(n_f, n_p + n_f)
        if ci is not None:
            lo, hi = ci
    return fr, lo, hi


def n_testable(row: Mapping) -> int | None:
    n_p, n_f = as_int(row.get("n_passed")), as_int(row.get("n_falsified"))
    return None if n_p is None or n_f is None else n_p + n_f


def find_comparison(summary: Mapping, method: str, against: str) -> Mapping | None:
    """The comparison of ``method`` with ``against`` (either order: McNemar's test is symmetric)."""
    for c in summary.get("comparisons") or []:
        if not isinstance(c, Mapping):
            continue
        if (c.get("method"), c.get("against")) in ((method, against), (against, method)):
            return c
    return None


def comparison_cell(summary: Mapping, method: str, against: str) -> str | None:
    """Holm-adjusted McNemar p of method vs against, '*' appended when significant; None if n/a."""
    if method == against:
        return None
    c = find_comparison(summary, method, against)
    if c is None:
        return None
    p = fmt_p(c.get("p_holm"))
    if p is None:
        return None
    return p + ("*" if c.get("significant") is True else "")


def row_is_control(row: Mapping) -> bool:
    """Whether a method row is a control: its ``control`` flag, or (older summaries) its name."""
    flag = row.get("control")
    return flag if isinstance(flag, bool) else is_control(str(row["method"]))


def control_kinds(names: Sequence[str]) -> list[tuple[str, str]]:
    """(label, description) of each kind of control among the row ``names``, in :data:`CONTROL_KINDS` order."""
    return [(label, text) for key, label, text in CONTROL_KINDS
            if any(n == key or (key.startswith("@") and n.endswith(key)) for n in names)]


def control_verdicts(summary: Mapping) -> list[Mapping]:
    """``summary["controls"]``: per checked method, whether it beats ``centre`` and its own
    randomised-model rows; empty when those controls were not run (or the summary predates them)."""
    return [v for v in summary.get("controls") or [] if isinstance(v, Mapping) and v.get("method") is not None]


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


def control_columns(summary: Mapping) -> list[str]:
    """Those of :data:`CONTROL_COLUMNS` that some comparison of the summary was made against."""
    comps = [c for c in summary.get("comparisons") or [] if isinstance(c, Mapping)]
    cols = []
    if any("centre" in (c.get("method"), c.get("against")) for c in comps):
        cols.append("centre")
    if any(str(c.get("against")).endswith(RANDOM_MODEL) for c in comps):
        cols.append(OWN_RANDOM_MODEL)
    return cols


def criterion_of(summary: Mapping) -> dict:
    """The falsification criterion of the run: ``{"criterion", "delta", "calibration", "tau_high",
    "tau_low", "epsilon"}``. ``criterion`` is "absolute" when not recorded (runs before the
    beyond-prior criterion); ``calibration`` is ``prior["delta"]`` (``{delta, quantile, n,
    excess_median}``) when delta was calibrated, else None; numbers are None when not recorded."""
    fals = summary.get("falsification") if isinstance(summary.get("falsification"), Mapping) else {}
    cfg = _config(summary)
    prior = summary.get("prior") if isinstance(summary.get("prior"), Mapping) else {}
    cal = prior.get("delta") if isinstance(prior.get("delta"), Mapping) else None

    def value(key: str) -> float | None:
        v = as_float(fals.get(key))
        return as_float(cfg.get(key)) if v is None else v

    delta = value("delta")
    if delta is None and cal is not None:
        delta = as_float(cal.get("delta"))
    calibrated = cal is not None and delta is not None and as_float(cal.get("delta")) == delta
    out = {"criterion": fals.get("criterion") or cfg.get("criterion") or "absolute", "delta": delta,
           "calibration": cal if calibrated else None}
    out.update((k, value(k)) for k in ("tau_high", "tau_low", "epsilon"))
    return out


def _has_errors(rows: Sequence[Mapping]) -> bool:
    return any((as_int(r.get("n_error")) or 0) > 0 for r in rows)


# ---------------------------------------------------------------------------------------------
# table 6.1


def table_6_1_rows(summary: Mapping) -> list[tuple[Mapping, bool]]:
    """(row, is_control) of table 6.1: the methods in the summary's order, then the controls."""
    rows = [(r, row_is_control(r)) for r in method_rows(summary)]
    return [x for x in rows if not x[1]] + [x for x in rows if x[1]]


def table_6_1_cells(summary: Mapping) -> tuple[list[str], list[list[str | None]]]:
    """Plain-text header and cells of table 6.1: one row per method, in the summary's order, then
    the controls (:func:`table_6_1_rows`).

    Columns: method, passed, falsified, untestable, (errors, only when some method had one),
    FR % [95% CI], mean d_high, mean d_low (radians), mean d', and the Holm-adjusted McNemar p
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
    header += ["FR % [95% CI]", "d_high", "d_low", "d'"]
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
        line += [
            fmt_rate_ci(fr, lo, hi),
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


def _config(summary: Mapping) -> Mapping:
    c = summary.get("config")
    return c if isinstance(c, Mapping) else {}


def n_pairs_of(summary: Mapping) -> int | None:
    data = summary.get("data") if isinstance(summary.get("data"), Mapping) else {}
    for v in (data.get("n_pairs"), _config(summary).get("n_pairs")):
        if as_int(v) is not None:
            return as_int(v)
    return None


def fill_and_k(summary: Mapping) -> tuple[Any, Any]:
    """(fill, K) as recorded: from the falsification test's settings, else from the run's config."""
    fals = summary.get("falsification") if isinstance(summary.get("falsification"), Mapping) else {}
    cfg = _config(summary)
    fill = fals.get("fill") or cfg.get("fill")
    k = fals.get("K") if fals.get("K") is not None else cfg.get("K")
    return fill, k


def is_deterministic_fill(fill: Any) -> bool:
    """Whether ``fill`` gives the same counterfactual every time (one sample per region is drawn)."""
    return fill in DETERMINISTIC_FILLS


def effective_k(summary: Mapping) -> int | None:
    """Counterfactuals actually drawn per region: 1 for a deterministic fill (blur, mean, zero),
    K otherwise (as ``FalsificationConfig.k_effective``); None when the summary does not say."""
    fill, k = fill_and_k(summary)
    return 1 if is_deterministic_fill(fill) else as_int(k)


def k_text(summary: Mapping) -> str | None:
    """'K = 8', or 'K = 1 (deterministic fill)'; None when the summary does not say."""
    k = effective_k(summary)
    if k is None:
        return None
    return f"K = {k}" + (" (deterministic fill)" if is_deterministic_fill(fill_and_k(summary)[0]) else "")


def run_description(summary: Mapping) -> str:
    """'40 pairs, model dlib-resnet, K = 8, fill noise' from whatever the summary holds; K is the
    number of counterfactuals actually drawn per region (:func:`k_text`)."""
    cfg = _config(summary)
    parts = []
    n = n_pairs_of(summary)
    if n is not None:
        parts.append(f"{n} pairs")
    model = summary.get("model") or cfg.get("model")
    if model:
        parts.append(f"model {model}")
    k = k_text(summary)
    if k:
        parts.append(k)
    fill = fill_and_k(summary)[0]
    if fill:
        parts.append(f"fill {fill}")
    return ", ".join(str(p) for p in parts)


#: LaTeX header of table 6.1: (line 1, line 2) per plain header; the verdict counts sit under a
#: "Pairs" heading spanning them, so their own labels can be short.
_HEADER_6_1_TEX = {
    "Method": ("", "Method"),
    "Passed": (None, "pass"),
    "Falsified": (None, "fals."),
    "Untestable": (None, "untest."),
    "Errors": (None, "error"),
    "FR % [95% CI]": (r"FR \%", r"[95\% CI]"),
    "d_high": ("", r"$\bar d_{\mathrm{high}}$"),
    "d_low": ("", r"$\bar d_{\mathrm{low}}$"),
    "d'": ("", r"$\bar d'$"),
    "p vs " + OWN_RANDOM_MODEL: (r"$p$ vs own", r"rand.\ model"),
    "Beats controls": ("Beats", "controls"),
}

_MINUS = re.compile(r"(?<![\w.])-(?=\d)")


def _tex_num(text: Any) -> str:
    """A cell as LaTeX: escaped, with a real minus sign before numbers (``-0.21`` -> ``$-$0.21``)."""
    return _MINUS.sub("$-$", latex_escape(text))


def _tex_cell(cell: str | None) -> str:
    return "--" if cell is None else _tex_num(cell)


def _tex_header_6_1(header: Sequence[str]) -> list[str]:
    """Two header lines and the rule under the "Pairs" heading."""
    first: list[str] = []
    second: list[str] = []
    counts = [i for i, h in enumerate(header) if _HEADER_6_1_TEX.get(h, ("", ""))[0] is None]
    for i, h in enumerate(header):
        if h in _HEADER_6_1_TEX:
            a, b = _HEADER_6_1_TEX[h]
        elif h.startswith("p vs "):
            a, b = r"$p$ vs", latex_escape(h[5:])
        else:
            a, b = "", latex_escape(h)
        if a is None:
            if i == counts[0]:
                first.append(rf"\multicolumn{{{len(counts)}}}{{c}}{{Pairs}}")
        else:
            first.append(a)
        second.append(b)
    lines = [" & ".join(first) + r" \\"]
    if counts:
        lines.append(rf"\cmidrule(lr){{{counts[0] + 1}-{counts[-1] + 1}}}")
    lines.append(" & ".join(second) + r" \\")
    return lines


def _criterion_tex(summary: Mapping) -> str:
    """The caption's sentence on the criterion: absolute thresholds, or beyond the prior by delta."""
    c = criterion_of(summary)
    if c["criterion"] == "beyond-prior":
        delta = r"$\delta$" if c["delta"] is None else rf"$\delta = {c['delta']:.3f}$ rad"
        text = (r"Criterion: beyond the prior; a map passes iff its margin $d_{\mathrm{high}} - d_{\mathrm{low}}$"
                r" exceeds the margin of the model's prior map on the same image by more than " + delta)
        cal = c["calibration"]
        if cal is not None:
            q, n = as_float(cal.get("quantile")), as_int(cal.get("n"))
            text += (" (calibrated: the " + ("" if q is None else rf"{100 * q:g}\% ") + "quantile of the excess"
                     " reached by maps that know only the prior" + ("" if n is None else f", {n} tests") + ")")
        return text + "."
    if c["criterion"] != "absolute":
        return f"Criterion: {latex_escape(c['criterion'])}."
    text = (r"Criterion: absolute thresholds; a map passes iff $d_{\mathrm{high}} > \tau_{\mathrm{high}}$,"
            r" $d_{\mathrm{low}} < \tau_{\mathrm{low}}$ and $d_{\mathrm{high}} - d_{\mathrm{low}} \ge \epsilon$")
    if None not in (c["tau_high"], c["tau_low"], c["epsilon"]):
        text += (rf" ($\tau_{{\mathrm{{high}}}} = {c['tau_high']:.3f}$, $\tau_{{\mathrm{{low}}}} = {c['tau_low']:.3f}$,"
                 rf" $\epsilon = {c['epsilon']:.3f}$ rad)")
    return text + "."


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


def table_6_1_tex(summary: Mapping) -> str:
    """Table 6.1 as a LaTeX ``table`` (needs ``booktabs`` and ``graphicx``); label ``tab:exp-6-1``.
    The controls are grouped under a "Controls" row below a rule; the caption states the criterion."""
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
        r" $\bar d_{\mathrm{high}}$, $\bar d_{\mathrm{low}}$: mean geodesic embedding shift (radians)"
        r" when hiding the highest / lowest ranked features; $\bar d'$: mean separation. "
        + _criterion_tex(summary)
        + r" $p$: exact McNemar test on the pairs where both methods are testable, Holm-adjusted"
        r" (* significant at $\alpha = 0.05$); -- not applicable."
        + _controls_tex(summary, header)
    )
    rows = [" & ".join(_tex_cell(c) for c in line) + r" \\" for line in cells]
    if True in flags:  # the controls come last (table_6_1_rows): a rule and a group heading above them
        first = flags.index(True)
        group = rf"\multicolumn{{{len(header)}}}{{l}}{{\textit{{Controls}}}} \\"
        rows[first:first] = [r"\midrule"] * (first > 0) + [group]
    if not rows:
        rows = [rf"\multicolumn{{{len(header)}}}{{c}}{{no methods}} \\"]
    return _tex_table(caption, "tab:exp-6-1", "l" + "r" * (len(header) - 1), _tex_header_6_1(header), rows)


# ---------------------------------------------------------------------------------------------
# table 6.2


def exp_6_2(summary: Mapping) -> Mapping | None:
    """The 6.2 section of the summary, or None when 6.2 was not run (or has no strata)."""
    s = summary.get("experiment_6_2")
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


def _tex_lines(cell, align: str = "r") -> str:
    """A cell of one or more lines; several lines become a nested top-aligned tabular."""
    if cell is None:
        return "--"
    if isinstance(cell, str):
        return _tex_num(cell)
    if len(cell) == 1:
        return _tex_num(cell[0])
    # "\\{}" so that a line starting with "[" is not read as the optional argument of "\\"
    inner = r"\\{}".join(_tex_num(x) for x in cell)
    return rf"\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}{inner}\end{{tabular}}"


def table_6_2_tex(summary: Mapping) -> str | None:
    """Table 6.2 as a LaTeX ``table`` (booktabs); label ``tab:exp-6-2``; None when 6.2 is absent."""
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
    tex_sub = [_tex_num(x) for x in sub[:-1]] + [r"($p$)"]
    n_cols = len(header)
    rows = [" & ".join(_tex_lines(c) for c in line) + r" \\" for line in cells]
    if not rows:
        rows = [rf"\multicolumn{{{n_cols}}}{{c}}{{no strata}} \\"]
    return _tex_table(
        caption, "tab:exp-6-2", "l" + "r" * (n_cols - 1),
        [" & ".join(tex_header) + r" \\", " & ".join(tex_sub) + r" \\"],
        rows, size=r"\footnotesize", row_sep=r"\addlinespace[3pt]",
    )


def _tex_table(caption: str, label: str, align: str, header: list[str], rows: list[str],
               size: str = r"\small", row_sep: str | None = None) -> str:
    """A booktabs table float; the tabular is shrunk to the line width only when it is wider
    (needs ``\\usepackage{booktabs,graphicx}``)."""
    body = []
    for i, r in enumerate(rows):
        if i and row_sep:
            body.append(row_sep)
        body.append(r)
    return "\n".join([
        r"% falsify: needs \usepackage{booktabs} and \usepackage{graphicx} (for \resizebox)",
        r"\begin{table}[t]",
        r"\centering",
        size,
        r"\setlength{\tabcolsep}{3.5pt}",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\setbox0=\hbox{%",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        *header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}}%",
        r"\leavevmode\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\box0}\else\box0\fi\par",
        r"\end{table}",
        "",
    ])


# ---------------------------------------------------------------------------------------------
# writing


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path``: it is written as a temporary sibling and moved onto
    ``path`` with :func:`os.replace` when the block succeeds, or removed when anything fails, so
    ``path`` is never left half-written. Errors (``OSError`` included) propagate unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open`; returns ``path``."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def write_tables(summary: Mapping, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/tables/table_6_1.tex`` (and ``table_6_2.tex`` when 6.2 is in the summary)."""
    tables = Path(out_dir) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    written = []
    if summary.get("methods") is not None:
        written.append(write_text_atomic(tables / "table_6_1.tex", table_6_1_tex(summary)))
    tex = table_6_2_tex(summary)
    if tex is not None:
        written.append(write_text_atomic(tables / "table_6_2.tex", tex))
    return written
