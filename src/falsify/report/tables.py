"""What every experiment's tables use: number formatting, access to ``summary.json``, and
writing the tables of a run.

Each experiment builds its tables once, from the summary in memory, as data frames of plain-text
cells (``falsify.report.render.Table``) and hands them over in its section
(``falsify.report.section.Section``); each is rendered once as LaTeX (booktabs, pandas'
``Styler.to_latex``) and once as HTML (Jinja2) from the same cells, so both show the same numbers.
A cell of ``None`` means "not applicable / not available" and is written ``--`` in LaTeX.

Every key of the summary may be absent or null (NaN is written as null): such cells are n/a.
"""
from __future__ import annotations

import errno
import math
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping

from ..choices import DETERMINISTIC_FILLS, is_control
from ..paths import is_out_of_space
from .render import latex_escape, tex_num  # noqa: F401 (re-exported: the experiments' tables use them)

if TYPE_CHECKING:  # pragma: no cover
    from .section import Section

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


def wilson_ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson 95% score interval of k successes in n trials; None when n == 0
    (``falsify.falsification.stats.wilson_interval``)."""
    from ..falsification.stats import wilson_interval

    return wilson_interval(k, n)


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


def criterion_class(name: Any):
    """The criterion class registered as ``name`` (``falsify.falsification.criteria``), or None
    (an unknown name, e.g. of a summary written by a falsify that had other criteria): what a
    report asks about the run's criterion, never comparing its name. Imported when asked: it
    loads torch, which a report of a run has loaded already."""
    from ..falsification.criteria import CRITERION_CLASSES

    return CRITERION_CLASSES.get(name) if isinstance(name, str) else None


def criterion_explained(summary: Mapping) -> tuple[Any, dict]:
    """``(criterion class or None, criterion_of(summary))`` with the calibration's numbers read
    (``quantile``, ``excess_median`` floats, ``n`` an int, each None when not recorded), as
    ``Criterion.explain_html`` and ``explain_tex`` take them."""
    c = criterion_of(summary)
    cal = c["calibration"]
    if cal is not None:
        c["calibration"] = {"quantile": as_float(cal.get("quantile")), "n": as_int(cal.get("n")),
                            "excess_median": as_float(cal.get("excess_median"))}
    return criterion_class(c["criterion"]), c


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


# ---------------------------------------------------------------------------------------------
# writing


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path``: it is written as a temporary sibling and moved onto
    ``path`` with :func:`os.replace` when the block succeeds, or removed when anything fails, so
    ``path`` is never left half-written. Errors (``OSError`` included) propagate unchanged, but
    for a write that ran out of space, which is told the file it was writing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_out_of_space(exc) and not getattr(exc, "filename", None):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open`; returns ``path``."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def write_summary_json(out_dir: str | Path, summary: Mapping) -> str:
    """Write ``out_dir/summary.json`` (created if need be) through :func:`atomic_open`: the
    summary as indented JSON, strict (a NaN or infinity is an error, not a literal; anything
    else JSON cannot hold is written as its ``str``). Returns the text written."""
    import json

    text = json.dumps(summary, indent=2, default=str, allow_nan=False)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir) / "summary.json", text)
    return text


def write_tables(sections: Iterable[Section], out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/tables/<name>.tex`` for every table with a label of every section, in the
    sections' order (``table_6_1.tex``, ``table_6_2.tex``, ...); returns the paths written. Each
    file is the table's :attr:`~falsify.report.render.Table.latex`, rendered once."""
    tables = Path(out_dir) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    return [write_text_atomic(tables / f"{table.name}.tex", table.latex)
            for table in latex_tables(sections)]


def latex_tables(sections: Iterable[Section]) -> list:
    """The tables of ``sections`` that have a LaTeX form (a label), in the sections' order."""
    return [table for section in sections for table in section.tables if table.label]
