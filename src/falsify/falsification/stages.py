"""The stages of the falsification test, each public and usable on its own.

:func:`falsify.falsification.falsification_test` composes them, in this order:

1. **regions** (:func:`regions_for`): S_high and S_low of a map (``falsify.falsification.regions``);
2. **fill** (:class:`Fill`, :func:`fill_for`): the K counterfactuals of each region. Every fill
   has one signature, :meth:`Fill.counterfactuals`; the strategies are :class:`DeterministicFill`
   (blur, mean, zero: one sample), :class:`NoiseFill` and :class:`OptimisedFill` (Algorithm 1,
   started from :func:`optimised_starts`);
3. **embedding** (:func:`embed`, :class:`BatchedEmbedder`): images through the model in batches;
4. **distances** (:func:`distances`): how far each counterfactual moved, in radians;
5. **criterion** (``falsify.falsification.criteria``): the verdict.

Random streams: every pair draws from its own generators, :func:`pair_generator` of (seed, pair
id, stream) with the streams :data:`STREAM_REGIONS` (ties in the ranking) and :data:`STREAM_FILL`
(the fill's samples, and Algorithm 1's starts). A pair gets the same regions and counterfactuals
whether it is tested alone or in a batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..choices import DETERMINISTIC_FILLS, FILLS
from ..geometry import geodesic_distance
from .counterfactuals import OptimisationInfo, fill_image, optimise_counterfactuals
from .regions import Regions, make_regions

#: the stream of the ranking's tie-breaking (regions)
STREAM_REGIONS = 0
#: the stream of the fill's samples (noise) and of Algorithm 1's starts (optimised)
STREAM_FILL = 1


def pair_generator(seed: int, pair_id: int, stream: int) -> torch.Generator:
    """A CPU generator for one pair and purpose, from (seed, pair id, stream) via SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(pair_id) & 0xFFFFFFFF, stream]).generate_state(2)
    value = (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(value)


def as_tensor(x, what: str) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays converted); a TypeError naming ``what`` otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


# --- 1. regions --------------------------------------------------------------------------------

def regions_for(image: torch.Tensor, attribution: torch.Tensor, config, pair_id: int) -> Regions:
    """S_high and S_low of one map under ``config`` (tie-breaking seeded by seed and pair id)."""
    return make_regions(
        attribution,
        granularity=config.granularity,
        grid=config.grid,
        n_segments=config.n_segments,
        compactness=config.compactness,
        mode=config.region,
        q=config.q,
        theta_high=config.theta_high,
        theta_low=config.theta_low,
        image=image,
        generator=pair_generator(config.seed, pair_id, STREAM_REGIONS),
    )


# --- 2. fills ----------------------------------------------------------------------------------

@dataclass
class Counterfactuals:
    """The counterfactuals of one image: ``high`` (K, 3, H, W) hide S_high, ``low`` hide S_low;
    ``info`` is Algorithm 1's outcome over the 2K samples (high first), for the optimised fill."""

    high: torch.Tensor
    low: torch.Tensor
    info: OptimisationInfo | None = None

    def stacked(self) -> torch.Tensor:
        """``(2K, 3, H, W)``: the high samples, then the low ones."""
        return torch.cat([self.high, self.low])


