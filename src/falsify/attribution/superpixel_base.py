"""Shared base of the superpixel perturbation methods (KernelSHAP, LIME).

Each image is cut into ~``n_segments`` SLIC superpixels (scikit-image); a coalition keeps some
superpixels and replaces the rest by the baseline image (default: the image's mean colour, so
that "absent" is a flat patch of the face's own tone rather than black). A weighted linear
surrogate is fitted on ``n_samples`` coalitions. A superpixel's attribution phi_k is spread
evenly over its pixels, so the (B,H,W) map is a density (phi_k / area_k) and its sum over
pixels is sum_k phi_k.

The engine follows captum's ``KernelShap`` and ``Lime`` exactly: the same coalitions (drawn from
torch's global generator seeded with ``seed + i`` for image ``i``, in captum's order), the same
sample weights and the same surrogate (least squares with an intercept, ridge for LIME), so the
attributions equal captum's up to float rounding. What differs is the cost: the coalitions of
every image of the batch are evaluated together, ``batch_size`` perturbed images per forward pass
under ``torch.inference_mode``, with the perturbed images built by one gather instead of captum's
per-sample loop, and the surrogate is solved in closed form in float64 with torch.
"""
from __future__ import annotations

import torch

from ..imageops import make_baseline, superpixels
from .base import AttributionError, Explainer


def weighted_linear_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """Coefficients (M,) of ``y ~ b0 + z @ coef`` minimising ``sum w (y - b0 - z coef)^2 + alpha |coef|^2``.

    The intercept is not penalised: like scikit-learn's ``LinearRegression``/``Ridge`` with
    ``sample_weight``, the data are centred at their weighted means first; a rank-deficient
    least-squares problem gets the minimum-norm solution.
    """
    z, y, w = z.double(), y.double(), w.double()
    sw = w / w.sum()
    zc = z - (sw[:, None] * z).sum(0)
    yc = y - (sw * y).sum()
    r = w.sqrt()
    a, b = zc * r[:, None], yc * r
    if alpha > 0:
        eye = torch.eye(z.shape[1], dtype=z.dtype)
        return torch.linalg.solve(a.T @ a + alpha * eye, a.T @ b)
    return torch.linalg.lstsq(a, b[:, None], driver="gelsd").solution[:, 0]


class SuperpixelExplainer(Explainer):
    default_normalise = "abs"
    needs_gradients = False
    captum_class: type
    #: ridge penalty of the surrogate (0: ordinary weighted least squares)
    ridge_alpha: float = 0.0
    #: whether ``sample_weights`` needs the cosine similarity of each perturbed image to the image
    needs_input_cosine: bool = False

    def __init__(self, model, n_samples: int = 128, n_segments: int = 50, segmentation: str = "slic",
                 baseline: str | float = "mean", batch_size: int = 64, seed: int = 0,
                 normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if n_samples < 2:
            raise AttributionError(f"n_samples must be >= 2, got {n_samples}")
        if n_segments < 2:
            raise AttributionError(f"n_segments must be >= 2, got {n_segments}")
        if batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
        self.n_samples, self.n_segments, self.segmentation = int(n_samples), int(n_segments), segmentation
        self.baseline, self.batch_size, self.seed = baseline, int(batch_size), int(seed)
        make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)
        superpixels(torch.zeros(1, 3, 8, 8), 2, segmentation)  # validates the method name

    def make_captum(self):
        """The captum explainer this engine reproduces (for comparisons and tests)."""
        return self.captum_class(self.target.forward_func())

    def segments(self, images: torch.Tensor) -> torch.Tensor:
        return superpixels(images, self.n_segments, self.segmentation)

    # -- what a method defines ---------------------------------------------------------------
    def sample_coalitions(self, m: int) -> torch.Tensor:
        """(n_samples, m) 0/1 coalitions, drawn from torch's global generator as captum does."""
        raise NotImplementedError

    def sample_weights(self, coalitions: torch.Tensor, images: torch.Tensor, perturbed_cos: torch.Tensor) -> torch.Tensor:
        """(n_samples,) weights of the surrogate's loss."""
        raise NotImplementedError

    # -- the engine ------------------------------------------------------------------------------
    def _coalitions(self, m: int, i: int) -> torch.Tensor:
        state = torch.get_rng_state()
        try:
            torch.manual_seed(self.seed + i)  # captum's stream for image i
            return self.sample_coalitions(m)
        finally:
            torch.set_rng_state(state)  # leave the caller's global RNG as it was

    def attribute_segments(self, images, references) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-superpixel attributions list-padded (B, max_k), segments (B,H,W))."""
        images, references = self.check_inputs(images, references)
        segs = self.segments(images)
        baselines = make_baseline(images, self.baseline)
        b, n = images.shape[0], self.n_samples
        n_feat = [int(s.max()) + 1 for s in segs]
        width = max(n_feat)
        coalitions = [self._coalitions(m, i) for i, m in enumerate(n_feat)]
        z_all = torch.cat([torch.nn.functional.pad(z, (0, width - z.shape[1])) for z in coalitions])
        z_all = z_all.to(images.device, torch.bool)
        # all B*n perturbed images, batch_size per forward pass: row r is (image r // n, sample r % n)
        scores = torch.empty(b * n, dtype=torch.float32)
        cos_in = torch.full((b * n,), float("nan"), dtype=torch.float64)
        flat_segs = segs.flatten(1)
        with torch.inference_mode():
            for start in range(0, b * n, self.batch_size):
                rows = torch.arange(start, min(start + self.batch_size, b * n))
                img = (rows // n).to(images.device)
                keep = z_all[rows.to(images.device)]
                first, last = int(img[0]), int(img[-1])
                if first == last:  # one image (the usual chunk): broadcast, no per-row copies
                    mask = keep[:, flat_segs[first]].view(-1, 1, *images.shape[-2:])
                    x = torch.where(mask, images[first : first + 1], baselines[first : first + 1])
                else:
                    mask = torch.gather(keep, 1, flat_segs[img]).view(-1, 1, *images.shape[-2:])
                    x = torch.where(mask, images[img], baselines[img])  # the image where kept, the baseline elsewhere
                refs = None if references is None else references[img]
                scores[start : start + len(rows)] = self.target(x, refs).float().cpu()
                if self.needs_input_cosine:
                    cos_in[start : start + len(rows)] = torch.nn.functional.cosine_similarity(
                        images[img].flatten(1), x.flatten(1), dim=1
                    ).cpu().double()
        phis = torch.zeros(b, width, device=images.device)
        for i, m in enumerate(n_feat):
            z = coalitions[i][:, :m].float()
            rows = slice(i * n, (i + 1) * n)
            w = self.sample_weights(z, images[i], cos_in[rows])
            phis[i, :m] = weighted_linear_fit(z, scores[rows], w, self.ridge_alpha).float().to(images.device)
        return phis, segs

    def _attribute(self, images, references):
        phis, segs = self.attribute_segments(images, references)
        area = torch.stack([torch.bincount(s.flatten(), minlength=phis.shape[1]) for s in segs]).clamp_min(1)
        density = phis / area
        return torch.gather(density, 1, segs.flatten(1)).view_as(segs).float()

    def attribute(self, images, references=None):
        return self._attribute(images, references).detach()
