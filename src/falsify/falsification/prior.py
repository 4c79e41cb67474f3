"""The model's image-independent prior map, and what it predicts on each image.

Hiding the middle of a face moves any face embedding far and hiding the border barely moves it,
so a map that is merely "high in the middle" passes the plain test without saying anything about
the image in front of it. The *prior* of a model is the best map of that kind: the mean of the
model's own occlusion maps (``occlusion_sensitivity``: each grid cell filled, the geodesic
distance it causes) over images that are not tested. It serves twice:

- as the ``centre`` control method (the same map for every image);
- in the ``beyond-prior`` criterion, which asks a map to beat the prior on the same image:
  (d_high - d_low) of the map minus (d_high - d_low) of the prior must exceed ``delta``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .regions import feature_segments


@dataclass(frozen=True)
class Prior:
    """A prior map stored by cell: ``cells`` (grid x grid values, row-major) at ``size``."""

    cells: tuple[float, ...]
    grid: int
    size: tuple[int, int]
    n_images: int
    fill: str = "blur"

    def map(self) -> torch.Tensor:
        """The (H, W) map, in [0, 1] (min-max over cells)."""
        v = torch.tensor(self.cells, dtype=torch.float32)
        span = float(v.max() - v.min())
        v = (v - v.min()) / span if span > 0 else torch.zeros_like(v)
        seg = feature_segments(self.size[0], self.size[1], "grid", grid=self.grid)
        return v[seg]

    def to_dict(self) -> dict:
        return {"cells": list(self.cells), "grid": self.grid, "size": list(self.size), "n_images": self.n_images,
                "fill": self.fill}

    @classmethod
    def from_dict(cls, d: dict) -> "Prior":
        return cls(tuple(float(c) for c in d["cells"]), int(d["grid"]), (int(d["size"][0]), int(d["size"][1])),
                   int(d["n_images"]), d.get("fill", "blur"))


def occlusion_prior(model, images: torch.Tensor, grid: int = 10, fill: str = "blur", blur_sigma: float = 0.05,
                    batch_size: int = 64) -> Prior:
    """The mean occlusion map of ``model`` over ``images`` (B, 3, H, W): one value per grid cell."""
    from .calibration import occlusion_sensitivity

    if images.shape[0] < 1:
        raise ValueError("the prior needs at least one image")
    maps = occlusion_sensitivity(model, images, grid=grid, fill=fill, blur_sigma=blur_sigma, batch_size=batch_size)
    h, w = maps.shape[-2:]
    seg = feature_segments(h, w, "grid", grid=grid)
    mean = maps.mean(0)
    cells = torch.zeros(grid * grid).index_add_(0, seg.flatten(), mean.flatten())
    counts = torch.bincount(seg.flatten(), minlength=grid * grid).clamp_min(1)
    return Prior(tuple(float(c) for c in cells / counts), grid, (int(h), int(w)), int(images.shape[0]), fill)


def prior_image_batch(model, pool, exclude: set, n: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the prior (and delta) are computed on: the first ``n`` readable images of the
    pairs ``pool`` that are not in ``exclude`` (the tested images), as ``(n, 3, H, W)``, with the
    embeddings of their partners in those pairs (the references of the pair-aware target)."""
    from ..data import load_images
    from ..models.base import model_device

    partner: dict = {}
    for p in pool:
        partner.setdefault(p.a, p.b)
        partner.setdefault(p.b, p.a)
    paths = prior_images(list(partner), exclude, n)
    images, bad = load_images(paths, model.input_size, errors="skip", align=getattr(model, "aligner", None))
    others, bad_partners = load_images([partner[q] for q in paths], model.input_size, errors="skip",
                                       align=getattr(model, "aligner", None))
    # load_images returns the readable ones in input order: keep the rows whose image and partner both are
    bad_a, bad_b = {q for q, _ in bad}, {q for q, _ in bad_partners}
    rows_a = [i for i, q in enumerate(paths) if q not in bad_a]
    rows_b = [i for i, q in enumerate(paths) if partner[q] not in bad_b]
    both = sorted(set(rows_a) & set(rows_b))
    if not both:
        untested = f"{len(paths)} of them untested" if paths else "every one of them tested"
        why = ("none readable with a readable partner" if paths else
               "the prior is computed on images no tested pair uses, so its maps never saw the tested faces")
        raise ValueError(f"the model's prior needs up to {n} images of the calibration pairs that no tested pair uses; "
                         f"the {len(pool)} calibration pairs have {len(partner)} images, {untested} ({why}): "
                         "add pairs of other photos to the data, calibrate on another data set with --calibrate-on "
                         "DATA, or use --preset plain (a test without the prior)")
    images = images[[rows_a.index(i) for i in both]]
    others = others[[rows_b.index(i) for i in both]]
    device = model_device(model)
    with torch.inference_mode():
        refs = torch.cat([model(others[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, others.shape[0], batch_size)])
    return images, refs


def prior_batch(model, pool, tested: set, n: int, *, batch_size: int = 64, warn=None):
    """:func:`prior_image_batch` for ``falsify run`` and ``falsify test``: ``warn(line)`` (when
    given) says when fewer than ``n`` untested images were found."""
    images, refs = prior_image_batch(model, pool, tested, n, batch_size=batch_size)
    if images.shape[0] < n and warn is not None:
        warn(f"the model's prior rests on {images.shape[0]} of the {n} untested images it is meant to average "
             "(--prior-images); add pairs of other photos, or --calibrate-on another data set")
    return images, refs


def model_prior(model, pool, tested: set, config, *, n_images: int, grid: int = 10, batch_size: int = 64,
                delta: bool = False, seed: int = 0, cached: "Prior | None" = None, log=None, warn=None):
    """The model's prior map, and with ``delta`` its calibrated delta, for ``falsify run`` and
    ``falsify test`` alike: the mean occlusion map (blur fill, ``grid`` cells a side) of ``n_images``
    images of the calibration pairs ``pool`` that are not ``tested`` (or ``cached``), and the excess
    over it that maps knowing only the prior reach on them (:func:`calibrate_delta` with the test's
    ``config``). ``log(line)`` says what is computed. Returns ``(Prior, delta_info | None)``."""
    say = log or (lambda line: None)
    images, refs = prior_batch(model, pool, tested, n_images, batch_size=batch_size, warn=warn)
    prior = cached
    if prior is None:
        say(f"the model's prior map: mean occlusion map of {images.shape[0]} untested images ...")
        prior = occlusion_prior(model, images, grid=grid, fill="blur", batch_size=batch_size)
    info = None
    if delta:
        say("calibrating delta: the excess over the prior of maps that know only the prior ...")
        info = calibrate_delta(model, images, prior.map(), config, seed=seed, references=refs)
    return prior, info


def prior_images(paths: Sequence, exclude: set, n: int) -> list:
    """The first ``n`` distinct images of ``paths`` that are not in ``exclude`` (the tested images)."""
    out = []
    for p in dict.fromkeys(paths):
        if p not in exclude:
            out.append(p)
            if len(out) == n:
                break
    return out


def null_maps(prior_map: torch.Tensor, n: int, grid: int, generator: torch.Generator, bands: int = 8) -> torch.Tensor:
    """``n`` maps that know only the prior: the prior plus uniform noise of one band's width
    (1/``bands`` of its range) per feature cell of a ``grid`` x ``grid`` partition, so they agree
    with the prior's coarse ranking and order the regions at random within it."""
    h, w = prior_map.shape
    seg = feature_segments(h, w, "grid", grid=grid)
    noise = torch.rand(n, grid * grid, generator=generator)[:, seg]
    span = float(prior_map.max() - prior_map.min()) or 1.0
    return prior_map.unsqueeze(0) + (span / bands) * noise


def calibrate_delta(model, images: torch.Tensor, prior_map: torch.Tensor, config, n_null: int = 4,
                    quantile: float = 0.95, seed: int = 0, references: torch.Tensor | None = None) -> dict:
    """The margin ``delta`` of ``config``'s criterion when it calibrates one (beyond-prior: over the
    prior's margin; beyond-mirror: over the mirrored sets' margin; any other: beyond-prior's): the
    ``quantile`` of the excess that maps knowing only the prior (``null_maps``) reach on ``images`` (untested calibration images)
    under ``config`` (fill, regions, target; ``references``: the partner embeddings the pair-aware
    target needs). A map passes only if it beats the prior by more than such maps do
    ``quantile`` of the time. Returns ``{"delta", "quantile", "n", "excess_median"}``."""
    from dataclasses import replace

    from .core import falsification_test

    if images.shape[0] < 1:
        raise ValueError("calibrating delta needs at least one image")
    from .criteria import CRITERION_CLASSES

    # the criterion whose delta is calibrated: the config's when it calibrates one, else beyond-prior
    crit = config.criterion if CRITERION_CLASSES[config.criterion].prior_calibrated == "delta" else "beyond-prior"
    cfg = replace(config, criterion=crit, delta=0.0, tau_high=0.0, tau_low=math.pi, epsilon=0.0)
    gen = torch.Generator().manual_seed(seed)
    excess = []
    ids = [10_000_000 + i for i in range(images.shape[0])]  # pair ids no tested pair uses
    cache: dict = {}
    for _ in range(n_null):
        maps = null_maps(prior_map, images.shape[0], cfg.grid, gen)
        rs = falsification_test(model, images, references, maps, cfg, pair_ids=ids, prior=prior_map, prior_cache=cache)
        excess += [r.excess for r in rs if r.excess is not None]
    if not excess:
        raise ValueError("no null map was testable; cannot calibrate delta")
    t = torch.tensor(excess, dtype=torch.float64)
    return {"delta": max(0.0, float(torch.quantile(t, quantile))), "quantile": quantile, "n": len(excess),
            "excess_median": float(t.median())}
