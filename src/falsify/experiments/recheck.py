"""The float32 re-check of near-ties, for runs whose network runs in low precision (issue 30).

Under ``--precision bf16`` (or ``fp16``) a map and its test run in low precision, and a verdict
near the criterion's boundary can come out on the other side of it than in float32: the map
itself moves (bfloat16 gradients and outputs) and so do the test's distances. A 6.1 row whose
*gap* (:func:`boundary_gap`: its signed distance to the boundary) lies within ``recheck_band``
radians of it is computed again wholly in float32, its map and its test (the prior's distances on
its image included), and the row keeps the float32 result with the low-precision one in
``detail["recheck"]``. A row whose verdict would move must have
|gap_low - gap_fp32| >= |gap_low|, so no row outside the band moves when the band is wider than
every such difference; the default (:data:`DEFAULT_RECHECK_BAND`) is narrower than that, chosen
for agreement in 98% of rows at a cost that leaves bfloat16 some of its speed (docs/method.md,
"Precision").

The run's set-up (calibration, the prior map and delta, the embeddings of the pairs' images)
runs in float32 under every precision (:func:`full_precision`): it is computed once per run, and
every verdict depends on it, so a re-checked row equals the row of a float32 run.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Mapping

#: the default band (radians) around the verdict's boundary inside which a low-precision row is
#: computed again in float32: twice the smallest band (0.01 rad) at which a calibration set (dlib,
#: 40 pairs, every method, bf16) agreed with float32 in 98% of its rows after the re-check. Not a
#: band that no verdict can cross: that one (1.5 x the largest |gap_bf16 - gap_fp32| seen, 0.16
#: rad) re-checked 65% of the rows, slower than float32 (docs/method.md and docs/results.md, "Precision")
DEFAULT_RECHECK_BAND = 0.02


def boundary_gap(result: Mapping) -> float | None:
    """A tested row's signed distance (radians) to its verdict's boundary, positive on the passing
    side, from its result (``FalsificationResult.to_dict()``): excess - delta under
    ``beyond-prior``; under ``absolute`` the smallest of d_high - tau_high, tau_low - d_low and
    margin - epsilon (the verdict moves only when that minimum changes sign). None for an
    untestable row, a row without those fields, or another criterion (re-checked always)."""
    if result.get("verdict", "passed") not in ("passed", "falsified"):
        return None
    crit = result.get("criterion")
    try:
        if crit == "beyond-prior":
            gap = float(result["excess"]) - float(result["delta"])
        elif crit == "absolute":
            gap = min(float(result["d_high"]) - float(result["tau_high"]),
                      float(result["tau_low"]) - float(result["d_low"]),
                      float(result["margin"]) - float(result["epsilon"]))
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return gap if math.isfinite(gap) else None


def needs_recheck(result: Mapping, band: float) -> bool:
    """Whether a low-precision row is computed again in float32: its gap lies within ``band`` of
    the boundary, or it has none (untestable, another criterion)."""
    gap = boundary_gap(result)
    return gap is None or abs(gap) <= band


@contextlib.contextmanager
def full_precision(*models):
    """Run ``models`` (``FaceEmbedder``s; None is skipped) in float32 inside the block."""
    models = [m for m in models if m is not None]
    saved = [getattr(m, "precision", "fp32") for m in models]
    for m in models:
        m.precision = "fp32"
    try:
        yield
    finally:
        for m, p in zip(models, saved):
            m.precision = p


def float32_view(model):
    """A shallow copy of ``model`` that runs in float32: the same network and weights, its own
    caches (the path methods' and RISE's caches are keyed by the model object)."""
    view = copy.copy(model)
    view.precision = "fp32"
    return view


class FloatRecheck:
    """Computes a 6.1 row computer's near-tie rows again in float32 (``executor.RowComputer``)."""

    #: the fields of a result kept from the low-precision test in ``detail["recheck"]["fields"]``
    FIELDS = ("d_high", "d_low", "margin", "prior_d_high", "prior_d_low", "excess")

    def __init__(self, computer, band: float, deletion_of, random_embeddings) -> None:
        self.computer, self.band = computer, float(band)
        #: ``executor``'s deletion curve of a row and the randomised model's embeddings of partner faces
        self.deletion_of, self.random_embeddings = deletion_of, random_embeddings
        self.precision = computer.model.precision
        self._model = None
        self._random = None
        self._explainers: dict = {}
        self.prior_cache: dict = {}
        self._cache_key: tuple = ()
        self._embedding_cache = None

    def model(self):
        if self._model is None:
            self._model = float32_view(self.computer.model)
        return self._model

    def explainer(self, method: str, kind: str):
        """The float32 explainer of a row method (its options, the same model's prior for centre)."""
        from ..attribution import get_explainer
        from ..choices import OTHER_REFERENCE, RANDOM_MODEL

        if method not in self._explainers:
            config, ctx = self.computer.ctx.config, self.computer.ctx
            base = method.removesuffix(RANDOM_MODEL).removesuffix(OTHER_REFERENCE)
            model = self.random_model() if kind == "random-model" else self.model()
            options = dict(config.method_options.get(base, {}))
            if base == "centre":
                options["prior"] = ctx.prior_map
            self._explainers[method] = get_explainer(base, model, **options)
        return self._explainers[method]

    def random_model(self):
        if self._random is None:
            self._random = float32_view(self.computer.random_model)
        return self._random

    def embedding_cache(self, pairs):
        from ..falsification.stages import EmbeddingCache

        key = tuple(p.id for p in pairs)
        if key != self._cache_key:
            self._cache_key, self._embedding_cache = key, EmbeddingCache()
        return self._embedding_cache

    def apply(self, method: str, pairs, images, refs, map_refs, rows: list[dict]) -> list[dict]:
        """``rows`` (one per pair, as ``RowComputer.test`` made them), those within the band
        replaced by their float32 rows, each with ``detail["recheck"]``: the low-precision
        verdict, gap, fields and seconds, the band and the precision. A re-checked row's
        ``seconds`` are the low-precision row's plus its share of the re-check."""
        from ..falsification import falsification_test

        todo = [i for i, r in enumerate(rows) if r.get("verdict") != "error" and needs_recheck(r["detail"], self.band)]
        if not todo:
            return rows
        t = time.perf_counter()
        kind = self.computer.explainers[method][1]
        if kind == "random-model":  # the randomised model's own float32 embedding of each partner face
            map_refs32 = self.random_embeddings(self.random_model(), self.model(), [pairs[i] for i in todo])
            map_refs32 = map_refs32.to(map_refs.device)
        else:  # the run's embeddings are float32 already (the set-up runs in float32)
            map_refs32 = map_refs[todo]
        model = self.model()
        x = images[todo]
        maps = self.explainer(method, kind)(x, map_refs32)
        results = falsification_test(model, x, refs[todo], maps, self.computer.ctx.fconfig,
                                     pair_ids=[pairs[i].index for i in todo], prior=self.computer.ctx.prior_map,
                                     prior_cache=self.prior_cache,
                                     embedding_cache=self.embedding_cache(pairs))
        ctx = self.computer.ctx
        out = list(rows)
        for j, (i, r) in enumerate(zip(todo, results)):
            low = rows[i]
            d = r.to_dict()
            if "deletion" in low["detail"]:
                d["deletion"] = self.deletion_of(model, ctx.threshold, ctx.config, pairs[i], x[j], maps[j], refs[i],
                                            low["cosine"])
            d["recheck"] = {"precision": self.precision, "band": self.band, "verdict": low["verdict"],
                            "gap": boundary_gap(low["detail"]), "seconds": low["seconds"],
                            "fields": {k: low["detail"].get(k) for k in self.FIELDS}}
            out[i] = {**low, "verdict": r.verdict, "failed": list(r.failed), "d_high": r.d_high, "d_low": r.d_low,
                      "sd_high": r.sd_high, "sd_low": r.sd_low, "margin": r.margin, "d_prime": r.d_prime,
                      "n_high": r.n_high, "n_low": r.n_low, "k": r.K,
                      "detail": d}
        seconds = (time.perf_counter() - t) / len(todo)
        for i in todo:  # each re-checked row's cost includes its share of the re-check
            out[i]["seconds"] += seconds
        return out


def recheck_for(computer, deletion_of, random_embeddings):
    """The :class:`FloatRecheck` of a 6.1 row computer (``executor.RowComputer``, which hands its
    ``deletion_of`` and ``random_embeddings``), or None when its model runs in float32 or the run's
    band is 0."""
    band = getattr(computer.ctx.config, "recheck_band", 0.0) or 0.0
    if getattr(computer.model, "precision", "fp32") == "fp32" or band <= 0:
        return None
    return FloatRecheck(computer, band, deletion_of, random_embeddings)
