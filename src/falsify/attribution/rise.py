"""RISE (Petsiuk, Das & Saenko, BMVC 2018) with the similarity to the reference as the score,
and its dissimilarity map (the face-verification reading of Knoche et al., WACVW 2023, and of
FV-RISE: regions whose presence lowers the similarity).

Masks. Each of ``n_masks`` masks is a ``cells`` x ``cells`` grid of independent Bernoulli(p)
values, upsampled bilinearly to ``(cells + 1) * ceil(H / cells)`` pixels per side and cropped at
a random offset in ``[0, ceil(H / cells))`` (likewise for W): Petsiuk et al.'s smooth, shifted
masks. A masked image keeps the image where the mask is 1 and the baseline (black by default,
Petsiuk's ``x * M``) where it is 0: ``x_i = M_i x + (1 - M_i) b``.

Maps, with ``s_i = cos(f(x_i), r)`` (or ``|g(x_i)|`` without a reference), ``s_bar`` their mean
and ``m(u) = sum_i M_i(u) / (N p)`` (the coverage, 1 in expectation):

    rise (Petsiuk et al., eq. 6):  S(u) = 1 / (N p) sum_i s_i M_i(u)                       (centred=False)
    rise (default, centred=True):  S(u) = s_bar + 1 / (N p) sum_i (s_i - s_bar) M_i(u)
    rise-dissimilarity:            D(u) =         1 / (N p) sum_i (s_bar - s_i) M_i(u)

Both forms of ``S`` estimate the same quantity, E[s M(u)] / p = E[s | u kept] (their
difference, ``s_bar (m(u) - 1)``, has mean 0): high where keeping the pixel keeps the similarity,
the similarity map. The default uses the mean score as a control variate: Petsiuk's plain sum
carries ``s_bar (m(u) - 1)``, noise of size ``s_bar / sqrt(N)`` from how often each pixel happened
to be kept, which at N = 512 swamps the signal when ``s_bar`` is large - as it is for every
genuine pair (``tests/test_face_methods.py`` shows it on a toy model where one region alone
matters). ``D`` is the centred estimate with the sign turned: high where keeping the pixel
*lowers* the similarity, the dissimilarity map (Knoche et al.'s maps are likewise the two signs
of one signed deviation). ``S + D = s_bar``: the dissimilarity map ranks the pixels in the
reverse order of the (centred) similarity map; as a separate method it asks the falsification
test whether the regions a dissimilarity map points at matter more than the rest.

Seeds: the masks of an image come from a generator seeded by ``seed`` and the image's bytes (as
``random``'s noise), so an image gets the same map alone or in a batch and on every run.
Defaults: N = 512 masks, 7 x 7 cells, p = 0.5 (Petsiuk et al.'s cells and p; N is smaller than
their 4,000 for ResNet-50, to cost about what occlusion costs: one forward pass per mask),
evaluated ``batch_size`` masked images per forward pass under ``torch.inference_mode``.

``rise`` and ``rise-dissimilarity`` with the same masks read the same sums (``sum_i s_i M_i``,
``sum_i M_i``, ``sum_i s_i``): they are kept per model, keyed by the weights, the image, the
reference, the baseline and the mask settings, so the second method of a run costs no forward pass.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..imageops import make_baseline
from ..models.base import weights_version
from .base import AttributionError, Explainer
from .paths import tensor_digest

#: the most images whose mask sums are kept per model (least recently used first out)
MAX_SUMS = 64


def _sums_cache(model) -> OrderedDict:
    """The model's cache of RISE sums (a copy of the model, e.g. a randomised one, gets its own)."""
    entry = model.__dict__.get("_falsify_rise_sums")
    if entry is None or entry[0] != id(model):
        entry = (id(model), OrderedDict())
        model.__dict__["_falsify_rise_sums"] = entry
    return entry[1]


