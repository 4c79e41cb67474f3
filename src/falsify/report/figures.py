"""Figures of experiments 6.1 and 6.2 (matplotlib, Agg).

Figures are built as :class:`matplotlib.figure.Figure` objects, not through pyplot, so nothing is
ever shown and nothing stays registered with pyplot; :func:`save_figure` writes PNG (150 dpi) and
PDF and closes a pyplot-managed figure it is given.

- :func:`fr_bar_chart`: falsification rate per method with Wilson 95% whiskers (6.1).
- :func:`saliency_grid`: faces and one overlay per method, one row per pair (6.1).
- :func:`fr_vs_margin`: falsification rate per verification-margin quartile (6.2).
- :func:`write_figures`: all of them that the summary (and the explanations, if given) allow.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from ..choices import is_control
from .tables import (
    as_float,
    atomic_open,
    exp_6_2,
    method_rows,
    methods_6_2,
    n_testable,
    quartiles_of,
    rate_of,
    row_is_control,
    run_description,
    stratum,
    table_6_1_rows,
)

#: File stems of the figures :func:`write_figures` writes under ``OUT/figures``, with the report
#: section each belongs to and its caption.
FIGURES: dict[str, tuple[str, str]] = {
    "fig_6_1_fr": (
        "6.1",
        "Falsification rate per attribution method: falsified / (passed + falsified); untestable maps "
        "are excluded. Whiskers: Wilson 95% confidence interval; n: testable pairs. Controls (maps that "
        "cannot be right about the model on this image) are grey and hatched, right of the dotted line; "
        "the dashed line marks the random map's rate.",
    ),
    "fig_6_1_saliency": (
        "6.1",
        "Attribution maps of example pairs: each row is a pair (first face, explained against the "
        "second face's embedding), each column a method's map overlaid on the face (red: ranked highest).",
    ),
    "fig_6_2_fr_vs_margin": (
        "6.2",
        "Falsification rate per verification-margin quartile (x: quartile, with its margin range), with "
        "Wilson 95% whiskers; methods are offset sideways so whiskers do not overlap. The dotted line "
        "marks margin 0, the decision threshold.",
    ),
}

RANDOM = "random"
_RANDOM_COLOUR = "#9a9a9a"
_CONTROL_STYLE = dict(facecolor=_RANDOM_COLOUR, alpha=0.55, hatch="///", edgecolor="0.25")
_FALLBACK_ORDER = (
    "gradcam", "gradcam++", "biometric-gradcam", "ig", "geodesic-ig", "saliency",
    "gradient-x-input", "occlusion", "kernelshap", "lime",
)


def _method_order() -> tuple[str, ...]:
    try:
        from ..attribution import METHODS

        return tuple(m for m in METHODS if m != RANDOM)
    except Exception:  # the colour scheme must not depend on torch importing
        return _FALLBACK_ORDER


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A stable colour per method: a method keeps its colour whichever others are shown; random is grey."""
    from matplotlib import colormaps

    known = _method_order()
    # tab10 without its grey (index 7, which is random's), plus a dark teal for the tenth method
    tab10 = [colormaps["tab10"](i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + ["#1b4f72"]
    extra = [colormaps["tab20"](i) for i in (1, 3, 5, 7, 9, 11, 13, 17, 19)] + [colormaps["Dark2"](i) for i in range(8)]
    out: dict[str, str] = {}
    n_unknown = 0
    for m in methods:
        if m == RANDOM:
            out[m] = _RANDOM_COLOUR
        elif m in known and known.index(m) < 10:
            out[m] = tab10[known.index(m)]
        else:
            out[m] = extra[n_unknown % len(extra)]
            n_unknown += 1
    return out


# ---------------------------------------------------------------------------------------------


def fr_bar_chart(summary: Mapping) -> Figure:
    """Falsification rate per method (bars) with Wilson 95% CI whiskers; the controls after the
    methods, grey and hatched, behind a dotted separator and with a legend entry "control"; a
    dashed line at random's rate. Methods without a testable pair are marked n/a."""
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
        style = _CONTROL_STYLE if control else dict(facecolor=colours[m], alpha=0.9, edgecolor="none")
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
        fig.legend(handles=[Patch(linewidth=0.8, label="control", **_CONTROL_STYLE)], loc="outside upper right",
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


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _face(image) -> np.ndarray:
    """(3,H,W) or (H,W,3) or (H,W) -> (H,W,3) in [0,1] for imshow."""
    a = _to_numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.max(initial=0.0) > 1.5:  # 0..255
        a = a / 255.0
    return np.clip(a, 0.0, 1.0)


def default_pair_label(expl, index: int) -> str:
    cos = as_float(getattr(expl, "cosine", None))
    return f"pair {index + 1}" + (f"\ncos {cos:.3f}" if cos is not None else "")


def saliency_grid(
    explanations: Sequence,
    methods: Sequence[str],
    pair_labels: Sequence[str] | None = None,
    side: str = "a",
    cmap: str = "jet",
    alpha: float = 0.45,
) -> Figure:
    """Rows: pairs; columns: the face, then one overlay (map over face) per method.

    ``explanations`` are :class:`~falsify.report.explain.PairExplanation` (or anything with
    ``image_a``/``maps_a`` and ``image_b``/``maps_b``); ``side`` "a" shows A explained against f(B),
    "b" the reverse. ``pair_labels`` (e.g. "genuine\\ncos 0.712") label the rows; by default the pair
    number and cosine. A method missing from a pair's maps leaves its cell blank (n/a).
    """
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b', got {side!r}")
    if not explanations:
        raise ValueError("saliency_grid needs at least one explanation")
    methods = list(methods)
    if pair_labels is not None and len(pair_labels) != len(explanations):
        raise ValueError(f"{len(pair_labels)} pair labels for {len(explanations)} explanations")
    labels = list(pair_labels) if pair_labels is not None else [default_pair_label(e, i) for i, e in enumerate(explanations)]
    n_rows, n_cols = len(explanations), 1 + len(methods)
    cell = 1.55
    fig = Figure(figsize=(cell * n_cols + 1.5, cell * n_rows + 0.55), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    mappable = None
    for r, expl in enumerate(explanations):
        face = _face(getattr(expl, f"image_{side}"))
        maps = getattr(expl, f"maps_{side}")
        h, w = face.shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        axes[r, 0].imshow(face, extent=extent)
        for c, m in enumerate(methods, start=1):
            ax = axes[r, c]
            ax.imshow(face, extent=extent)
            if m in maps:
                mappable = ax.imshow(_to_numpy(maps[m]), cmap=cmap, vmin=0, vmax=1, alpha=alpha,
                                     extent=extent, interpolation="bilinear")
            else:
                ax.imshow(np.full_like(face, 0.85), extent=extent)
                ax.text(w / 2, h / 2, "n/a", ha="center", va="center", fontsize=9, color="0.3")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_linewidth(0.4)
        axes[r, 0].set_ylabel(labels[r], fontsize=8.5)
    for c, title in enumerate(["face"] + methods):
        axes[0, c].set_title(title, fontsize=9, fontweight="normal" if c == 0 else "bold")
    if mappable is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        # the colour bar shows the colour map itself, not its translucent overlay
        cb = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=axes, shrink=min(0.9, 0.5 + 0.1 * n_rows), aspect=25, pad=0.015)
        cb.set_label("attribution (normalised)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


# ---------------------------------------------------------------------------------------------


def _threshold_x(quarts) -> float | None:
    """Position of margin 0 on the quartile-index axis (quartile q spans q-0.5..q+0.5)."""
    for q, lo, hi in quarts:
        if lo is not None and hi is not None and lo <= 0.0 <= hi:
            return q - 0.5 + (0.0 - lo) / (hi - lo) if hi > lo else float(q)
    return None


def fr_vs_margin(summary: Mapping) -> Figure:
    """Experiment 6.2: falsification rate per verification-margin quartile, one line per method
    with Wilson 95% whiskers; x: quartile, labelled with its margin range; margin 0 marked."""
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


def save_figure(fig: Figure, path: str | Path, dpi: int = 150, close: bool = True) -> list[Path]:
    """Write ``path.png`` (``dpi``) and ``path.pdf``; a ``.png``/``.pdf`` suffix on ``path`` is
    replaced. Returns [png, pdf]. Closes the figure in pyplot when it is a pyplot figure. Each file
    is written to a temporary sibling and moved into place (:func:`~.tables.atomic_open`), so a
    failed write (OSError, which propagates) leaves no half-written figure."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path
    base.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = base.parent / (base.name + ".png"), base.parent / (base.name + ".pdf")
    with atomic_open(png) as f:
        fig.savefig(f, format="png", dpi=dpi, facecolor="white")
    with atomic_open(pdf) as f:
        fig.savefig(f, format="pdf", facecolor="white", metadata={"CreationDate": None})
    if close and "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)  # a no-op for a figure pyplot does not manage
    return [png, pdf]


def write_figures(
    summary: Mapping,
    out_dir: str | Path,
    explanations: Sequence | None = None,
    pair_labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write what the inputs allow under ``out_dir/figures``: ``fig_6_1_fr``, ``fig_6_1_saliency``
    (only with ``explanations``; methods in the summary's order) and ``fig_6_2_fr_vs_margin`` (only
    with a 6.2 section), each as .png and .pdf. Returns the paths written."""
    figures = Path(out_dir) / "figures"
    written: list[Path] = []
    if method_rows(summary):
        written += save_figure(fr_bar_chart(summary), figures / "fig_6_1_fr")
    if explanations:
        present = list(getattr(explanations[0], "maps_a", {}) or {})
        order = [str(r["method"]) for r in method_rows(summary)]
        methods = [m for m in order if m in present] + [m for m in present if m not in order]
        written += save_figure(saliency_grid(explanations, methods, pair_labels), figures / "fig_6_1_saliency")
    if exp_6_2(summary) is not None:
        written += save_figure(fr_vs_margin(summary), figures / "fig_6_2_fr_vs_margin")
    return written
