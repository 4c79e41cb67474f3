"""``falsify run known-truth``: does the falsification test pass maps that are right?

Faces whose evidence is known by construction. For an impostor pair (A, D) of the run, a
*composite* x' is made in the model's input frame (both faces aligned to the same template):

- ``swap``: A with a part of D blended in (``x' = (1 - alpha) A + alpha D``);
- ``average``: the average face of the prior's untested images with D's part blended in, so the
  part is the only identity evidence in x'.

The part (``--truth-parts``: ``eyes``, ``eyes+nose`` or ``inner``: eyes, nose and mouth) is drawn
from the five landmarks as in experiment 6.3 (``exp_6_3.part_labels``; A's landmarks for
``swap``, D's for ``average``) and feathered by a Gaussian of :data:`FEATHER_SIGMA` x the image
side (alpha below :data:`ALPHA_FLOOR` is cut to 0). Explaining x' against f(D), D's part is the
only evidence of D in x'. The *truth* is the set of pixels the construction changed (alpha > 0),
its *core* the pixels with alpha >= 1/2. The *strength* of the truth is measured: how far the
composite moves the pair, ``angle(f(base), f(D)) - angle(f(x'), f(D))`` (radians; > 0 means
closer), stored per pair; composites below ``--truth-min-effect`` are left out of the rates.

Maps tested on each composite (against f(D)):

- known positives: ``truth`` (2 on the truth, plus alpha, plus the prior map in [0, 1]: every
  changed pixel first, the more changed ones higher, each part in the prior's order) and ``truth-flat`` (the core as a 0/1 mask, flat outside);
- known negatives: ``wrong-part`` and ``wrong-part-flat``, the same two built on a region of the
  core's area that the construction did not touch (:func:`wrong_region`: the core mirrored
  across the face's middle row, less the truth, grown to equal area), and the controls ``centre``
  (the prior), ``random``, ``edge``;
- the run's methods (default :data:`DEFAULT_METHODS`).

Each (configuration, map, composite) row holds the test's distances, so every criterion is judged
in the summary (as the validity study does): fills :data:`FILLS_STUDIED` x q :data:`QS_STUDIED` x
target :data:`TARGETS_STUDIED` x criterion (absolute thresholds; beyond the prior by the run's
delta). Per configuration: the *sensitivity* (share of ``truth`` maps passed), the
*specificity* (share of known negatives falsified), both halves of the verdict apart (does the
top hold: d_high beyond the prior's or above tau_high; does the bottom hold), on the selection and
confirmation halves of the composites; the configuration with the highest Youden's J
(sensitivity + specificity - 1) on the selection half, confirmed on the other. Per map, its
localisation against the truth (``falsification.localisation``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..choices import CONTROLS
from .base import Experiment, load_raw_summary
from .resume import now
from .truth_construction import (  # noqa: F401 - the construction, re-exported
    ALPHA_FLOOR, CONSTRUCTIONS, DEFAULT_CONSTRUCTION, DEFAULT_PARTS, FEATHER_SIGMA, PART_SETS, Construction, composite,
    feathered, part_mask, truth_maps, unit_range, wrong_region)
from .truth_rows import (  # noqa: F401 - the rows, re-exported
    COMPOSITE, DEFAULT_METHODS, FILLS_STUDIED, NEGATIVE, POSITIVE, QS_STUDIED, ROWS_OF, TARGETS_STUDIED, TRUTH_MAPS,
    WRONG_MAPS, CompositeRows, TruthRows, config_key, configs, test_distances)
from .truth_summary import (  # noqa: F401 - the analysis, re-exported
    KEY, draw_figure, format_truth, kept_composites, truth_summary, truth_tables)

#: composites shown in the figure of truth masks beside maps
FIGURE_COMPOSITES = 3
#: side of the thumbnails the summary keeps for that figure
THUMB = 48


# ---------------------------------------------------------------------------------------------
# the run


def study(session, store) -> dict:
    """The benchmark on a run (``Experiment.compute``): rows :class:`TruthRows`; its summary's
    ``known_truth`` section is :func:`truth_summary`."""
    c, pairs, model = session.config, session.pairs, session.model
    average = None
    if c.truth == "average":
        images, _ = session.prior_image_batch()
        average = images.mean(dim=0)
    kind = TruthRows(session.context(ROWS_OF), average)
    session.compute_rows(store, kind)
    ids = {p.id for p in pairs}
    rows = store.rows(ROWS_OF, model.name, pairs=ids)
    cal = session.calibration.to_dict() if session.calibration is not None else {
        "tau_high": c.tau_high, "tau_low": c.tau_low, "epsilon": c.epsilon}
    fc = session.fconfig.to_dict()
    section = truth_summary(rows, pairs, cal, fc, kind.maps(), c.truth_min_effect, ctx_prior(session))
    _, kept = kept_composites(rows, pairs, c.truth_min_effect)
    section.update(construction=c.truth, parts=c.truth_parts, feather_sigma=FEATHER_SIGMA,
                   align=model.aligner.template if model.aligner is not None else "none",
                   figure=figure_data(session, kind, pairs, kept))
    summary = {"experiment": "known-truth", "created": now(), "started": session.started, "model": model.name,
               "elapsed_s": time.perf_counter() - session.t0,
               "calibration": cal, "prior": session.prior.to_dict() if session.prior is not None else None,
               "config": c.to_dict(), "falsification_config": fc,
               "data": {"source": pairs.source, "n_pairs": len(pairs), "n_impostor": pairs.n_impostor,
                        "n_skipped": len(pairs.skipped)},
               KEY: section}
    return summary


def ctx_prior(session):
    """The run's prior map as numpy (None without one)."""
    prior = getattr(session, "prior_map", None)
    return None if prior is None else prior.double().numpy()