class RISEExplainer(Explainer):
    name = "rise"
    default_normalise = "signed"
    needs_gradients = False
    #: ``False``: the similarity map S; ``True``: the dissimilarity map D.
    dissimilarity = False

    def __init__(self, model, n_masks: int = 512, cells: int = 7, p: float = 0.5, seed: int = 0,
                 baseline: str | float = "black", centred: bool = True, batch_size: int = 64,
                 normalise: str | None = None) -> None:
        super().__init__(model, normalise)
        if n_masks < 1:
            raise AttributionError(f"{self.name}.n_masks must be >= 1, got {n_masks}")
        if not 1 <= cells <= min(model.input_size):
            raise AttributionError(f"{self.name}.cells must be between 1 and {min(model.input_size)}, got {cells}")
        if not 0.0 < p < 1.0:
            raise AttributionError(f"{self.name}.p must lie strictly between 0 and 1, got {p}")
        if batch_size < 1:
            raise AttributionError(f"{self.name}.batch_size must be >= 1, got {batch_size}")
        try:
            make_baseline(self.model.mean.new_zeros(1, 3, 2, 2), baseline)
        except ValueError as exc:
            raise AttributionError(f"{self.name}: {exc}") from None
        self.n_masks, self.cells, self.p, self.seed = int(n_masks), int(cells), float(p), int(seed)
        self.baseline, self.batch_size, self.centred = baseline, int(batch_size), bool(centred)

    def generator(self, image: torch.Tensor) -> torch.Generator:
        """The masks' generator for one image: seeded by ``seed`` and the image's bytes."""
        digest = hashlib.sha256(image.detach().cpu().numpy().tobytes()).digest()
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int.from_bytes(digest[:6], "little"))

    def draws(self, count: int, height: int, width: int, generator: torch.Generator):
        """The random part of ``count`` masks: their grids (count, 1, cells, cells) and shifts."""
        ch, cw = math.ceil(height / self.cells), math.ceil(width / self.cells)
        grid = (torch.rand(count, 1, self.cells, self.cells, generator=generator) < self.p).float()
        return grid, torch.randint(0, ch, (count,), generator=generator), torch.randint(0, cw, (count,), generator=generator)

    def build(self, grid: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Masks (count, H, W) in [0, 1] from their grids and shifts (see the module)."""
        ch, cw = math.ceil(height / self.cells), math.ceil(width / self.cells)
        big = F.interpolate(grid, size=((self.cells + 1) * ch, (self.cells + 1) * cw), mode="bilinear",
                            align_corners=False)[:, 0]
        rows = dy[:, None] + torch.arange(height)[None]  # (count, H)
        cols = dx[:, None] + torch.arange(width)[None]  # (count, W)
        # bilinear weights sum to 1 up to rounding (1 + 1e-7): clamped so a mask never amplifies
        return big[torch.arange(grid.shape[0])[:, None, None], rows[:, :, None], cols[:, None, :]].clamp_(0.0, 1.0)

    def masks(self, count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` masks (count, H, W) drawn from ``generator``: an image's masks are
        ``masks(n_masks, H, W, generator(image))``, whatever ``batch_size``."""
        return self.build(*self.draws(count, height, width, generator), height, width)

    def sums(self, image: torch.Tensor, reference: torch.Tensor | None, baseline: torch.Tensor):
        """``(sum_i s_i M_i (H, W), sum_i M_i (H, W), sum_i s_i)`` for one image (3, H, W)."""
        h, w = image.shape[-2:]
        key = (weights_version(self.model), self.n_masks, self.cells, self.p, self.seed,
               tensor_digest(image, baseline, *(() if reference is None else (reference,))))
        cache = _sums_cache(self.model)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        grid, dy, dx = self.draws(self.n_masks, h, w, self.generator(image))
        weighted = torch.zeros(h, w, device=image.device)
        coverage = torch.zeros(h, w, device=image.device)
        total = 0.0
        with torch.inference_mode():
            for start in range(0, self.n_masks, self.batch_size):
                part = slice(start, start + self.batch_size)
                m = self.build(grid[part], dy[part], dx[part], h, w).to(image.device)
                x = m[:, None] * image + (1 - m[:, None]) * baseline
                scores = self.target(x, None if reference is None else reference.expand(m.shape[0], -1))
                weighted += torch.einsum("n,nhw->hw", scores.float(), m)
                coverage += m.sum(0)
                total += float(scores.sum())
        cache[key] = (weighted, coverage, total)
        while len(cache) > MAX_SUMS:
            cache.popitem(last=False)
        return cache[key]

    def _attribute(self, images, references):
        baselines = make_baseline(images, self.baseline)
        out = torch.empty(images.shape[0], *images.shape[-2:], dtype=torch.float32, device=images.device)
        for i in range(images.shape[0]):
            weighted, coverage, total = self.sums(images[i], None if references is None else references[i : i + 1],
                                                  baselines[i])
            scale, mean = self.n_masks * self.p, total / self.n_masks
            deviation = (weighted - mean * coverage) / scale  # 1/(N p) sum_i (s_i - s_bar) M_i(u)
            if self.dissimilarity:
                out[i] = -deviation
            elif self.centred:
                out[i] = mean + deviation
            else:
                out[i] = weighted / scale
        return out


class RISEDissimilarityExplainer(RISEExplainer):
    """RISE's dissimilarity map D (see the module): where keeping the pixel lowers the similarity."""

    name = "rise-dissimilarity"
    dissimilarity = True
