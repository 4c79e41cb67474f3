"""What every experiment's figures use (matplotlib, Agg), and writing the figures of a run.

Figures are built as :class:`matplotlib.figure.Figure` objects, not through pyplot, so nothing is
ever shown and nothing stays registered with pyplot; :func:`save_figure` writes PNG (150 dpi) and
PDF and closes a pyplot-managed figure it is given. Each experiment draws its own figures from the
summary (``falsify.experiments.exp_6_1.fr_bar_chart``, ...) and hands them over in its section
(:class:`falsify.report.section.FigureSpec`); shared here:

- :func:`method_colours`: a stable colour per method;
- :func:`saliency_grid`: faces and one overlay per method, one row per pair (6.1);
- :func:`write_figures`: every figure the sections can draw.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from .labels import fit_titles, quiet
from .tables import as_float, atomic_open

if TYPE_CHECKING:  # pragma: no cover
    from .section import Section

RANDOM = "random"
_RANDOM_COLOUR = "#9a9a9a"
CONTROL_STYLE = dict(facecolor=_RANDOM_COLOUR, alpha=0.55, hatch="///", edgecolor="0.25")


def _method_order() -> tuple[str, ...]:
    from ..choices import METHODS  # free of torch: the colour scheme must not depend on it

    return tuple(m for m in METHODS if m != RANDOM)


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


def rate_bars(ax, series: Sequence[tuple[str, bool, Sequence]], labels: Sequence[str], label_size: float = 8) -> None:
    """Grouped bars of falsification rates with Wilson whiskers on ``ax`` (6.3's parts, 6.6's
    groups): ``series`` holds ``(method, is_control, cells)`` per method, in legend order, and
    ``cells[i]`` its rate in category ``i`` (a mapping with ``fr``, ``ci_low``, ``ci_high``), or
    None, or one whose ``fr`` is None: no bar there. A mark at each rate shows 0% too; controls
    are paler. The x labels are ``labels``; the y axis is the rate, 0-105%."""
    from matplotlib.ticker import PercentFormatter

    colours = method_colours([m for m, _, _ in series])
    width = 0.8 / max(len(series), 1)
    for j, (method, control, cells) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, c in enumerate(cells):
            if c is None or c["fr"] is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(c["fr"])
            lo.append(max(c["fr"] - c["ci_low"], 0.0))
            hi.append(max(c["ci_high"] - c["fr"], 0.0))
        ax.bar(xs, ys, width=width * 0.9, color=colours[method], alpha=0.5 if control else 0.9,
               label=method, yerr=[lo, hi], error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.plot(xs, ys, ls="none", marker="_", ms=10, mew=2, color=colours[method])  # 0% shows too
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(list(labels), fontsize=label_size)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("falsification rate")
    for sp in ("top", "right"):
        ax.spines[sp].set_visible(False)


# ---------------------------------------------------------------------------------------------


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
    number and cosine. A method missing from a pair's maps leaves its cell blank (n/a). A method's
    name too long for its column is shortened with an ellipsis (:mod:`falsify.report.labels`).
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
    with quiet():  # a method's name (a registered one may be long) is shortened to its column
        fig.get_layout_engine().execute(fig)
        fit_titles(fig, axes[0], [("face", [])] + [("{0}", [m]) for m in methods])
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
    with quiet():  # matplotlib's warnings are logged, not printed (falsify.report.labels)
        with atomic_open(png) as f:
            fig.savefig(f, format="png", dpi=dpi, facecolor="white")
        with atomic_open(pdf) as f:
            fig.savefig(f, format="pdf", facecolor="white", metadata={"CreationDate": None})
    if close and "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)  # a no-op for a figure pyplot does not manage
    return [png, pdf]


def write_figures(sections: Iterable[Section], out_dir: str | Path) -> list[Path]:
    """Draw every figure of ``sections`` that can be drawn (its :attr:`FigureSpec.draw
    <falsify.report.section.FigureSpec.draw>`; the sections are made from the summary, so
    ``falsify report OUT`` redraws them all) and write it under ``out_dir/figures`` as .png and
    .pdf, in the sections' order: ``fig_6_1_fr``, ``fig_6_1_saliency`` (when the section was given
    the maps), ``fig_6_2_fr_vs_margin``, ... Returns the paths written."""
    written: list[Path] = []
    folder = Path(out_dir) / "figures"
    for section in sections:
        for spec in section.figures:
            fig = spec.draw() if spec.draw is not None else None
            if fig is not None:
                written += save_figure(fig, folder / spec.stem)
    return written
