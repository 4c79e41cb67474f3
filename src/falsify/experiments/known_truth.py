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

import json
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..choices import CONTROLS, TRUTH_METHODS
from ..report.labels import fit_titles, quiet
from ..report.tables import fmt_num
from .base import Experiment, load_raw_summary
from .exp_6_3 import FramePoints
from .rows import ChunkRows, RowKind
from .resume import now

KEY = "known_truth"
ROWS_OF = "known-truth"
CONSTRUCTIONS = ("swap", "average")
#: the parts a composite takes from the donor
PART_SETS: dict[str, tuple[str, ...]] = {
    "eyes": ("left eye", "right eye"),
    "eyes+nose": ("left eye", "right eye", "nose"),
    "inner": ("left eye", "right eye", "nose", "mouth"),
}
DEFAULT_CONSTRUCTION = "average"
DEFAULT_PARTS = "inner"
#: the feathering of the blend: Gaussian std as a fraction of the image's shorter side
FEATHER_SIGMA = 0.02
#: blend weights below this are cut to 0, so the truth (alpha > 0) is finite
ALPHA_FLOOR = 0.01
#: methods run when none are given: the cheap gradient and CAM methods, and the controls
DEFAULT_METHODS = TRUTH_METHODS
TRUTH_MAPS = ("truth", "truth-flat")
WRONG_MAPS = ("wrong-part", "wrong-part-flat")
#: the maps whose verdicts make the sensitivity and the specificity
POSITIVE = ("truth",)
NEGATIVE = ("wrong-part", "centre", "random", "edge")
FILLS_STUDIED = ("mean", "blur")
QS_STUDIED = (0.1, 0.2)
TARGETS_STUDIED = ("embedding", "pair")
#: composites shown in the figure of truth masks beside maps
FIGURE_COMPOSITES = 3
#: side of the thumbnails the summary keeps for that figure
THUMB = 48
#: the key of a composite's own row (its strength)
COMPOSITE = "composite"


def config_key(fill: str, q: float, target: str) -> str:
    return f"{fill}/q{q:g}/{target}"


def configs() -> list[tuple[str, float, str]]:
    return [(f, q, t) for t in TARGETS_STUDIED for f in FILLS_STUDIED for q in QS_STUDIED]


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


# ---------------------------------------------------------------------------------------------
# the construction


def part_mask(labels: np.ndarray, parts: str) -> np.ndarray:
    """The pixels of the part set ``parts`` (:data:`PART_SETS`) in 6.3's part labels."""
    from .exp_6_3 import PARTS

    if parts not in PART_SETS:
        raise ValueError(f"unknown part set {parts!r}; choose from {', '.join(PART_SETS)}")
    return np.isin(labels, [PARTS.index(n) for n in PART_SETS[parts]])


