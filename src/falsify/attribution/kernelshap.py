"""KernelSHAP (Lundberg & Lee, 2017) over superpixels, computed as captum's ``KernelShap`` does.

Shapley values of the similarity target with superpixels as players: efficiency says
sum_k phi_k = s(x) - s(baseline). Defaults: 50 SLIC segments, 128 coalitions, mean-colour
baseline (see ``superpixel_base``).

Coalitions (captum's sampler): the full and the empty coalition first, then coalitions whose
size k is drawn with probability proportional to (M - 1) / (k (M - k)) and whose members are a
uniform k-subset, so every sample has weight 1 (the Shapley kernel is in the sampling); the
full and empty coalitions get weight 1e6, which pins the fit to s(x) and s(baseline). The
surrogate is weighted least squares with an intercept.
"""
from __future__ import annotations

import torch
from captum.attr import KernelShap
from torch.distributions import Categorical

from .superpixel_base import SuperpixelExplainer

#: captum's weight of the full and the empty coalition ("infinite" in the Shapley kernel)
INF_WEIGHT = 1_000_000.0


class KernelSHAPExplainer(SuperpixelExplainer):
    name = "kernelshap"
    captum_class = KernelShap

    def sample_coalitions(self, m: int) -> torch.Tensor:
        sizes = torch.arange(m, dtype=torch.float)
        probs = torch.tensor(m - 1) / (sizes * (m - sizes))
        probs[0] = 0.0
        dist = Categorical(probs)
        rows = [torch.ones(1, m, dtype=torch.long), torch.zeros(1, m, dtype=torch.long)]
        for _ in range(self.n_samples - 2):  # captum's draw order: a size, then a normal vector
            k = dist.sample()
            r = torch.randn(1, m)
            threshold = torch.kthvalue(r, m - k).values.item()
            rows.append((r > threshold).long())
        return torch.cat(rows)[: self.n_samples]

    def sample_weights(self, coalitions, images, perturbed_cos):
        size = coalitions.sum(1)
        ends = (size == 0) | (size == coalitions.shape[1])
        return torch.where(ends, torch.full_like(size, INF_WEIGHT), torch.ones_like(size))