def figure_data(session, kind, pairs, kept: Sequence[str]) -> dict | None:
    """What the figure of truth masks beside maps needs, for the summary (so ``falsify report``
    redraws it without the model): for the first :data:`FIGURE_COMPOSITES` kept composites, the
    composite, its truth and the maps of the known maps and the run's methods as
    :data:`THUMB`-pixel thumbnails. The composites and maps are made again (the store keeps
    distances, not maps): a few composites, cheap next to the run."""
    import torch
    import torch.nn.functional as F

    from ..data import load_images

    model, ctx = session.model, kind.ctx
    kept = set(kept)
    chosen = [p for p in pairs if p.id in kept][:FIGURE_COMPOSITES]
    if not chosen:
        return None
    comp = kind.computer(model, session.explainers, session.random_model)
    images = load_images([p.a for p in chosen], tuple(model.input_size), align=model.aligner)[0]
    refs = torch.stack([ctx.emb[p.b] for p in chosen])
    built = comp.composites(chosen, images, refs)
    good = [i for i, b in enumerate(built) if not isinstance(b, str)]
    if not good:
        return None
    xs = torch.stack([built[i][1] for i in good])
    names = ["truth", "mirror", "wrong-part"] + [m for m in ctx.config.methods if m not in CONTROLS][:4]
    known = comp.known_maps(["truth", "mirror", "wrong-part"], built, good, chosen)
    ref = torch.stack([built[i][3] for i in good]).float()

    def thumb(t):  # (H, W) or (3, H, W) -> THUMB x THUMB, rounded
        t = t.float().unsqueeze(0) if t.dim() == 3 else t.float()[None, None]
        return F.interpolate(t, size=(THUMB, THUMB), mode="area")[0]

    maps = {}
    for name in names:
        if name in known:
            if isinstance(known[name], torch.Tensor):  # a map some composites lack is left out
                maps[name] = known[name]
        else:
            m, _ = comp.maps(name, [chosen[i] for i in good], xs, ref, list(range(len(good))))
            if m is not None:
                maps[name] = m
    out = []
    for j, i in enumerate(good):
        con = built[i][0]
        entry = {"pair": chosen[i].id, "effect": round(built[i][2]["effect"], 5),
                 "image": np.round(thumb(xs[j]).permute(1, 2, 0).numpy(), 3).tolist(),
                 "truth": np.round(thumb(torch.from_numpy(con.truth.astype(np.float32)))[0].numpy(), 3).tolist(),
                 "maps": {}}
        for name, m in maps.items():
            t = thumb(unit_range(m[j]))[0].numpy()
            entry["maps"][name] = np.round(t, 3).tolist()
        out.append(entry)
    return {"composites": out, "maps": list(maps)}


