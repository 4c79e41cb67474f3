"""Names in figures: the one place where text from users (file names, method names) is put into a
figure's titles and labels.

- :func:`displayable`: the text in NFC, with each character that no available font has (and each
  control character) replaced by :data:`REPLACEMENT`. The fonts are :func:`font_families`:
  DejaVu Sans, which matplotlib ships (Latin, Greek, Cyrillic; no CJK, no emoji), then whichever
  of :data:`FALLBACK_FAMILIES` are installed, in that order; matplotlib (>= 3.6) draws each glyph
  from the first of them that has it. On a machine with DejaVu Sans alone (a fresh Debian with
  matplotlib from pip), ``Zoë_Ångström_顔_😀`` is drawn as ``Zoë_Ångström_�_�``.
- :func:`shorten`: at most ``n`` characters, the middle replaced by an ellipsis (the start and
  the end of a name, e.g. its image number, stay).
- :func:`fit_text`, :func:`fit_titles`: set a text artist to a template holding names, each name
  shortened to the most characters that keep the drawn text within a given width, measured by
  matplotlib's renderer.
- :func:`quiet`: matplotlib's warnings (a glyph missing, a layout not applied) while a figure is
  drawn or saved go to the ``falsify.figures`` logger at DEBUG level, not to the terminal; other
  warnings are left as they are. Nothing changes the warning filters outside that block.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import unicodedata
import warnings
from typing import Iterator, Sequence

ELLIPSIS = "\u2026"
#: what replaces a character that no available font has (U+FFFD, in DejaVu Sans)
REPLACEMENT = "\ufffd"
#: fonts that, where installed, draw what DejaVu Sans lacks (CJK, symbols, monochrome emoji);
#: colour-bitmap emoji fonts (Noto Color Emoji) are left out: matplotlib cannot scale them
FALLBACK_FAMILIES: tuple[str, ...] = (
    "Noto Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
    "Noto Sans Symbols", "Noto Sans Symbols 2", "Noto Emoji", "Symbola", "Unifont",
)
BASE_FAMILY = "DejaVu Sans"

log = logging.getLogger("falsify.figures")


@functools.lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """DejaVu Sans, then the installed :data:`FALLBACK_FAMILIES` (matplotlib's font list)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return (BASE_FAMILY,) + tuple(f for f in FALLBACK_FAMILIES if f in installed)


@functools.lru_cache(maxsize=1)
def _codepoints() -> frozenset[int]:
    """Every character some font of :func:`font_families` has."""
    from matplotlib import font_manager, ft2font

    points: set[int] = set()
    for family in font_families():
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
            points.update(ft2font.FT2Font(path).get_charmap())
        except (ValueError, RuntimeError, OSError):  # not found, or a font FreeType cannot read
            continue
    return frozenset(points)


def displayable(text: str) -> str:
    """``text`` (NFC) with control characters and characters no font has replaced by
    :data:`REPLACEMENT`."""
    points = _codepoints()
    return "".join(c if ord(c) in points and unicodedata.category(c) != "Cc" else REPLACEMENT
                   for c in unicodedata.normalize("NFC", str(text)))


def shorten(text: str, n: int) -> str:
    """``text`` if it has at most ``n`` characters, else ``n`` characters: its first two thirds
    and its last third around an ellipsis (at least the ellipsis)."""
    if len(text) <= n:
        return text
    keep = max(n - 1, 0)
    head = -(-2 * keep // 3)
    return text[:head] + ELLIPSIS + (text[len(text) - (keep - head):] if keep > head else "")


def renderer_of(fig):
    """``fig``'s renderer; a figure made without pyplot (``Figure()``) is given an Agg canvas."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _extent(artist, renderer, along: str) -> float:
    box = artist.get_window_extent(renderer)
    return box.width if along == "width" else box.height


def fit_text(artist, template: str, names: Sequence[str] = (), limit: float = float("inf"), renderer=None,
             along: str = "width") -> str:
    """Set the text artist ``artist`` to ``template.format(*names)``, each name made
    :func:`displayable` and :func:`shorten`-ed to the most characters (the same for all) that keep
    the drawn text at most ``limit`` pixels ``along`` (``"width"``, or ``"height"`` for a rotated
    label); without ``names`` the template itself is shortened. Mathtext is off (a ``$`` in a name
    is drawn as it is) and the font list is :func:`font_families`. Returns the text set."""
    artist.set_parse_math(False)
    artist.set_fontfamily(list(font_families()))
    if renderer is None:
        renderer = renderer_of(artist.figure)
    if names:
        shown = [displayable(n) for n in names]

        def make(n: int) -> str:
            return template.format(*(shorten(s, n) for s in shown))

        longest = max(len(s) for s in shown)
    else:
        whole = displayable(template) if template else template

        def make(n: int) -> str:
            return shorten(whole, n)

        longest = len(whole)
    artist.set_text(make(longest))
    if _extent(artist, renderer, along) <= limit:
        return artist.get_text()
    lo, hi = 1, longest - 1  # the most characters that fit: in [lo, hi], or 1 when none does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        artist.set_text(make(mid))
        if _extent(artist, renderer, along) <= limit:
            lo = mid
        else:
            hi = mid - 1
    artist.set_text(make(lo))
    return artist.get_text()


def _centres(fig, axes: Sequence) -> list[float]:
    return [(ax.get_position().x0 + ax.get_position().width / 2) * fig.bbox.width for ax in axes]


def room(fig, axes: Sequence, pad: float = 8.0) -> list[float]:
    """For a row of ``axes`` whose titles are centred on them: the width (pixels) each title may
    take whatever its neighbours' titles are, so that no two overlap and none leaves the figure:
    twice the distance from its centre to the nearer figure edge, and the distance to each
    neighbour's centre, less ``pad``."""
    width = fig.bbox.width
    centres = _centres(fig, axes)
    out = []
    for i, c in enumerate(centres):
        r = [2 * c, 2 * (width - c)] + [abs(c - centres[j]) for j in (i - 1, i + 1) if 0 <= j < len(axes)]
        out.append(max(min(r) - pad, 1.0))
    return out


def fit_titles(fig, axes: Sequence, titles: Sequence[tuple[str, Sequence[str]]], pad: float = 8.0) -> None:
    """Give each of a row of ``axes`` its title, ``(template, names)`` as :func:`fit_text` takes
    them: first each fitted to its :func:`room`; then, one after another, each title that was
    shortened again, to the room its neighbours leave it as they now are (centred titles ``i``,
    ``j`` do not overlap while ``w_i / 2 + w_j / 2 + pad <= |c_i - c_j|``), and never over a
    neighbour's axes that reach up beside the title (e.g. a taller image next to it)."""
    renderer = renderer_of(fig)
    for ax, (template, names), limit in zip(axes, titles, room(fig, axes, pad)):
        fit_text(ax.title, template, names, limit, renderer)
    fig.canvas.draw()  # places the titles above their axes
    width = fig.bbox.width
    centres = _centres(fig, axes)
    for i, (ax, (template, names)) in enumerate(zip(axes, titles)):
        whole = template.format(*(displayable(n) for n in names)) if names else displayable(template)
        if ax.title.get_text() == whole:
            continue
        bottom = ax.title.get_window_extent(renderer).y0
        limit = [2 * centres[i], 2 * (width - centres[i])]
        for j in (i - 1, i + 1):
            if 0 <= j < len(axes):
                other = axes[j].title.get_window_extent(renderer).width if axes[j].title.get_text() else 0.0
                limit.append(2 * (abs(centres[i] - centres[j]) - other / 2 - pad))
                box = axes[j].bbox
                if box.y1 > bottom:  # its axes reach up beside the title
                    limit.append(2 * ((centres[i] - box.x1) if j < i else (box.x0 - centres[i])) - pad)
        fit_text(ax.title, template, names, max(min(limit) - pad, 1.0), renderer)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Matplotlib's warnings raised inside (drawing, laying out, saving a figure: any UserWarning,
    or a warning from matplotlib's files) are logged to ``falsify.figures`` at DEBUG level instead
    of printed; other warnings are re-issued as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if _from_matplotlib(w):
            log.debug("matplotlib: %s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _from_matplotlib(w: warnings.WarningMessage) -> bool:
    """A warning to log, not print: raised in matplotlib's own files, or a UserWarning (matplotlib's
    ``_api.warn_external`` names the caller's line, so its warnings look as if raised there)."""
    if "matplotlib" in str(w.filename).replace("\\", "/").split("/"):
        return True
    return issubclass(w.category, UserWarning)