def feathered(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """The blend weight of a 0/1 ``mask``: Gaussian-smoothed (std ``sigma_px`` pixels), at least
    the mask's own 1 inside a core eroded by nothing (max with the smoothed mask), cut to 0 below
    :data:`ALPHA_FLOOR`; float32 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    m = np.asarray(mask, dtype=np.float64)
    a = gaussian_filter(m, sigma=sigma_px, mode="constant") if sigma_px > 0 else m.copy()
    a = np.clip(a, 0.0, 1.0)
    a[a < ALPHA_FLOOR] = 0.0
    return a.astype(np.float32)


def composite(base, donor, alpha):
    """``(1 - alpha) base + alpha donor`` for (3, H, W) images and an (H, W) weight; pixels with
    alpha 0 are ``base``'s exactly."""
    import torch

    a = torch.as_tensor(alpha, dtype=base.dtype).unsqueeze(0)
    out = base + a * (donor - base)
    return torch.where(a > 0, out, base)


def wrong_region(truth: np.ndarray, core: np.ndarray, centre_row: float) -> np.ndarray:
    """A region of ``core``'s area where the construction changed nothing: ``core`` mirrored across
    the row ``centre_row`` (the face's middle), less the ``truth``, then grown by the pixels outside
    the truth nearest to it (distance, then raster order) until it has exactly the core's area."""
    from scipy.ndimage import distance_transform_edt

    h, w = core.shape
    n = int(core.sum())
    ys, xs = np.nonzero(core)
    my = np.clip(np.round(2 * centre_row - ys).astype(int), 0, h - 1)
    seed = np.zeros_like(core, dtype=bool)
    seed[my, xs] = True
    seed &= ~truth
    free = ~truth
    if int(free.sum()) < n:
        raise ValueError("the truth covers too much of the image for a wrong region of the same area")
    if seed.any():
        dist = distance_transform_edt(~seed)
    else:  # the mirror lies inside the truth: grow from the pixels farthest from it
        dist = -distance_transform_edt(~truth)
    order = np.lexsort((np.arange(h * w), dist.ravel()))
    order = order[free.ravel()[order]]
    out = np.zeros(h * w, dtype=bool)
    out[order[:n]] = True
    return out.reshape(h, w)


def unit_range(m):
    """``m`` scaled to [0, 1] (a constant map gives zeros)."""
    m = m.double()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if float(hi - lo) > 0 else m * 0


def truth_maps(alpha: np.ndarray, core: np.ndarray, wrong: np.ndarray, prior_map) -> dict:
    """The known maps of one composite (see the module's docstring), (H, W) float32 tensors."""
    import torch

    p = unit_range(torch.as_tensor(prior_map)).float()
    wrong_t = torch.from_numpy(wrong.astype(np.float32))
    truth = torch.from_numpy(alpha)
    return {"truth": 2 * (truth > 0).float() + truth + p, "truth-flat": torch.from_numpy(core.astype(np.float32)),
            "wrong-part": 2 * wrong_t + p, "wrong-part-flat": wrong_t}


class Construction:
    """What one composite is made of: its labels' landmarks, the blend weight, the truth, the core
    and the wrong region (all (H, W) numpy)."""

    def __init__(self, points: np.ndarray, size: tuple[int, int], parts: str) -> None:
        from .exp_6_3 import part_labels

        self.points = np.asarray(points, dtype=np.float64)
        labels = part_labels(self.points, size)
        mask = part_mask(labels, parts)
        if not mask.any():
            raise ValueError(f"the part set {parts} lies outside the image")
        self.alpha = feathered(mask, FEATHER_SIGMA * min(size))
        self.truth = self.alpha > 0
        self.core = self.alpha >= 0.5
        eye_c, mouth_c = self.points[:2].mean(axis=0), self.points[3:].mean(axis=0)
        self.centre_row = float((eye_c[1] + mouth_c[1]) / 2) - 0.5
        self.wrong = wrong_region(self.truth, self.core, self.centre_row)


def test_distances(model, images, f_x, refs, maps: Mapping, todo: Sequence[tuple[str, int]], config,
                   pair_ids: Sequence[int]) -> dict:
    """The falsification test's distances for each (map name, image position) of ``todo``, under
    ``config``'s regions and fill, for both targets from one set of counterfactuals: the same stages
    as ``falsification_test`` (regions, fill, embedding in batches, distances), with f(x) given
    once per image and every map's counterfactuals embedded together. Returns (name, j) ->
    ``{"embedding": (d_high, d_low), "pair": (...), "n_high", "n_low", "k", "reason"}``; ``reason``
    says why a map is untestable (None when tested)."""
    from ..falsification.stages import BatchedEmbedder, distances, fill_for, regions_for
    from ..models.base import model_device

    k = config.k_effective
    regs = {(n, j): regions_for(images[j], maps[n][j], config, pair_ids[j]) for n, j in todo}
    testable = [x for x in todo if regs[x].testable]
    embedder = BatchedEmbedder(model, config.batch_size, 2 * k * len(testable), model_device(model))
    made = fill_for(config).counterfactuals(model, [images[j] for _, j in testable], [regs[x] for x in testable],
                                            f_x[[j for _, j in testable]], [pair_ids[j] for _, j in testable])
    for cf in made:
        embedder.add(cf.high)
        embedder.add(cf.low)
    emb = embedder.finish()
    out = {}
    for x in todo:
        reg = regs[x]
        out[x] = {"reason": None if reg.testable else str(reg.reason), "n_high": reg.n_high, "n_low": reg.n_low,
                  "k": k}
    for row, x in enumerate(testable):
        e = emb[2 * k * row : 2 * k * (row + 1)].double()
        j = x[1]
        for target in TARGETS_STUDIED:
            d = distances(f_x[j].double(), e, refs[j], target)
            out[x][target] = (float(d[:k].mean()), float(d[k:].mean()))
    return out


# ---------------------------------------------------------------------------------------------
# rows


class TruthRows(RowKind):
    """The benchmark's rows: per composite, its ``composite`` row (the strength of the truth), and
    per (configuration, map) the test's distances and the map's localisation. A unit is a chunk of
    composites and one map under every configuration, so the maps spread over Ray workers."""

    rows_of = ROWS_OF

    def __init__(self, ctx, average=None) -> None:
        super().__init__(ctx)
        #: the average face (3, H, W) of the ``average`` construction
        self.average = average

    def maps(self) -> list[str]:
        real = [m for m in self.ctx.config.methods if m not in CONTROLS]
        return [*TRUTH_MAPS, *WRONG_MAPS, "centre", "random", "edge", *real]

    def keys(self) -> list[str]:
        return [COMPOSITE] + [f"{config_key(*cfg)}|{m}" for cfg in configs() for m in self.maps()]

    def groups(self, keys):
        out: dict = {}
        for k in keys:
            out.setdefault(k.split("|", 1)[-1], []).append(k)
        groups = list(out.values())
        # the composite's own row goes with the known maps (cheap), the methods one per unit
        known = [k for g in groups for k in g if k.split("|", 1)[-1] in (COMPOSITE, *TRUTH_MAPS, *WRONG_MAPS)]
        return [known] + [g for g in groups if g[0].split("|", 1)[-1] not in (COMPOSITE, *TRUTH_MAPS, *WRONG_MAPS)]

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        c = self.ctx.config
        return (f"known truth: {n_todo} composites ({c.truth}, {c.truth_parts}) x {len(self.maps())} maps x "
                f"{len(configs())} configurations ...")

    def computer(self, model, explainers=None, random_model=None):
        return CompositeRows(self, model, explainers, random_model)


class CompositeRows(FramePoints, ChunkRows):
    """Computes the benchmark's units (:class:`TruthRows`)."""

    def composites(self, pairs, images, refs):
        """Per pair: (Construction, composite (3, H, W), strength dict) or the reason none."""
        import torch

        from ..data import load_images
        from ..falsification.stages import embed
        from ..geometry import geodesic_distance
        from ..models.base import model_device

        model, ctx, c = self.model, self.ctx, self.ctx.config
        size = tuple(model.input_size)
        donors = load_images([p.b for p in pairs], size, align=model.aligner)[0]
        out = []
        for i, p in enumerate(pairs):
            pts, why = self.points_of(p.a if c.truth == "swap" else p.b)
            if why:
                out.append(why.replace("image A", "image A" if c.truth == "swap" else "image B (the donor)"))
                continue
            try:
                con = Construction(pts, size, c.truth_parts)
            except ValueError as exc:
                out.append(f"no composite: {exc}")
                continue
            base = images[i] if c.truth == "swap" else self.kind.average
            out.append((con, base, composite(base, donors[i], con.alpha)))
        ok = [i for i, o in enumerate(out) if not isinstance(o, str)]
        if ok:
            dev = model_device(model)
            xs = torch.stack([out[i][2] for i in ok])
            bases = torch.stack([out[i][1] for i in ok])
            e = embed(model, torch.cat([xs, bases]), c.batch_size, dev).double()
            e_x, e_base = e[: len(ok)], e[len(ok):]
            r = refs[ok].double()
            before = geodesic_distance(e_base, r)
            after = geodesic_distance(e_x, r)
            for j, i in enumerate(ok):
                con, base, x = out[i]
                strength = {"angle_before": float(before[j]), "angle_after": float(after[j]),
                            "effect": float(before[j] - after[j]),
                            "cos_before": float(torch.cos(before[j])), "cos_after": float(torch.cos(after[j])),
                            "truth_area": float(con.truth.mean()), "core_area": float(con.core.mean()),
                            "wrong_area": float(con.wrong.mean()),
                            "wrong_in_truth": int((con.wrong & con.truth).sum())}
                out[i] = (con, x, strength)
        return out

    def compute(self, pairs, images, refs, keys, done):
        import torch

        from ..attribution import get_explainer
        from ..falsification.localisation import localisation
        from ..falsification.stages import embed, regions_for
        from ..models.base import model_device
        from .study import study_config

        kind, model, ctx, c = self.kind, self.model, self.ctx, self.ctx.config
        t0 = time.perf_counter()
        built = self._images.get("composites", [p.id for p in pairs], lambda: self.composites(pairs, images, refs))
        rows = []
        for i, p in enumerate(pairs):
            if isinstance(built[i], str):
                rows += [kind.error_row(k, p, built[i]) for k in keys if (k, p.id) not in done]
        good = [i for i, b in enumerate(built) if not isinstance(b, str)]
        for i in good:
            if COMPOSITE in keys and (COMPOSITE, pairs[i].id) not in done:
                con, _, strength = built[i]
                detail = {**strength, "construction": c.truth, "parts": c.truth_parts,
                          "points": np.round(con.points, 3).tolist()}
                rows.append({**kind.base_row(COMPOSITE, pairs[i]), "verdict": "passed", "detail": detail})
        names = list(dict.fromkeys(k.split("|", 1)[1] for k in keys if "|" in k))
        if not good or not names:
            yield rows, []
            return
        sub = [pairs[i] for i in good]
        xs = torch.stack([built[i][1] for i in good])
        r = refs[good]
        dev = model_device(model)
        maps: dict[str, torch.Tensor | None] = {}
        for name in names:
            if name in (*TRUTH_MAPS, *WRONG_MAPS):
                maps[name] = torch.stack([truth_maps(built[i][0].alpha, built[i][0].core, built[i][0].wrong,
                                                     ctx.prior_map)[name] for i in good])
            elif name == "centre":
                maps[name] = ctx.prior_map.expand(len(good), -1, -1).clone()
            elif name in ("random", "edge"):
                ex = get_explainer(name, model, **({"seed": c.seed} if name == "random" else {}))
                maps[name] = ex(xs.to(dev), r.to(dev)).detach().cpu()
            else:
                m, errors = self.maps(name, sub, xs, r, list(range(len(good))))
                maps[name] = m
                if m is None:  # the method failed: an error row for each of its keys, the run goes on
                    why = errors[0]["error"] if errors else "the method failed"
                    rows += [kind.error_row(k, p, why) for k in keys if k.endswith("|" + name)
                             for p in sub if (k, p.id) not in done]
        h, w = model.input_size
        for name in list(maps):
            mp = maps[name]
            if mp is not None and tuple(mp.shape[-2:]) != (h, w):
                import torch.nn.functional as F

                maps[name] = F.interpolate(mp.unsqueeze(1).float(), size=(h, w), mode="bilinear",
                                           align_corners=False)[:, 0]
        live = {n: m for n, m in maps.items() if m is not None}
        locs = {}
        for name, mp in live.items():
            for j, i in enumerate(good):
                reg = regions_for(xs[j], mp[j], ctx.fconfig, sub[j].index)
                locs[name, j] = localisation(mp[j].double().numpy(), built[i][0].truth,
                                             reg.high.numpy() if reg.testable else None)
        f_x = self._images.get("f_x", [p.id for p in pairs], lambda: embed(model, xs, c.batch_size, dev))
        for fill, q in dict.fromkeys((f, qq) for f, qq, _ in configs()):
            want = {t: [(n, j) for n in live for j, p in enumerate(sub)
                        if f"{config_key(fill, q, t)}|{n}" in keys and (f"{config_key(fill, q, t)}|{n}", p.id) not in done]
                    for t in TARGETS_STUDIED}
            todo = list(dict.fromkeys(x for t in TARGETS_STUDIED for x in want[t]))
            if not todo:
                continue
            got = test_distances(model, xs, f_x, r, live, todo, study_config(c, fill, q, "embedding"),
                                 [p.index for p in sub])
            for t in TARGETS_STUDIED:
                key_of = config_key(fill, q, t)
                for n, j in want[t]:
                    g = got[n, j]
                    row = {**kind.base_row(f"{key_of}|{n}", sub[j]), "detail": locs[n, j],
                           "seconds": (time.perf_counter() - t0) / len(pairs)}
                    if g["reason"] is not None:
                        rows.append({**row, "verdict": "untestable", "failed": [g["reason"]]})
                    else:
                        dh, dl = g[t]
                        rows.append({**row, "verdict": "tested", "d_high": dh, "d_low": dl, "margin": dh - dl,
                                     "n_high": g["n_high"], "n_low": g["n_low"], "k": g["k"]})
        yield rows, []


# ---------------------------------------------------------------------------------------------
# the analysis


def _criteria(delta: float) -> list[tuple[str, float | None]]:
    """The criteria judged on every configuration's distances: absolute, and beyond the prior by ``delta``."""
    return [("absolute", None), ("beyond-prior", float(delta))]


#: a half of a beyond-prior verdict holds when it is no worse than the prior's: the same region
#: hidden in another batch moves float32 embeddings by ~1e-7 rad, so "no worse" allows 1e-6 rad
HALF_TOL = 1e-6


def _verdict(dh, dl, prior, crit, delta, cal) -> tuple[bool, bool, bool] | None:
    """(passed, top holds, bottom holds) of one row's distances, or None (no prior distances).
    Beyond-prior: the top holds when d_high is no smaller than the prior's, the bottom when d_low
    is no larger (:data:`HALF_TOL`); absolute: d_high > tau_high, d_low < tau_low."""
    if crit == "absolute":
        top, bottom = dh > cal["tau_high"], dl < cal["tau_low"]
        return bool(top and bottom and dh - dl >= cal["epsilon"]), bool(top), bool(bottom)
    if prior is None:
        return None
    ph, pl = prior
    return bool((dh - dl) - (ph - pl) > delta), bool(dh >= ph - HALF_TOL), bool(dl <= pl + HALF_TOL)


def _rate(flags: Sequence[bool]) -> dict:
    from ..falsification.stats import wilson_interval

    n, k = len(flags), int(sum(flags))
    lo, hi = wilson_interval(k, n) if n else (None, None)
    return {"rate": k / n if n else None, "n": n, "k": k, "ci": None if lo is None else [float(lo), float(hi)]}


def kept_composites(rows: list[dict], pairs, min_effect: float) -> tuple[dict, list[str]]:
    """``(composites, kept)``: each built composite's detail (its strength) by pair id, and the ids of
    those whose effect reaches ``min_effect``, in the order of ``pairs``."""
    order = {p.id: k for k, p in enumerate(pairs)}
    comps = {r["pair"]: json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
             for r in rows if r["method"] == COMPOSITE and r["verdict"] != "error"}
    return comps, [pid for pid in sorted(comps, key=order.get) if comps[pid]["effect"] >= min_effect]


def truth_summary(rows: list[dict], pairs, calibration: Mapping, fconfig: Mapping, maps: Sequence[str],
                  min_effect: float) -> dict:
    """Everything the benchmark reports, from its rows (``calibration``: tau_high, tau_low,
    epsilon; ``fconfig``: the run's test, whose fill, q, target and criterion are the default)."""
    comps, kept = kept_composites(rows, pairs, min_effect)
    errors = [r for r in rows if r["verdict"] == "error"]
    kept_set = set(kept)
    half = {pid: ("selection" if k < (len(kept) + 1) // 2 else "confirmation") for k, pid in enumerate(kept)}
    dist: dict[tuple[str, str], dict] = {}
    locs: dict[str, list] = {}
    run_cfg = config_key(fconfig["fill"], fconfig["q"], fconfig["target"])
    for r in rows:
        if r["method"] == COMPOSITE or r["verdict"] == "error" or r["pair"] not in kept_set:
            continue
        cfg, name = r["method"].split("|", 1)
        if r["d_high"] is None or r["verdict"] == "untestable":
            dist.setdefault((cfg, name), {})[r["pair"]] = None
        else:
            dist.setdefault((cfg, name), {})[r["pair"]] = (r["d_high"], r["d_low"])
        if cfg == run_cfg and r["detail"]:
            locs.setdefault(name, []).append(json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"])
    delta = float(fconfig.get("delta") or 0.0)
    table = []
    for fill, q, target in configs():
        cfg = config_key(fill, q, target)
        prior = dist.get((cfg, "centre"), {})
        for crit, d in _criteria(delta):
            entry = {"fill": fill, "q": q, "target": target, "criterion": crit, "delta": d, "maps": {}}
            for part in ("selection", "confirmation", "all"):
                per_map = {}
                for name in maps:
                    got = dist.get((cfg, name), {})
                    flags = []
                    for pid, v in got.items():
                        if part != "all" and half[pid] != part:
                            continue
                        verdict = None if v is None else _verdict(v[0], v[1], prior.get(pid), crit, d, calibration)
                        if v is None:
                            flags.append((False, False, False))  # untestable: no prediction, not passed
                        elif verdict is not None:
                            flags.append(verdict)
                    per_map[name] = {"passed": _rate([f[0] for f in flags]), "top": _rate([f[1] for f in flags]),
                                     "bottom": _rate([f[2] for f in flags])}
                pos = [per_map[m]["passed"] for m in POSITIVE if m in per_map]
                neg = [per_map[m]["passed"] for m in NEGATIVE if m in per_map]
                sens_k, sens_n = sum(x["k"] for x in pos), sum(x["n"] for x in pos)
                spec_n = sum(x["n"] for x in neg)
                spec_k = spec_n - sum(x["k"] for x in neg)
                sens = _rate([True] * sens_k + [False] * (sens_n - sens_k))
                spec = _rate([True] * spec_k + [False] * (spec_n - spec_k))
                j = None if sens["rate"] is None or spec["rate"] is None else sens["rate"] + spec["rate"] - 1
                entry[part] = {"sensitivity": sens, "specificity": spec, "youden": j}
                if part == "all":
                    entry["maps"] = per_map
            table.append(entry)
    ranked = sorted((e for e in table if e["selection"]["youden"] is not None),
                    key=lambda e: (-e["selection"]["youden"], e["target"] != fconfig["target"],
                                   e["criterion"] != fconfig["criterion"], e["q"], FILLS_STUDIED.index(e["fill"])))
    default = next((e for e in table if (e["fill"], e["q"], e["target"], e["criterion"]) ==
                    (fconfig["fill"], fconfig["q"], fconfig["target"], fconfig["criterion"])), None)
    effects = np.array([comps[p]["effect"] for p in comps], dtype=float)
    strength = {"n": int(effects.size), "n_kept": len(kept), "min_effect": min_effect}
    if effects.size:
        q25, q50, q75 = np.percentile(effects, [25, 50, 75])
        cos_gain = np.array([comps[p]["cos_after"] - comps[p]["cos_before"] for p in comps])
        strength.update(effect_median=float(q50), effect_q25=float(q25), effect_q75=float(q75),
                        effect_min=float(effects.min()), share_closer=float((effects > 0).mean()),
                        cos_gain_median=float(np.median(cos_gain)),
                        truth_area_mean=float(np.mean([comps[p]["truth_area"] for p in comps])),
                        core_area_mean=float(np.mean([comps[p]["core_area"] for p in comps])))
    loc_table = []
    for name in maps:
        ls = locs.get(name, [])
        def mean(k):
            v = [x[k] for x in ls if x.get(k) is not None]
            return float(np.mean(v)) if v else None
        fr = default["maps"].get(name) if default else None
        loc_table.append({"map": name, "kind": _kind(name), "n": len(ls), "rank_share": mean("rank_share"),
                          "top_share": mean("top_share"), "pointing": mean("pointing"), "auc": mean("auc"),
                          "passed": fr and fr["passed"], "top": fr and fr["top"], "bottom": fr and fr["bottom"]})
    return {"configurations": table,
            "best": ranked[0] and {k: ranked[0][k] for k in ("fill", "q", "target", "criterion", "delta")}
            if ranked else None,
            "best_confirmation": ranked[0]["confirmation"] if ranked else None,
            "default": {k: fconfig[k] for k in ("fill", "q", "target", "criterion")},
            "sensitivity": default["all"]["sensitivity"]["rate"] if default else None,
            "specificity": default["all"]["specificity"]["rate"] if default else None,
            "default_rates": default and default["all"],
            "strength": strength, "localisation": loc_table, "maps": list(maps),
            "positive": list(POSITIVE), "negative": list(NEGATIVE),
            "n_errors": len({r["pair"] for r in errors}),
            "error_examples": sorted({r["error"] for r in errors if r.get("error")})[:3]}


def _kind(name: str) -> str:
    if name in POSITIVE:
        return "known positive"
    if name in NEGATIVE:
        return "known negative"
    if name in TRUTH_MAPS:
        return "truth, flat outside"
    if name in WRONG_MAPS:
        return "wrong part, flat outside"
    return "method"


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
    section = truth_summary(rows, pairs, cal, fc, kind.maps(), c.truth_min_effect)
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
    names = ["truth", "wrong-part"] + [m for m in ctx.config.methods if m not in CONTROLS][:4]

    def thumb(t):  # (H, W) or (3, H, W) -> THUMB x THUMB, rounded
        t = t.float().unsqueeze(0) if t.dim() == 3 else t.float()[None, None]
        return F.interpolate(t, size=(THUMB, THUMB), mode="area")[0]

    maps = {}
    for name in names:
        if name in ("truth", "wrong-part"):
            maps[name] = torch.stack([truth_maps(built[i][0].alpha, built[i][0].core, built[i][0].wrong,
                                                 ctx.prior_map)[name] for i in good])
        else:
            m, _ = comp.maps(name, [chosen[i] for i in good], xs, refs[good], list(range(len(good))))
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


def draw_figure(figure: Mapping):
    """The composites, their truth (outlined in white) and each map beside it."""
    from matplotlib.figure import Figure

    comps, names = figure["composites"], figure["maps"]
    fig = Figure(figsize=(1.5 * (len(names) + 2), 1.6 * len(comps) + 0.3), layout="constrained")
    axes = fig.subplots(len(comps), len(names) + 2, squeeze=False)
    for r, c in enumerate(comps):
        truth = np.asarray(c["truth"])
        img = np.clip(np.asarray(c["image"]), 0, 1)
        panels = [("composite", img, None), ("truth (changed pixels)", truth, "gray")] + [(n, np.asarray(c["maps"][n]), "inferno")
                                                                        for n in names if n in c["maps"]]
        for k, ax in enumerate(axes[r]):
            ax.axis("off")
            if k >= len(panels):
                continue
            title, data, cmap = panels[k]
            ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if k > 0:
                ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.6)
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r][0].text(0, -0.02, f"effect {c['effect']:+.3f} rad", transform=axes[r][0].transAxes, fontsize=6,
                        va="top")
    with quiet():  # a method's name too long for its column is shortened (falsify.report.labels)
        fig.get_layout_engine().execute(fig)
        fit_titles(fig, axes[0], [(ax.get_title(), []) for ax in axes[0]])
    return fig


# ---------------------------------------------------------------------------------------------
# the report


def format_truth(summary: Mapping) -> str:
    """The benchmark's tables as Markdown (what ``falsify run known-truth`` prints)."""
    s = summary[KEY]
    pct = lambda r: "n/a" if r is None or r.get("rate") is None else f"{100 * r['rate']:.0f}"  # noqa: E731
    st = s["strength"]
    lines = [f"known truth on {summary['model']}: {s['construction']} composites, parts {s['parts']}; "
             f"{st['n']} composites, {st['n_kept']} kept (effect >= {st['min_effect']:g} rad)"]
    if st.get("effect_median") is not None:
        lines.append(f"strength of the truth: the composite moves the pair closer by a median "
                     f"{st['effect_median']:.4f} rad [IQR {st['effect_q25']:.4f}, {st['effect_q75']:.4f}] "
                     f"(cos +{st['cos_gain_median']:.4f}); closer in {100 * st['share_closer']:.0f}%; "
                     f"truth covers {100 * st['truth_area_mean']:.1f}% of the image (core "
                     f"{100 * st['core_area_mean']:.1f}%)")
    d = s["default"]
    lines.append(f"default configuration (fill {d['fill']}, q {d['q']:g}, target {d['target']}, {d['criterion']}): "
                 f"sensitivity {fmt_num(s['sensitivity'], 3) or 'n/a'}, specificity "
                 f"{fmt_num(s['specificity'], 3) or 'n/a'}")
    if s.get("best"):
        b, conf = s["best"], s["best_confirmation"]
        lines.append(f"highest Youden's J on the selection half: fill {b['fill']}, q {b['q']:g}, target "
                     f"{b['target']}, {b['criterion']}; on the confirmation half sensitivity "
                     f"{pct(conf['sensitivity'])}%, specificity {pct(conf['specificity'])}%")
    lines += ["", "| map | kind | n | rank share | top-q share | pointing | AUC | passed % | top holds % | "
              "bottom holds % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in s["localisation"]:
        lines.append(f"| {e['map']} | {e['kind']} | {e['n']} | {fmt_num(e['rank_share'], 2) or '-'} | "
                     f"{fmt_num(e['top_share'], 2) or '-'} | {fmt_num(e['pointing'], 2) or '-'} | "
                     f"{fmt_num(e['auc'], 2) or '-'} | {pct(e['passed'])} | {pct(e['top'])} | {pct(e['bottom'])} |")
    lines += ["", "| fill | q | target | criterion | sensitivity % | specificity % | J (sel.) | J (conf.) | "
              + " | ".join(f"{m} %" for m in s["maps"]) + " |", "|" + "---|" * (8 + len(s["maps"]))]
    for e in s["configurations"]:
        a = e["all"]
        cells = [e["fill"], f"{e['q']:g}", e["target"], e["criterion"], pct(a["sensitivity"]),
                 pct(a["specificity"]), fmt_num(e["selection"]["youden"], 2) or "-",
                 fmt_num(e["confirmation"]["youden"], 2) or "-"]
        cells += [pct(e["maps"][m]["passed"]) for m in s["maps"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Passed % per map: share of composites whose map passes. Sensitivity: truth maps passed; "
                 "specificity: " + ", ".join(s["negative"]) + " falsified.")
    return "\n".join(lines)


def truth_tables(summary: Mapping) -> list:
    """The localisation table (per map, under the run's configuration) and the configurations' table."""
    from ..report.render import Table, frame

    s = summary.get(KEY)
    if not isinstance(s, Mapping):
        return []
    pct = lambda r: None if not r or r.get("rate") is None else f"{100 * r['rate']:.0f}"  # noqa: E731
    rows = [[e["map"], e["kind"], str(e["n"]), fmt_num(e["rank_share"], 2), fmt_num(e["top_share"], 2),
             fmt_num(e["pointing"], 2), fmt_num(e["auc"], 2), pct(e["passed"]), pct(e["top"]), pct(e["bottom"])]
            for e in s["localisation"]]
    d = s["default"]
    header = ["Map", "Kind", "n", "Rank share", "Top-q share", "Pointing", "AUC", "Passed %", "Top holds %",
              "Bottom holds %"]
    caption = (f"Known truth ({s['construction']} composites, parts {s['parts']}): localisation of each map against "
               "the pixels the construction changed (rank share: share of the map's |truth| highest pixels inside "
               "the truth; top-q share: of the test's $S_{high}$; pointing game; AUC), and the test's verdicts "
               f"under the run's configuration (fill {d['fill']}, $q$ = {d['q']:g}, target {d['target']}, "
               f"{d['criterion']}): passed, and each half of the verdict apart.")
    out = [Table(name="table_known_truth", frame=frame(header, rows), label="tab:known-truth", caption=caption,
                 html_id="table-known-truth", numeric=range(2, len(header)), size=r"\footnotesize")]
    rows = []
    for e in s["configurations"]:
        a = e["all"]
        rows.append([f"{e['fill']}, q {e['q']:g}, {e['target']}, {e['criterion']}", pct(a["sensitivity"]),
                     pct(a["specificity"]), fmt_num(e["selection"]["youden"], 2),
                     fmt_num(e["confirmation"]["youden"], 2)] + [pct(e["maps"][m]["passed"]) for m in s["maps"]])
    header = ["Configuration", "Sensitivity %", "Specificity %", "J (selection)", "J (confirmation)"] + [
        f"{m} passed %" for m in s["maps"]]
    caption = ("Known truth per configuration of the test: sensitivity (truth maps passed), specificity ("
               + ", ".join(s["negative"]) + " falsified), Youden's J on the selection and confirmation halves, "
               "and the share of composites each map passes.")
    out.append(Table(name="table_known_truth_configs", frame=frame(header, rows), label="tab:known-truth-configs",
                     caption=caption, html_id="table-known-truth-configs", numeric=range(1, len(header)),
                     size=r"\scriptsize"))
    return out


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
        if not math.isfinite(config.truth_min_effect):
            raise ValueError(f"truth_min_effect must be a number of radians, got {config.truth_min_effect}")
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