class KnownTruthExperiment(Experiment):
    """``falsify run known-truth``."""

    name = "known-truth"
    title = "Known truth: the test's sensitivity and specificity"
    anchor = "known-truth"
    nav = "Known truth"
    key = KEY

    template = "known_truth.html.j2"
    figures = {"fig_known_truth": ("Known truth: composites (a donor's parts blended in), the truth (pixels the "
                                   "construction changed; outlined in cyan on every map) and maps of the composite "
                                   "against the donor's embedding, each scaled to [0, 1].")}

    rows_of = ROWS_OF

    def default_methods(self) -> Sequence[str]:
        return DEFAULT_METHODS

    def check(self, config) -> None:
        """``truth``, ``truth_parts`` (their defaults filled in), ``truth_min_effect``, and the criteria judged."""
        config.truth = config.truth or DEFAULT_CONSTRUCTION
        config.truth_parts = config.truth_parts or DEFAULT_PARTS
        if config.truth_min_effect < 0:  # it would keep composites that moved the pair away from B: no evidence of B
            raise ValueError(f"truth_min_effect (--truth-min-effect) must be >= 0 radians, got "
                             f"{config.truth_min_effect}: a composite that moves the pair away from B holds no "
                             "evidence of B (0 keeps every composite that moved it closer)")
        if config.criterion not in ("beyond-prior", "absolute"):
            raise ValueError(f"the known-truth benchmark judges the criteria absolute and beyond-prior, not "
                             f"{config.criterion}")

    def pairs(self, config, log=None):
        """Impostor pairs only: a composite needs a donor of another identity."""
        from ..data import load_pairs
        from ..data.errors import DataError
        from ..data.pairs import PairSet
        from .session import said_shortfall

        every = load_pairs(config.data, config.pairs)
        impostors = PairSet([p for p in every if not p.same], list(every.skipped), every.source, every.n_folds)
        if not impostors.pairs:
            raise DataError(f"no impostor pairs in {every.source}: the known-truth benchmark blends a part of B "
                            "into a face, so B must be another person")
        return said_shortfall(impostors.sample(config.n_pairs, config.seed), log, "impostor pairs",
                              "known-truth uses impostor pairs only")

    def compute(self, session, store) -> dict:
        return study(session, store)

    def write(self, session, summary: dict) -> None:
        session.write_outputs(session.out, summary)
        (session.out / "known_truth.md").write_text(format_truth(summary) + "\n", encoding="utf-8")

    def tables(self, summary: Mapping) -> list:
        return truth_tables(summary)

    def drawings(self, summary: Mapping, **kw) -> dict:
        fig = summary[KEY].get("figure")
        return {"fig_known_truth": lambda: draw_figure(fig)} if fig else {}

    def context(self, summary: Mapping) -> dict:
        return {"section": summary[KEY]}

    def present(self, summary) -> bool:
        return summary.get("experiment") == "known-truth" and isinstance(summary.get(KEY), Mapping)

    def text(self, summary) -> str:
        return format_truth(summary)

    def report_summary(self, out) -> dict:
        return load_raw_summary(out)

    def rewrite(self, out, summary, report, figures: bool = True):
        (Path(out) / "known_truth.md").write_text(format_truth(summary) + "\n", encoding="utf-8")
        return report(out, summary, figures=figures)[-1]

    def outputs(self, out) -> str:
        return f"results: {out}/results.sqlite\ntable:   {out}/known_truth.md\nreport:  {out}/report.html"


EXPERIMENT = KnownTruthExperiment()
