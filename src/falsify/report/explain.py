"""The pair explanation figure: for each method, A explained against B and B against A."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..attribution import get_explainer, normalise_maps
from ..geometry import cosine_similarity, geodesic_distance
from ..models.base import model_device
from .tables import atomic_open


@dataclass
class PairExplanation:
    image_a: torch.Tensor  # (3,H,W)
    image_b: torch.Tensor
    cosine: float
    angle: float  # radians
    maps_a: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (H,W) in [0,1]
    maps_b: dict[str, torch.Tensor] = field(default_factory=dict)
    raw_a: dict[str, torch.Tensor] = field(default_factory=dict)
    raw_b: dict[str, torch.Tensor] = field(default_factory=dict)

    def save_npz(self, path: str | Path) -> Path:
        """Write the images, similarity and maps as a compressed ``.npz`` and return the path
        written: ``path``, with ``.npz`` appended when it lacks it (as numpy would). Written to a
        temporary sibling and moved into place; OSError propagates."""
        path = Path(path)
        if not path.name.endswith(".npz"):
            path = path.with_name(path.name + ".npz")
        arrays = {"image_a": self.image_a.numpy(), "image_b": self.image_b.numpy(),
                  "cosine": np.float64(self.cosine), "angle": np.float64(self.angle)}
        for m in self.maps_a:
            arrays[f"{m}/map_a"] = self.maps_a[m].numpy()
            arrays[f"{m}/map_b"] = self.maps_b[m].numpy()
            arrays[f"{m}/raw_a"] = self.raw_a[m].numpy()
            arrays[f"{m}/raw_b"] = self.raw_b[m].numpy()
        with atomic_open(path) as f:
            np.savez_compressed(f, **arrays)
        return path


def explain_pair(
    model,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    methods: Sequence[str],
    options: dict[str, dict] | None = None,
    progress=None,
) -> PairExplanation:
    """Maps of every method for A against f(B) and B against f(A), computed as one batch of 2."""
    options = options or {}
    device = model_device(model)
    images = torch.stack([image_a, image_b]).to(device)
    with torch.inference_mode():
        emb = model(images).clone()
    refs = emb.flip(0)  # A is explained against f(B), B against f(A)
    out = PairExplanation(
        image_a.cpu(), image_b.cpu(),
        float(cosine_similarity(emb[0], emb[1])), float(geodesic_distance(emb[0], emb[1])),
    )
    for name in methods:
        explainer = get_explainer(name, model, **options.get(name, {}))
        raw = explainer.attribute(images, refs)
        maps = normalise_maps(raw, explainer.normalise).cpu()
        out.maps_a[name], out.maps_b[name] = maps[0], maps[1]
        out.raw_a[name], out.raw_b[name] = raw[0].cpu(), raw[1].cpu()
        if progress is not None:
            progress.update(1)
    return out


def _wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters where it can be: broken at spaces, a longer
    word after one of its underscores (LFW names such as George_W_Bush_0007), else anywhere."""
    lines = []
    for line in textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]:
        while len(line) > width:
            cut = line.rfind("_", 0, width) + 1 or width
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return "\n".join(lines)


def _fit(artist, text: str, limit: float, renderer) -> bool:
    """Set ``text`` on the Text ``artist``, wrapped to the most characters a line that keeps it at
    most ``limit`` pixels wide; True when the artist's text changed."""
    before = artist.get_text()
    width = len(text)
    artist.set_text(text)
    while width > 1 and artist.get_window_extent(renderer).width > limit:
        width -= 1
        artist.set_text(_wrap(text, width))
    return artist.get_text() != before


def _fit_titles(fig, axes, titles: Sequence[str], pad: float = 8.0) -> bool:
    """Give each of a row of ``axes`` its title, wrapped so that it is narrower than the distance
    from its centre to its neighbours' centres and the figure's edges: titles are centred on their
    axes, so no two overlap. True when a title changed."""
    renderer = fig.canvas.get_renderer()
    centres = [(ax.get_position().x0 + ax.get_position().width / 2) * fig.bbox.width for ax in axes]
    changed = False
    for i, (ax, text) in enumerate(zip(axes, titles)):
        room = [2 * centres[i], 2 * (fig.bbox.width - centres[i])]
        room += [abs(centres[i] - centres[j]) for j in (i - 1, i + 1) if 0 <= j < len(axes)]
        changed |= _fit(ax.title, text, min(room) - pad, renderer)
    return changed


def explanation_figure(expl: PairExplanation, labels: tuple[str, str] = ("A", "B"), cmap: str = "jet"):
    """A matplotlib figure: one row per method; face, heatmap (colour bar), overlay, for A and B.

    Column titles and the heading are wrapped to fit (long labels such as LFW image names do not run
    into each other)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(expl.maps_a)
    n = len(methods)
    fig, axes = plt.subplots(n, 6, figsize=(13.5, 2.35 * n + 0.7), squeeze=False)
    faces = (expl.image_a.permute(1, 2, 0).numpy(), expl.image_b.permute(1, 2, 0).numpy())
    for r, name in enumerate(methods):
        for side, (face, maps) in enumerate(((faces[0], expl.maps_a), (faces[1], expl.maps_b))):
            m = maps[name].numpy()
            ax_face, ax_map, ax_ovl = axes[r, 3 * side : 3 * side + 3]
            ax_face.imshow(face)
            im = ax_map.imshow(m, cmap=cmap, vmin=0, vmax=1)
            fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.03)
            ax_ovl.imshow(face)
            ax_ovl.imshow(m, cmap=cmap, vmin=0, vmax=1, alpha=0.45)
            for ax in (ax_face, ax_map, ax_ovl):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=11, fontweight="bold")
    titles = []
    for who, other in ((labels[0], labels[1]), (labels[1], labels[0])):
        titles += [who, f"map: {who} vs\u00a0f({other})", "overlay"]  # no break inside "vs f(B)"
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    heading = (
        f"{labels[0]} vs {labels[1]}: cosine similarity {expl.cosine:.4f}, "
        f"angle {expl.angle:.4f} rad ({math.degrees(expl.angle):.1f} deg)"
    )
    sup = fig.suptitle(heading, fontsize=11)
    # wrapping moves the axes (taller titles), which may call for other wraps: until nothing changes
    for _ in range(3):
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        renderer = fig.canvas.get_renderer()
        changed = _fit(sup, heading, fig.bbox.width - 16, renderer)
        if not _fit_titles(fig, axes[0], titles) and not changed:
            break
    return fig
