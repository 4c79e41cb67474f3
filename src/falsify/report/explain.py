"""The pair explanation figure: for each method, A explained against B and B against A."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..attribution import get_explainer, normalise_maps
from ..geometry import cosine_similarity, geodesic_distance
from ..models.base import model_device
from .labels import fit_text, fit_titles, quiet, renderer_of
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


def explanation_figure(expl: PairExplanation, labels: tuple[str, str] = ("A", "B"), cmap: str = "jet"):
    """A matplotlib figure: one row per method; face, heatmap (colour bar), overlay, for A and B.

    Names in the column titles, the heading and the method labels are shortened with an ellipsis
    to fit their panels, and characters no font has are replaced (:mod:`falsify.report.labels`);
    matplotlib's warnings are logged, not printed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(expl.maps_a)
    n = len(methods)
    with quiet():
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
            # the map's own face is named by the first panel: its title names only the reference
            titles += [("{0}", [who]), ("map vs f({0})", [other]), ("overlay", [])]
        for ax, (template, names) in zip(axes[0], titles):
            ax.set_title(template.format(*names), fontsize=9)
        heading = ("{0} vs {1}: cosine similarity " f"{expl.cosine:.4f}, angle {expl.angle:.4f} rad "
                   f"({math.degrees(expl.angle):.1f} deg)")
        sup = fig.suptitle(heading.format(*labels), fontsize=11)
        # the layout moves the axes, which changes the room of each title: until nothing changes
        shown = None
        for _ in range(4):
            fig.tight_layout(rect=(0, 0, 1, 0.97))
            renderer = renderer_of(fig)
            fit_text(sup, heading, labels, fig.bbox.width - 16, renderer)
            fit_titles(fig, axes[0], titles)
            for r, name in enumerate(methods):
                fit_text(axes[r, 0].yaxis.label, "{0}", [name], axes[r, 0].bbox.height, renderer, along="height")
            now = [t.get_text() for t in [sup, *(ax.title for ax in axes[0]), *(ax.yaxis.label for ax in axes[:, 0])]]
            if now == shown:
                break
            shown = now
    return fig
