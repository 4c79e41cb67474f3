"""Quantus's faithfulness metrics on falsify's maps, through a similarity wrapper (issue 21, item 4).

Quantus (https://github.com/understandable-machine-intelligence-lab/Quantus, 0.6.0) evaluates
explanations of classifiers: its model returns class scores ``(B, classes)`` and every metric reads
the score of the class ``y``. A face embedder returns an embedding, and what falsify's maps explain
is the pair's similarity ``s(x) = cos(f(x), f(B))`` (``falsify.attribution.base``). So:

* :class:`SimilarityModule` wraps an embedder and the pair's reference image B: ``forward(x)`` is
  ``(N, 1)``, the cosine similarity of each row of ``x`` to f(B) (class 0). With a decision
  threshold it returns ``(N, 2)``: ``[s, threshold]``, so that ``argmax`` is 0 exactly when the model
  accepts the pair (``s >= threshold``) - ROAD counts how often that class survives.
* **One pair at a time.** Quantus slices its inputs into batches and perturbs them, and each call
  of the model sees a batch whose rows are not labelled by pair. The wrapper therefore holds one
  reference, and :func:`quantus_scores` calls every metric on one pair (``x_batch`` of one image):
  every row the model sees is then a perturbation of that pair's image A, and it is compared with
  that pair's B. No batch order has to be trusted.
* **The reference is embedded by the wrapped embedder itself**, in the same forward pass as ``x``
  (one extra image per pass). When Quantus's randomisation metrics (MPRT, EfficientMPRT) reset the
  layers of a deep copy of the wrapper, B is embedded by the randomised network too: the target is
  the randomised model's similarity of the same pair, as falsify's ``@random-model`` rows do it.
* :func:`explain_func` is Quantus's ``explain_func``: falsify's explainer of a method
  (``falsify.attribution.get_explainer``) on the wrapper's embedder against its reference, maps
  ``(B, 1, H, W)`` in [0, 1] as falsify makes them.

The metrics (:data:`METRICS`) and their parameters (:func:`make_metric`): FaithfulnessCorrelation,
RegionPerturbation with square patches (most relevant first), ROAD (most relevant first, noisy
linear imputation) and EfficientMPRT. Which direction of each means "faithful" is
:data:`FAITHFUL_IF`. Quantus is an optional extra: it is imported when a metric is made, and its
absence is one line naming the install (:data:`INSTALL`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attribution import get_explainer

#: The Quantus version the bridge is written and tested against.
QUANTUS_VERSION = "0.6.0"
#: How to install it: Quantus declares opencv-python, which clashes with the headless OpenCV falsify
#: pins, so it goes in without dependencies; its real ones come with the ``quantus`` extra.
INSTALL = (f"pip install 'falsify[quantus]' torch==2.13.0 && pip install --no-deps quantus=={QUANTUS_VERSION}")

#: The metrics, by the names used in tables.
METRICS = ("faithfulness-correlation", "region-perturbation", "road", "efficient-mprt")
#: Which direction of each score means a faithful map: "higher" or "lower".
FAITHFUL_IF = {
    # Pearson correlation between the attribution mass of random pixel subsets and the drop of s
    "faithfulness-correlation": "higher",
    # mean drop of s over the curve, patches hidden most relevant first (AOPC)
    "region-perturbation": "higher",
    # mean over the removal percentages of "the pair is still accepted" (most relevant first)
    "road": "lower",
    # relative rise of the maps' discrete entropy when every layer is randomised
    "efficient-mprt": "higher",
}
#: Metrics that need the decision threshold (and so a genuine pair the model accepts).
NEEDS_THRESHOLD = ("road",)
#: Metrics that re-explain (on a randomised model): they call :func:`explain_func`.
REEXPLAINS = ("efficient-mprt",)

#: Defaults of :func:`make_metric`, per metric, for 150 x 150 (dlib) or 112 x 112 crops.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # 50 random subsets of 224 (channel, pixel) entries (Quantus's subset size; 0.33% of a 150 x 150
    # image) set to black (the image's minimum). Quantus's default is 100 subsets; 50 halves the time.
    # A large subset hides the map: the attribution mass of many random entries varies little between
    # subsets (on tests/test_quantus_bridge.py's toy embedder, subsets of 10% lost the right map's
    # positive correlation that subsets of 1% show).
    "faithfulness-correlation": {"nr_runs": 50, "subset_size": 224, "perturb_baseline": "black"},
    # 10 x 10 patches set to black, the 10% most relevant first (22 of 225 patches at 150 x 150)
    "region-perturbation": {"patch_size": 10, "fraction": 0.1, "perturb_baseline": "black"},
    # the 5% ... 90% most relevant entries imputed by noisy linear imputation
    "road": {"percentages": (5, 10, 20, 30, 50, 70, 90), "noise": 0.01},
    # every layer reset bottom-up (Quantus's seed), the maps' entropy before and after
    "efficient-mprt": {"layer_order": "bottom_up", "seed": 42},
}


def import_quantus():
    """The ``quantus`` module, or an ImportError whose one line names the install."""
    try:
        import quantus
    except ImportError:
        raise ImportError(f"the Quantus comparison needs Quantus {QUANTUS_VERSION}: {INSTALL}") from None
    return quantus


class SimilarityModule(nn.Module):
    """A face embedder as a Quantus "classifier": ``forward(x)`` is ``cos(f(x), f(B))`` ``(N, 1)``.

    ``embedder`` is a falsify FaceEmbedder (RGB in [0, 1] at ``input_size`` -> unit embeddings),
    ``reference_image`` the pair's image B ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1]. With
    ``threshold`` (the model's decision threshold, a cosine) the output is ``(N, 2)``, ``[s,
    threshold]``: class 0 wins (``argmax``) exactly when the pair is accepted. The module is in eval
    mode, as Quantus requires; B is a buffer, so deep copies (Quantus's randomised models) carry it.
    """

    def __init__(self, embedder: nn.Module, reference_image: torch.Tensor, threshold: float | None = None) -> None:
        super().__init__()
        if not hasattr(embedder, "input_size"):
            raise TypeError("embedder must be a falsify FaceEmbedder (falsify.models.load_model or wrap_model), "
                            f"got {type(embedder).__name__}")
        ref = torch.as_tensor(reference_image, dtype=torch.float32)
        if ref.dim() == 3:
            ref = ref.unsqueeze(0)
        if ref.dim() != 4 or ref.shape[0] != 1:
            raise ValueError(f"reference_image must be one image (3, H, W), got {tuple(ref.shape)}")
        self.embedder = embedder
        self.register_buffer("reference_image", ref.to(next(embedder.parameters()).device))
        self.threshold = None if threshold is None else float(threshold)
        self.eval()

    def reference_embedding(self) -> torch.Tensor:
        """f(B) ``(1, D)`` under the current weights, no gradient."""
        with torch.no_grad():
            return self.embedder(self.reference_image)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.reference_image.device)
        emb = self.embedder(torch.cat([x, self.reference_image]))
        f, r = emb[:-1], emb[-1:].detach()
        s = (f * F.normalize(r, dim=1)).sum(dim=1, keepdim=True)
        if self.threshold is None:
            return s
        return torch.cat([s, torch.full_like(s, self.threshold)], dim=1)


def explain_func(model: nn.Module, inputs, targets=None, *, method: str = "saliency",
                 options: Mapping[str, Any] | None = None, **_: Any) -> np.ndarray:
    """Quantus's ``explain_func``: the maps of ``method`` for ``inputs`` ``(N, 3, H, W)`` made by
    falsify's explainer on the :class:`SimilarityModule`'s embedder against its reference, as
    ``(N, 1, H, W)`` float32 in [0, 1]. ``targets`` is ignored (the target is the similarity);
    ``options`` are the method's (``get_explainer(method, model, **options)``); other keywords
    Quantus passes (``device``) are ignored."""
    if not isinstance(model, SimilarityModule):
        raise TypeError(f"explain_func explains a SimilarityModule (the wrapped embedder), got {type(model).__name__}")
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=model.reference_image.device)
    ref = model.reference_embedding().expand(x.shape[0], -1)
    maps = get_explainer(method, model.embedder, **dict(options or {}))(x.clamp(0.0, 1.0), ref)
    return maps.detach().cpu().float().numpy()[:, None]


def make_metric(name: str, image_size: Sequence[int], **params):
    """The Quantus metric ``name`` (:data:`METRICS`) with :data:`DEFAULT_PARAMS` (``params``
    override them), warnings and progress bars off, no normalisation (falsify's maps are in [0, 1]
    already) and scores per instance."""
    quantus = import_quantus()
    p = {**DEFAULT_PARAMS[name], **params}
    h, w = (int(v) for v in image_size)
    common = dict(disable_warnings=True, display_progressbar=False, normalise=False, abs=False,
                  return_aggregate=False)
    if name == "faithfulness-correlation":
        return quantus.FaithfulnessCorrelation(nr_runs=int(p["nr_runs"]),
                                               subset_size=min(int(p["subset_size"]), 3 * h * w),
                                               perturb_baseline=p["perturb_baseline"], **common)
    if name == "region-perturbation":
        patches = math.ceil(h / p["patch_size"]) * math.ceil(w / p["patch_size"])
        return quantus.RegionPerturbation(patch_size=int(p["patch_size"]), order="morf",
                                          regions_evaluation=max(1, int(p["fraction"] * patches)),
                                          perturb_baseline=p["perturb_baseline"], **common)
    if name == "road":
        return _spatial_road(quantus)(percentages=list(p["percentages"]), noise=float(p["noise"]), **common)
    if name == "efficient-mprt":
        return quantus.EfficientMPRT(layer_order=p["layer_order"], seed=int(p["seed"]), **common)
    raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def _spatial_road(quantus):
    """Quantus's ROAD, ranking pixels rather than (channel, pixel) entries.

    ROAD 0.6.0 broadcasts a one-channel map to the image's three channels, ranks the 3HW entries
    and hands their flat indices to ``noisy_linear_imputation``, which indexes the HW pixels (and
    imputes all channels of each): on RGB images it fails (index out of bounds). This subclass ranks
    the HW pixels of the map (the first channel; a map repeated over the channels has one ranking)
    and removes the top ``p`` % of them, ties in raster order; everything else is ROAD's.
    """

    class SpatialROAD(quantus.ROAD):
        def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
            b = a_batch.shape[0]
            a = a_batch.reshape(b, -1, *x_batch.shape[-2:])[:, 0].reshape(b, -1)
            order = np.argsort(-a, axis=1, kind="stable")
            results = []
            for p in self.percentages:
                top = order[:, : int(a.shape[1] * p / 100)]
                xp = np.stack([self.perturb_func(arr=xe, indices=t) for xe, t in zip(x_batch, top)])
                x_input = model.shape_input(xp, x_batch.shape, channel_first=True, batched=True)
                results.append(y_batch == np.argmax(model.predict(x_input), axis=-1))
            return [np.stack(results, axis=1).astype(int)]

    return SpatialROAD


def score_pair(metric_name: str, metric, embedder: nn.Module, image: torch.Tensor, reference_image: torch.Tensor,
               attribution: torch.Tensor, *, method: str, options: Mapping[str, Any] | None = None,
               threshold: float | None = None, seed: int = 0) -> float:
    """One metric's score (a float) of one map ``attribution`` (H, W) of ``image`` (3, H, W), the
    pair's other image ``reference_image``; Quantus's global NumPy random state is seeded with
    ``seed`` first, so every method is scored on the same random subsets of a pair."""
    if metric_name in NEEDS_THRESHOLD and threshold is None:
        raise ValueError(f"{metric_name} needs the model's decision threshold (threshold=...)")
    model = SimilarityModule(embedder, reference_image, threshold if metric_name in NEEDS_THRESHOLD else None)
    x = image.detach().float().cpu().numpy()[None]
    a = attribution.detach().float().cpu().numpy()[None, None]
    if metric_name != "efficient-mprt":  # one attribution per (channel, pixel), as the metric flattens x
        a = np.repeat(a, x.shape[1], axis=1)
    # softmax=False: the score is the similarity itself (a softmax over one column is always 1).
    # EfficientMPRT takes the entropy of the model's outputs too (for its extra scores only), which
    # needs them non-negative, and a similarity can be negative: there the softmax (1 for every
    # input) keeps it quiet. Its score is the maps' entropy; explain_func gets the module unwrapped.
    kw = dict(model=model, x_batch=x, y_batch=np.zeros(1, dtype=int), a_batch=a, channel_first=True,
              softmax=metric_name == "efficient-mprt", device=str(model.reference_image.device), batch_size=1)
    if metric_name in REEXPLAINS:
        kw.update(explain_func=explain_func, explain_func_kwargs={"method": method, "options": dict(options or {})})
    np.random.seed(seed)
    out = metric(**kw)
    if metric_name == "road":  # {percentage: accuracy}, here of this one pair
        return float(np.mean(list(out.values())))
    values = np.asarray(out, dtype=float)
    if metric_name == "region-perturbation":  # (1, steps): the drop of s after each patch
        return float(values.mean())
    return float(values.reshape(-1)[0])


def quantus_scores(embedder: nn.Module, images: torch.Tensor, reference_images: torch.Tensor,
                   maps: Mapping[str, torch.Tensor], *, metrics: Sequence[str] = METRICS,
                   options: Mapping[str, Mapping[str, Any]] | None = None, threshold: float | None = None,
                   accepted: Sequence[bool] | None = None, seed: int = 0, params: Mapping[str, dict] | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict]:
    """Every metric on every map: rows ``{method, pair, metric, score}``.

    ``images`` ``(N, 3, H, W)`` (A of each pair), ``reference_images`` ``(N, 3, H, W)`` (B),
    ``maps[method]`` ``(N, H, W)`` its maps of A against f(B); ``options[method]`` its explainer
    options (for EfficientMPRT, which re-explains). Metrics in :data:`NEEDS_THRESHOLD` (ROAD) are
    scored only on the pairs whose ``accepted`` is true (genuine pairs the model accepts: a pair
    already rejected has no decision to break) and need ``threshold``. Pair ``i`` seeds NumPy with
    ``seed + i`` for every method.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    n = images.shape[0]
    if reference_images.shape[0] != n or any(m.shape[0] != n for m in maps.values()):
        raise ValueError("images, reference_images and every method's maps need one row per pair")
    if any(m in NEEDS_THRESHOLD for m in metrics) and (threshold is None or accepted is None):
        raise ValueError(f"{', '.join(NEEDS_THRESHOLD)} needs threshold= and accepted= (one bool per pair)")
    size = tuple(images.shape[-2:])
    made = {m: make_metric(m, size, **dict((params or {}).get(m, {}))) for m in metrics}
    rows = []
    for method, method_maps in maps.items():
        for metric_name, metric in made.items():
            for i in range(n):
                if metric_name in NEEDS_THRESHOLD and not accepted[i]:
                    continue
                score = score_pair(metric_name, metric, embedder, images[i], reference_images[i], method_maps[i],
                                   method=method, options=(options or {}).get(method), threshold=threshold,
                                   seed=seed + i)
                rows.append({"method": method, "pair": i, "metric": metric_name, "score": score})
            if log:
                log(f"  {method:<18} {metric_name}")
    return rows


def summarise_scores(rows: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """``{method: {metric: {"mean": ..., "n": ...}}}`` over the finite scores of ``rows``
    (:func:`quantus_scores`); ``n`` counts them (a NaN score, e.g. EfficientMPRT on a constant map,
    is left out and so not counted)."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(r["metric"], []).append(r["score"])
    return {m: {k: {"mean": float(np.mean(f)) if (f := [v for v in vs if math.isfinite(v)]) else None,
                    "n": len(f)} for k, vs in per.items()} for m, per in out.items()}