class Fill:
    """A fill strategy: how the pixels of a region are replaced.

    Every strategy has the same signature, :meth:`counterfactuals`. A subclass names the fills
    it implements in ``names`` and is registered for them with :func:`register_fill`;
    :func:`fill_for` picks the strategy of ``config.fill``.
    """

    names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config) -> None:
        self.config = config

    @property
    def k(self) -> int:
        """Samples per region."""
        return self.config.k_effective

    def counterfactuals(
        self,
        model,
        images: Sequence[torch.Tensor],
        regions: Sequence[Regions],
        f_x: torch.Tensor,
        pair_ids: Sequence[int],
        *,
        progress: bool = False,
    ) -> Iterator[Counterfactuals]:
        """The counterfactuals of each image ``images[i]`` (3, H, W) for its ``regions[i]``, in
        order: one :class:`Counterfactuals` per image. ``f_x[i]`` is the image's embedding (what
        Algorithm 1 moves away from) and ``pair_ids[i]`` seeds its random streams. Fills that
        need neither the model nor ``f_x`` ignore them."""
        bar = tqdm(total=len(images), desc="counterfactuals", unit="pair", disable=not progress, leave=False)
        try:
            for image, reg, pid in zip(images, regions, pair_ids):
                high, low = self.halves(image, reg, pid)
                yield Counterfactuals(high, low)
                bar.update(1)
        finally:
            bar.close()

    def halves(self, image: torch.Tensor, regions: Regions, pair_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(high, low) counterfactuals of one image, for fills that need no model."""
        raise NotImplementedError(f"the {self.config.fill!r} fill needs the model: use counterfactuals_of()")


#: fill name -> its strategy
FILL_STRATEGIES: dict[str, type[Fill]] = {}


def register_fill(cls: type[Fill]) -> type[Fill]:
    """Class decorator: make ``cls`` the strategy of each fill in ``cls.names``."""
    for name in cls.names:
        FILL_STRATEGIES[name] = cls
    return cls


def fill_for(config) -> Fill:
    """The fill strategy of ``config.fill``."""
    try:
        return FILL_STRATEGIES[config.fill](config)
    except KeyError:
        raise ValueError(f"unknown fill {config.fill!r}; use one of {FILLS}") from None


@register_fill
class DeterministicFill(Fill):
    """blur, mean, zero: the same replacement every time, so one sample per region."""

    names = DETERMINISTIC_FILLS

    def halves(self, image, regions, pair_id):
        values = fill_image(image, self.config.fill, 1, noise_sigma=self.config.noise_sigma,
                            blur_sigma=self.config.blur_sigma)
        x = image.unsqueeze(0)
        high = torch.where(regions.high.view(1, 1, *regions.high.shape), values, x)
        low = torch.where(regions.low.view(1, 1, *regions.low.shape), values, x)
        return high, low


@register_fill
class NoiseFill(Fill):
    """x + noise_sigma * N(0, I) on the region, clipped to [0, 1]: K fresh samples per region,
    the high ones drawn first, from the pair's :data:`STREAM_FILL`."""

    names = ("noise",)

    def halves(self, image, regions, pair_id):
        k, sigma = self.k, self.config.noise_sigma
        gen = pair_generator(self.config.seed, pair_id, STREAM_FILL)
        x = image.unsqueeze(0)
        halves = []
        for mask in (regions.high, regions.low):  # the same draws, in the same order, as fill_image
            eps = torch.randn((k, *image.shape), generator=gen, dtype=torch.float32).to(image.device, image.dtype)
            values = eps.mul_(sigma).add_(x).clamp_(0.0, 1.0)
            halves.append(torch.where(mask.view(1, 1, *mask.shape), values, x))
        return halves[0], halves[1]


def optimised_starts(image: torch.Tensor, regions: Regions, k: int, seed: int, pair_id: int,
                     sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's ``k`` starts on S_high and on S_low of one image: x plus ``sigma`` N(0, I)
    noise on the region, clipped to [0, 1], ``(k, 3, H, W)`` each. The high starts are drawn
    first, from the pair's :data:`STREAM_FILL` (the stream of the optimised fill)."""
    gen = pair_generator(seed, pair_id, STREAM_FILL)
    starts = []
    for mask in (regions.high, regions.low):
        eps = torch.randn((k, *image.shape), generator=gen)
        starts.append((image.unsqueeze(0) + sigma * eps * mask).clamp(0.0, 1.0))
    return starts[0], starts[1]


@register_fill
class OptimisedFill(Fill):
    """Algorithm 1 (:func:`optimise_counterfactuals`) from :func:`optimised_starts`, every
    sample of every image in chunks of ``batch_size``."""

    names = ("optimised",)

    def counterfactuals(self, model, images, regions, f_x, pair_ids, *, progress=False):
        from ..models.base import model_device

        c, k = self.config, self.k
        device = model_device(model)
        rows = []  # (image index, image, mask, start)
        for i, (x, reg, pid) in enumerate(zip(images, regions, pair_ids)):
            for mask, init in zip((reg.high, reg.low), optimised_starts(x, reg, k, c.seed, pid, c.opt_init_sigma)):
                for j in range(k):
                    rows.append((i, x, mask, init[j]))
        out: dict[int, list] = {}
        bar = tqdm(total=len(rows), desc="optimising", unit="cf", disable=not progress, leave=False)
        for start in range(0, len(rows), c.batch_size):
            chunk = rows[start : start + c.batch_size]
            idx = [r[0] for r in chunk]
            cf, info = optimise_counterfactuals(
                model,
                torch.stack([r[1] for r in chunk]).to(device),
                torch.stack([r[2] for r in chunk]).to(device),
                f_x[idx].to(device),
                init=torch.stack([r[3] for r in chunk]).to(device),
                steps=c.opt_steps,
                lr=c.opt_lr,
                lam=c.opt_lambda,
                delta_target=c.opt_delta_target,
                grad_clip=c.opt_grad_clip,
                tol=c.opt_tol,
                patience=c.opt_patience,
            )
            for r, i in enumerate(idx):
                out.setdefault(i, []).append((cf[r].cpu(), bool(info.converged[r]), int(info.iterations[r]),
                                              float(info.final_loss[r])))
            bar.update(len(chunk))
        bar.close()
        for i in range(len(images)):
            items = out[i]
            cfs = torch.stack([t[0] for t in items])
            info = OptimisationInfo(torch.tensor([t[1] for t in items]), torch.tensor([t[2] for t in items]),
                                    torch.tensor([t[3] for t in items]))
            yield Counterfactuals(cfs[:k], cfs[k:], info)


def counterfactuals_of(model, image: torch.Tensor, regions: Regions, f_x: torch.Tensor, pair_id: int,
                    config) -> Counterfactuals:
    """The counterfactuals of one image (3, H, W) under ``config``'s fill, as the test builds them
    (``f_x``: the image's embedding (D,))."""
    return next(iter(fill_for(config).counterfactuals(model, [image], [regions], f_x.unsqueeze(0), [pair_id])))


def build_counterfactuals(image: torch.Tensor, regions: Regions, config, pair_id: int) -> torch.Tensor:
    """The 2K counterfactuals of one image for a fill that needs no model, in one tensor: rows
    0..K-1 hide S_high, K..2K-1 S_low (the optimised fill needs the model: :func:`counterfactuals_of`).
    The reference implementation of :class:`DeterministicFill` and :class:`NoiseFill`, which give
    the same values as (high, low) halves without the copy into one tensor.

    Stochastic fills draw the high samples, then the low samples, from one generator seeded by
    (seed, pair id): the same pair gives the same counterfactuals in any batch.
    """
    k = config.k_effective
    gen = pair_generator(config.seed, pair_id, STREAM_FILL)
    kw = dict(generator=gen, noise_sigma=config.noise_sigma, blur_sigma=config.blur_sigma)
    if config.fill in DETERMINISTIC_FILLS:
        values = fill_image(image, config.fill, 1, **kw)
        v_high, v_low = values, values
    else:
        v_high = fill_image(image, config.fill, k, **kw)
        v_low = fill_image(image, config.fill, k, **kw)
    mh = regions.high.view(1, 1, *regions.high.shape)
    ml = regions.low.view(1, 1, *regions.low.shape)
    x = image.unsqueeze(0)
    high = torch.where(mh, v_high, x).expand(k, -1, -1, -1)
    low = torch.where(ml, v_low, x).expand(k, -1, -1, -1)
    return torch.cat([high, low])


# --- 3. embedding ------------------------------------------------------------------------------

def embed(model, images: torch.Tensor, batch_size: int, device, cache: "EmbeddingCache | None" = None) -> torch.Tensor:
    """``model(images)`` as float on the CPU, ``batch_size`` images per forward pass on ``device``
    (with ``cache``: only the images it lacks, :class:`EmbeddingCache`)."""
    if cache is not None:
        embedder = cache.embedder(model, batch_size, images.shape[0], device)
        embedder.add(images)
        return embedder.finish()
    outs = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            outs.append(model(images[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outs)


class BatchedEmbedder:
    """Collects images (:meth:`add`, in any chunks) and embeds them in forward passes of exactly
    ``batch_size``; :meth:`finish` returns all ``total`` embeddings in the order added."""

    def __init__(self, model, batch_size: int, total: int, device: torch.device) -> None:
        self.model, self.batch_size, self.device = model, batch_size, device
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.done = 0
        self.out: torch.Tensor | None = None
        self.total = total

    def add(self, images: torch.Tensor) -> None:
        self.pending.append(images)
        self.n_pending += images.shape[0]
        while self.n_pending >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> torch.Tensor:
        if self.n_pending:
            self._run(self.n_pending)
        if self.out is None:
            return torch.empty(0, 0)
        return self.out

    def _take(self, n: int) -> torch.Tensor:
        """The first ``n`` pending images, copying only when they span several added tensors."""
        parts, got = [], 0
        while got < n:
            head = self.pending[0]
            need = n - got
            if head.shape[0] <= need:
                parts.append(head)
                self.pending.pop(0)
                got += head.shape[0]
            else:
                parts.append(head[:need])
                self.pending[0] = head[need:]
                got = n
        self.n_pending -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, n: int) -> None:
        batch = self._take(n)
        with torch.inference_mode():
            emb = self.model(batch.to(self.device)).float().cpu()
        if self.out is None:
            self.out = torch.empty(self.total, emb.shape[1])
        self.out[self.done : self.done + n] = emb
        self.done += n


class EmbeddingCache:
    """Embeddings of images by their content (a hash of their float32 pixels and shape), for
    one model: a test that meets an image the cache holds (the same f(x), or a counterfactual
    of a region another map of the same image also picked) reads its embedding instead of
    embedding it again. Valid for one model only; a run keeps one per chunk of pairs."""

    def __init__(self) -> None:
        self.embeddings: dict[bytes, torch.Tensor] = {}
        #: images read from the cache instead of embedded
        self.hits = 0

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        t = image.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.blake2b(t.numpy().tobytes(), digest_size=20)
        h.update(repr(tuple(t.shape)).encode())
        return h.digest()

    def embedder(self, model, batch_size: int, total: int, device) -> "CachedEmbedder":
        return CachedEmbedder(model, batch_size, total, device, self)


class CachedEmbedder:
    """:class:`BatchedEmbedder` that embeds only the images its :class:`EmbeddingCache` lacks
    (each once) and adds them to it; :meth:`finish` returns every embedding in the order added."""

    def __init__(self, model, batch_size: int, total: int, device, cache: EmbeddingCache) -> None:
        self.inner = BatchedEmbedder(model, batch_size, total, device)
        self.cache = cache
        self.keys: list[bytes] = []
        self.queued: dict[bytes, int] = {}  # key -> its row among the images embedded here

    def add(self, images: torch.Tensor) -> None:
        new = []
        for j in range(images.shape[0]):
            k = self.cache.key(images[j])
            self.keys.append(k)
            if k in self.cache.embeddings:
                self.cache.hits += 1
            elif k not in self.queued:
                self.queued[k] = len(self.queued)
                new.append(j)
        if len(new) == images.shape[0]:
            self.inner.add(images)
        elif new:
            self.inner.add(images[new])

    def finish(self) -> torch.Tensor:
        emb = self.inner.finish()
        for k, row in self.queued.items():
            self.cache.embeddings[k] = emb[row].clone()
        if not self.keys:
            return torch.empty(0, 0)
        return torch.stack([self.cache.embeddings[k] for k in self.keys])


def embedder_for(model, batch_size: int, total: int, device, cache: EmbeddingCache | None = None):
    """A :class:`BatchedEmbedder`, or with ``cache`` a :class:`CachedEmbedder` reading and filling it."""
    if cache is None:
        return BatchedEmbedder(model, batch_size, total, device)
    return cache.embedder(model, batch_size, total, device)


# --- 4. distances ------------------------------------------------------------------------------

def distances(f_x: torch.Tensor, emb: torch.Tensor, reference: torch.Tensor | None, target: str) -> torch.Tensor:
    """How far each counterfactual embedding in ``emb`` (N, D) moved, in radians: from f(x) itself
    (``embedding``), or along the pair's own question (``pair``: the change of its angle to the
    reference, |d_g(f(x'), r) - d_g(f(x), r)|; ``signed-pair``: only how far it moved *away* from
    the reference, max(0, d_g(f(x'), r) - d_g(f(x), r)): hiding evidence of the reference must
    lower the similarity to it, and a move towards it counts as no move; ``signed-angle``: the
    signed change d_g(f(x'), r) - d_g(f(x), r), negative when x' moved towards the reference)."""
    if target in ("signed-pair", "signed-angle"):
        r = reference.double().unsqueeze(0)
        change = geodesic_distance(emb, r) - geodesic_distance(f_x.unsqueeze(0), r)
        return change.clamp_min(0.0) if target == "signed-pair" else change
    if target == "pair":
        r = reference.double().unsqueeze(0)
        return (geodesic_distance(emb, r) - geodesic_distance(f_x.unsqueeze(0), r)).abs()
    return geodesic_distance(f_x.unsqueeze(0), emb)
