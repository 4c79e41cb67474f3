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

    def save_npz(self, path: str | Path) -> None:
        arrays = {"image_a": self.image_a.numpy(), "image_b": self.image_b.numpy(),
                  "cosine": np.float64(self.cosine), "angle": np.float64(self.angle)}
        for m in self.maps_a:
            arrays[f"{m}/map_a"] = self.maps_a[m].numpy()
            arrays[f"{m}/map_b"] = self.maps_b[m].numpy()
            arrays[f"{m}/raw_a"] = self.raw_a[m].numpy()
            arrays[f"{m}/raw_b"] = self.raw_b[m].numpy()
        np.savez_compressed(path, **arrays)


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
    """A matplotlib figure: one row per method; face, heatmap (colour bar), overlay, for A and B."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(expl.maps_a)
    n = len(methods)
    fig, axes = plt.subplots(n, 6, figsize=(13.5, 2.35 * n + 0.7), squeeze=False)
    faces = (expl.image_a.permute(1, 2, 0).numpy(), expl.image_b.permute(1, 2, 0).numpy())
    for r, name in enumerate(methods):
        for side, (face, maps, who, other) in enumerate(
            ((faces[0], expl.maps_a, labels[0], labels[1]), (faces[1], expl.maps_b, labels[1], labels[0]))
        ):
            m = maps[name].numpy()
            ax_face, ax_map, ax_ovl = axes[r, 3 * side : 3 * side + 3]
            ax_face.imshow(face)
            im = ax_map.imshow(m, cmap=cmap, vmin=0, vmax=1)
            fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.03)
            ax_ovl.imshow(face)
            ax_ovl.imshow(m, cmap=cmap, vmin=0, vmax=1, alpha=0.45)
            if r == 0:
                ax_face.set_title(who, fontsize=9)
                ax_map.set_title(f"map: {who} vs f({other})", fontsize=9)
                ax_ovl.set_title("overlay", fontsize=9)
            for ax in (ax_face, ax_map, ax_ovl):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=11, fontweight="bold")
    fig.suptitle(
        f"{labels[0]} vs {labels[1]}: cosine similarity {expl.cosine:.4f}, "
        f"angle {expl.angle:.4f} rad ({math.degrees(expl.angle):.1f} deg)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
