"""The figure of one falsification test: x, S_high, S_low and a counterfactual of each
(``falsify test --figure``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..falsification.core import COND_HIGH, COND_LOW, COND_MARGIN, FalsificationResult
from .labels import fit_text, quiet, renderer_of, room


def _overlay(img: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = img.copy()
    out[mask] = 0.35 * out[mask] + 0.65 * np.asarray(colour, dtype=np.float32)
    return out


def falsification_figure(images: torch.Tensor, results: Sequence[FalsificationResult], labels: Sequence[str], method: str = ""):
    """One row per tested image: x, S_high overlay, S_low overlay, a high and a low counterfactual.

    Needs results from ``falsification_test(..., keep_examples=True)``. Returns a matplotlib
    ``Figure`` (no pyplot, so no display backend is needed). The labels (image names) and the
    method's name are shortened with an ellipsis to fit, characters no font has are replaced
    (:mod:`falsify.report.labels`), and matplotlib's warnings are logged, not printed.
    """
    from matplotlib.figure import Figure

    rows = len(results)
    with quiet():
        fig = Figure(figsize=(13, 3.3 * rows + 0.4))
        axes = fig.subplots(rows, 5, squeeze=False)
        heads = []  # per row: the first panel's title (template, names), the label shortened to fit
        for row, (img, r, label) in enumerate(zip(images, results, labels)):
            x = img.permute(1, 2, 0).numpy()
            for ax in axes[row]:
                ax.axis("off")
            axes[row][0].imshow(np.clip(x, 0, 1))
            if r.verdict == "untestable" or r.high_mask is None:
                heads.append(("{0}\nUNTESTABLE", [label]))
                axes[row][0].set_title(heads[-1][0].format(label), fontsize=9)
                axes[row][1].text(0.0, 0.5, "\n".join(r.failed), fontsize=9, wrap=True,
                                  transform=axes[row][1].transAxes)
                continue

            def mark(cond: str) -> str:
                return "FAILED" if cond in r.failed else "ok"

            colour = {"passed": "darkgreen", "falsified": "firebrick"}.get(r.verdict, "black")
            heads.append(("{0}\n" f"{r.verdict.upper()}\nmargin {r.margin:.3f} >= eps {r.epsilon:.3f}: "
                          f"{mark(COND_MARGIN)}", [label]))
            axes[row][0].set_title(heads[-1][0].format(label), fontsize=9, color=colour)
            hm, lm = r.high_mask.numpy(), r.low_mask.numpy()
            panels = [
                (_overlay(x, hm, (1.0, 0.15, 0.1)), f"S_high ({r.n_high} px)"),
                (_overlay(x, lm, (0.1, 0.4, 1.0)), f"S_low ({r.n_low} px)"),
                (r.example_high.permute(1, 2, 0).numpy(),
                 f"hide S_high: d={r.distances_high[0]:.3f} rad\nd_high {r.d_high:.3f} > tau_high {r.tau_high:.3f}: "
                 f"{mark(COND_HIGH)}"),
                (r.example_low.permute(1, 2, 0).numpy(),
                 f"hide S_low: d={r.distances_low[0]:.3f} rad\nd_low {r.d_low:.3f} < tau_low {r.tau_low:.3f}: "
                 f"{mark(COND_LOW)}"),
            ]
            for ax, (im, title) in zip(axes[row][1:], panels):
                ax.imshow(np.clip(im, 0, 1))
                ax.set_title(title, fontsize=9)
        setting = f" (fill {results[0].fill}, {results[0].granularity})"
        heading, named = ("falsification test: {0}" + setting, [method]) if method else \
            ("falsification test" + setting, [])
        sup = fig.suptitle(heading.format(*named))
        for _ in range(2):  # the layout, the labels fitted to it, the layout of the fitted labels, ...
            fig.tight_layout()
            renderer = renderer_of(fig)
            for row, (template, names) in enumerate(heads):
                fit_text(axes[row][0].title, template, names, room(fig, axes[row])[0], renderer)
            fit_text(sup, heading, named, fig.bbox.width - 16, renderer)
    return fig
