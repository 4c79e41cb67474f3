"""The known-truth benchmark's rows (:mod:`.known_truth`): the configurations studied, the test's
distances of every map on every composite, and the computer of a unit of composites."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..choices import CONTROLS, TRUTH_METHODS
from .exp_6_3 import FramePoints
from .rows import ChunkRows, RowKind
from .truth_construction import CELL_REGIONS, STREAM_TRUTH, CellTruth, Construction, composite, truth_maps

ROWS_OF = "known-truth"
#: methods run when none are given: the cheap gradient and CAM methods, and the controls
DEFAULT_METHODS = TRUTH_METHODS
#: the maps made from the construction (:meth:`CellTruth.maps`, the null map from the prior)
KNOWN_MAPS = ("truth", "mirror", "matched", "null", "wrong-part")
TRUTH_MAPS = ("truth",)
WRONG_MAPS = ("mirror", "matched", "null", "wrong-part")
#: the maps whose verdicts make the sensitivity and the specificity
POSITIVE = ("truth",)
NEGATIVE = ("mirror", "matched", "null", "wrong-part", "random")
#: maps reported apart, never counted: why
APART = {"centre": "the prior itself: under beyond-prior its excess is 0 by construction (a tautology)",
         "edge": "a shortcut check: does an edge filter find the truth?"}
FILLS_STUDIED = ("mean", "blur", "mirror")
#: q of S_high and S_low: None is q matched to the truth's area (S_high of a truth map is the truth)
QS_STUDIED = (None, 0.1)
#: the study's own target, not one of the test's (it needs a cohort): signed-angle less the mean
#: signed change to a cohort of other identities (:func:`target_distances`)
COHORT_TARGET = "cohort-angle"
TARGETS_STUDIED = ("embedding", "pair", "signed-pair", "signed-angle", COHORT_TARGET)
#: the key of a composite's own row (its strength)
COMPOSITE = "composite"
#: the verdict of a row whose map the construction does not have (no mirror of a nose): not counted
SKIPPED = "skipped"


def q_label(q: float | None) -> str:
    return "truth" if q is None else f"{q:g}"


def config_key(fill: str, q: float | None, target: str) -> str:
    return f"{fill}/q{q_label(q)}/{target}"


def configs() -> list[tuple[str, float | None, str]]:
    return [(f, q, t) for t in TARGETS_STUDIED for f in FILLS_STUDIED for q in QS_STUDIED]


def mate_of(path, exclude=()) -> Path | None:
    """Another photo of the identity of ``path`` (its LFW folder), the first in name order that is
    not ``path`` nor in ``exclude``; None when the folder holds no other."""
    from ..data.pairs import IMAGE_SUFFIXES

    path = Path(path)
    skip = {Path(x).resolve() for x in (path, *exclude)}
    for q in sorted(path.parent.iterdir()):
        if q.suffix.lower() in IMAGE_SUFFIXES and q.resolve() not in skip:
            return q
    return None


_MATED: dict = {}


def mated_identities(root) -> list[Path]:
    """The identity folders under ``root`` (LFW layout) holding at least two photos, in name order
    (listed once per process)."""
    from ..data.pairs import IMAGE_SUFFIXES

    root = Path(root)
    if root not in _MATED:
        _MATED[root] = [d for d in sorted(root.iterdir()) if d.is_dir() and sum(
            1 for q in d.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) >= 2]
    return _MATED[root]


def donor_of(p, seed: int):
    """``(donor, base, mate)`` of an impostor pair ``p``: the donor is the face of the pair with a
    genuine mate in the data (B first, else A) and the base the other face; when neither has one,
    the base is A and the donor the first photo of an identity with two or more, drawn from (seed,
    pair index) among those of neither face, its mate the second. None when there is none."""
    for donor, base in ((p.b, p.a), (p.a, p.b)):
        mate = mate_of(donor, (base,))
        if mate is not None:
            return donor, base, mate
    from ..data.pairs import IMAGE_SUFFIXES

    if p.root is None or not Path(p.root).is_dir():
        return None
    skip = {Path(p.a).parent.resolve(), Path(p.b).parent.resolve()}
    folders = [d for d in mated_identities(p.root) if d.resolve() not in skip]
    if not folders:
        return None
    rng = np.random.default_rng([int(seed), int(p.index), STREAM_TRUTH, 2])
    d = folders[int(rng.integers(len(folders)))]
    donor = next(q for q in sorted(d.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES)
    return donor, p.a, mate_of(donor)


def target_distances(f_x, emb, reference, target: str, cohort):
    """The distances of ``falsification.stages.distances`` under ``target``, or under the
    study's ``cohort-angle`` (not a target of the test): the signed change of the angle to the
    reference less the mean signed change of the angles to a ``cohort`` (K, D) of other
    identities, as score normalisation by an impostor cohort (T-norm) removes what a change does to
    every identity's score alike."""
    from ..falsification.stages import distances
    from ..geometry import geodesic_distance

    if target != COHORT_TARGET:
        return distances(f_x, emb, reference, target)
    co = cohort.double().unsqueeze(0)  # (1, K, D)
    to_cohort = (geodesic_distance(emb.unsqueeze(1), co) - geodesic_distance(f_x.view(1, 1, -1), co)).mean(dim=1)
    return distances(f_x, emb, reference, "signed-angle") - to_cohort


def cohort_of(emb: Mapping, identities) -> "torch.Tensor":
    """The cohort of a composite: the embedding (float64) of every image of the run (``emb``:
    path -> embedding) whose identity (its folder) is neither of ``identities``."""
    import torch

    return torch.stack([e for q, e in emb.items() if Path(q).parent.name not in set(identities)]).double()


def test_distances(model, images, f_x, refs, maps: Mapping, todo: Sequence[tuple[str, int]], config,
                   pair_ids: Sequence[int], cohorts: Sequence, qs: Sequence[float] | None = None) -> dict:
    """The falsification test's distances for each (map name, image position) of ``todo``, under
    ``config``'s regions and fill (``qs``: each image's own q, else the config's), for every
    target from one set of counterfactuals: the same stages as ``falsification_test`` (regions,
    fill, embedding in batches, distances), with f(x) given once per image and every map's
    counterfactuals embedded together, and those of each map's sets reflected left-right (the
    beyond-mirror criterion's comparator, :func:`falsify.falsification.criteria.mirrored`). Returns
    (name, j) -> ``{TARGET: (d_high, d_low), "mirror": {TARGET: (d_high, d_low)}, "n_high",
    "n_low", "k", "reason", "high"}``; ``reason`` says why a map is untestable (None when tested),
    ``high`` is S_high."""
    from ..falsification.criteria import mirrored
    from ..falsification.stages import BatchedEmbedder, fill_for, regions_for
    from ..models.base import model_device

    k = config.k_effective
    cfg = (lambda j: config) if qs is None else (lambda j: config.replace(q=float(qs[j])))  # noqa: E731
    regs = {(n, j): regions_for(images[j], maps[n][j], cfg(j), pair_ids[j]) for n, j in todo}
    testable = [x for x in todo if regs[x].testable]
    embedder = BatchedEmbedder(model, config.batch_size, 4 * k * len(testable), model_device(model))
    sets = [regs[x] for x in testable] + [mirrored(regs[x]) for x in testable]
    made = fill_for(config).counterfactuals(model, [images[j] for _, j in testable] * 2, sets,
                                            f_x[[j for _, j in testable] * 2], [pair_ids[j] for _, j in testable] * 2)
    for cf in made:
        embedder.add(cf.high)
        embedder.add(cf.low)
    emb = embedder.finish()
    half = 2 * k * len(testable)
    out = {}
    for x in todo:
        reg = regs[x]
        out[x] = {"reason": None if reg.testable else str(reg.reason), "n_high": reg.n_high, "n_low": reg.n_low,
                  "k": k, "high": reg.high}
    for row, x in enumerate(testable):
        e = emb[2 * k * row : 2 * k * (row + 1)].double()
        em = emb[half + 2 * k * row : half + 2 * k * (row + 1)].double()
        j = x[1]
        out[x]["mirror"] = {}
        for target in TARGETS_STUDIED:
            d = target_distances(f_x[j].double(), e, refs[j], target, cohorts[j])
            out[x][target] = (float(d[:k].mean()), float(d[k:].mean()))
            d = target_distances(f_x[j].double(), em, refs[j], target, cohorts[j])
            out[x]["mirror"][target] = (float(d[:k].mean()), float(d[k:].mean()))
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
        return [*KNOWN_MAPS, "centre", "random", "edge", *real]

    def keys(self) -> list[str]:
        return [COMPOSITE] + [f"{config_key(*cfg)}|{m}" for cfg in configs() for m in self.maps()]

    def groups(self, keys):
        out: dict = {}
        for k in keys:
            out.setdefault(k.split("|", 1)[-1], []).append(k)
        groups = list(out.values())
        # the composite's own row goes with the known maps (cheap), the methods one per unit
        cheap = (COMPOSITE, *KNOWN_MAPS, "centre")
        known = [k for g in groups for k in g if k.split("|", 1)[-1] in cheap]
        return [known] + [g for g in groups if g[0].split("|", 1)[-1] not in cheap]

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        c = self.ctx.config
        what = c.truth if c.truth in CELL_REGIONS else f"{c.truth}, {c.truth_parts}"
        return (f"known truth: {n_todo} composites ({what}) x {len(self.maps())} maps x "
                f"{len(configs())} configurations ...")

    def computer(self, model, explainers=None, random_model=None):
        return CompositeRows(self, model, explainers, random_model)


def angles(model, batch_size: int, *groups):
    """The embeddings of each group of images (N, 3, H, W), in one pass, float64."""
    import torch

    from ..falsification.stages import embed
    from ..models.base import model_device

    e = embed(model, torch.cat(groups), batch_size, model_device(model)).double()
    out, at = [], 0
    for g in groups:
        out.append(e[at : at + g.shape[0]])
        at += g.shape[0]
    return out


class CompositeRows(FramePoints, ChunkRows):
    """Computes the benchmark's units (:class:`TruthRows`)."""

    def composites(self, pairs, images, refs):
        """Per pair: (construction, composite (3, H, W), strength dict, reference (D,)) or the
        reason none. The reference is what the maps explain x' against and the pair targets
        measure: f of a genuine mate of the donor (another photo of its identity) for the cell
        constructions, f(B) of the donor photo itself for ``average`` and ``swap``."""
        if self.ctx.config.truth in CELL_REGIONS:
            return self.cell_composites(pairs)
        return self.blend_composites(pairs, images, refs)

    def cell_composites(self, pairs):
        """:meth:`composites` of a cell construction: per pair the donor is the face with a
        genuine mate in the data (B first, else A), the base the other face of the pair; the
        region (:data:`CELL_REGIONS`) is drawn per pair from (seed, pair index)."""
        import torch

        from ..data import load_images
        from ..falsification.stages import regions_for
        from ..geometry import geodesic_distance

        model, ctx, c = self.model, self.ctx, self.ctx.config
        size, fc = tuple(model.input_size), ctx.fconfig
        prior = ctx.prior_map.double().numpy()
        plan, out = {}, []
        for i, p in enumerate(pairs):
            got = donor_of(p, c.seed)
            if got is None:
                out.append("no composite: no identity in the data has two photos (a donor and its genuine mate, "
                           "the reference of the test)")
                continue
            donor, base, mate = got
            pts, why = self.points_of(donor)
            if why:
                out.append(f"no composite: the donor's landmarks: {why}")
                continue
            rng = np.random.default_rng([int(c.seed), int(p.index), STREAM_TRUTH])
            region = CELL_REGIONS[c.truth][int(rng.integers(len(CELL_REGIONS[c.truth])))]
            try:
                con = CellTruth(pts, size, fc.grid, region, prior)
            except ValueError as exc:
                out.append(f"no composite: {exc}")
                continue
            plan[i] = (donor, base, mate, con)
            out.append(None)
        if not plan:
            return out
        idx = list(plan)
        loaded = {}
        for role in range(3):
            imgs, bad = load_images([plan[i][role] for i in idx], size, errors="skip", align=model.aligner)
            bad_paths = {str(q) for q, _ in bad}
            it = iter(imgs)
            loaded[role] = {i: (None if str(plan[i][role]) in bad_paths else next(it)) for i in idx}
            for q, why in bad:
                for i in idx:
                    if str(plan[i][role]) == str(q) and out[i] is None:
                        out[i] = f"no composite: {why}"
        idx = [i for i in idx if out[i] is None]
        if not idx:
            return out
        xs = torch.stack([composite(loaded[1][i], loaded[0][i], plan[i][3].alpha) for i in idx])
        bases = torch.stack([loaded[1][i] for i in idx])
        e_x, e_base, e_mate = angles(model, c.batch_size, xs, bases, torch.stack([loaded[2][i] for i in idx]))
        before, after = geodesic_distance(e_base, e_mate), geodesic_distance(e_x, e_mate)
        for j, i in enumerate(idx):
            donor, base, mate, con = plan[i]
            shares = {}
            for name, q in (("run", fc.q), ("matched", con.q)):
                high = regions_for(xs[j], ctx.prior_map, fc.replace(q=q), pairs[i].index).high.numpy()
                shares[name] = float((high & con.truth).sum() / max(int(high.sum()), 1))
            strength = {"angle_before": float(before[j]), "angle_after": float(after[j]),
                        "effect": float(before[j] - after[j]), "cos_before": float(torch.cos(before[j])),
                        "cos_after": float(torch.cos(after[j])), "truth_area": con.q, "core_area": float(con.core.mean()),
                        "wrong_area": float(con.wrong.mean()), "region": con.region,
                        "donor": "B" if donor == pairs[i].b else "A" if donor == pairs[i].a else "third",
                        "mate": Path(mate).name, "identities": [Path(donor).parent.name, Path(base).parent.name],
                        "prior_share_in_truth": shares["run"], "prior_share_matched": shares["matched"],
                        "truth_mass": con.truth_mass, "mirror_mass": con.mirror_mass,
                        "matched_mass": con.matched_mass, "dim": int(e_x.shape[1]),
                        "wrong_in_truth": int((con.wrong & con.truth).sum())}
            out[i] = (con, xs[j], strength, e_mate[j].float())
        return out

    def blend_composites(self, pairs, images, refs):
        """:meth:`composites` of ``average`` and ``swap``: the donor's parts blended in."""
        import torch

        from ..data import load_images
        from ..geometry import geodesic_distance

        model, c = self.model, self.ctx.config
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
            e_x, e_base = angles(model, c.batch_size, torch.stack([out[i][2] for i in ok]),
                                 torch.stack([out[i][1] for i in ok]))
            r = refs[ok].double()
            before, after = geodesic_distance(e_base, r), geodesic_distance(e_x, r)
            for j, i in enumerate(ok):
                con, base, x = out[i]
                strength = {"angle_before": float(before[j]), "angle_after": float(after[j]),
                            "effect": float(before[j] - after[j]),
                            "cos_before": float(torch.cos(before[j])), "cos_after": float(torch.cos(after[j])),
                            "truth_area": float(con.truth.mean()), "core_area": float(con.core.mean()),
                            "wrong_area": float(con.wrong.mean()), "dim": int(e_x.shape[1]),
                            "wrong_in_truth": int((con.wrong & con.truth).sum()),
                            "identities": [Path(pairs[i].b).parent.name, Path(pairs[i].a).parent.name]}
                out[i] = (con, x, strength, refs[i])
        return out

    def known_maps(self, names, built, good, pairs) -> dict:
        """The maps made from each composite's construction (None where it has none), stacked; a
        name whose map is missing on some composites maps to a list with None there."""
        import torch

        from ..falsification.prior import null_maps
        from ..falsification.stages import pair_generator

        ctx, c = self.ctx, self.ctx.config
        out = {}
        for name in names:
            per = []
            for i in good:
                con, p = built[i][0], pairs[i]
                if name == "null":
                    gen = pair_generator(c.seed, p.index, STREAM_TRUTH)
                    per.append(null_maps(ctx.prior_map.float(), 1, ctx.fconfig.grid, gen)[0])
                elif isinstance(con, CellTruth):
                    order = np.random.default_rng([int(c.seed), int(p.index), STREAM_TRUTH, 1]).random(con.cells.size)
                    per.append(con.maps(ctx.prior_map, order)[name])
                elif name in ("truth", "wrong-part"):
                    per.append(truth_maps(con.alpha, con.core, con.wrong, ctx.prior_map)[name])
                else:
                    per.append(None)
            out[name] = torch.stack(per) if all(m is not None for m in per) else per
        return out

    def compute(self, pairs, images, refs, keys, done):
        import torch

        from ..attribution import get_explainer
        from ..falsification.localisation import localisation
        from ..falsification.stages import embed
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
                con, _, strength, _ = built[i]
                detail = {**strength, "construction": c.truth, "parts": c.truth_parts,
                          "points": np.round(con.points, 3).tolist()}
                rows.append({**kind.base_row(COMPOSITE, pairs[i]), "verdict": "passed", "detail": detail})
        names = list(dict.fromkeys(k.split("|", 1)[1] for k in keys if "|" in k))
        if not good or not names:
            yield rows, []
            return
        sub = [pairs[i] for i in good]
        xs = torch.stack([built[i][1] for i in good])
        r = torch.stack([built[i][3] for i in good]).float()
        dev = model_device(model)
        maps: dict = self.known_maps([n for n in names if n in KNOWN_MAPS], built, good, pairs)
        for name in names:
            if name in KNOWN_MAPS:
                continue
            if name == "centre":
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
            if isinstance(mp, torch.Tensor) and tuple(mp.shape[-2:]) != (h, w):
                import torch.nn.functional as F

                maps[name] = F.interpolate(mp.unsqueeze(1).float(), size=(h, w), mode="bilinear",
                                           align_corners=False)[:, 0]
        live = {n: m for n, m in maps.items() if m is not None}
        has = {(n, j) for n, m in live.items() for j in range(len(good)) if not isinstance(m, list) or m[j] is not None}
        qs = [built[i][0].q if isinstance(built[i][0], CellTruth) else min(0.5, float(built[i][0].truth.mean()))
              for i in good]
        cohorts = [cohort_of(ctx.emb, built[i][2]["identities"]) for i in good]
        f_x = self._images.get("f_x", [p.id for p in pairs], lambda: embed(model, xs, c.batch_size, dev))
        locs: dict = {}
        for fill, q in dict.fromkeys((f, qq) for f, qq, _ in configs()):
            want = {t: [(n, j) for n in live for j, p in enumerate(sub)
                        if f"{config_key(fill, q, t)}|{n}" in keys and (f"{config_key(fill, q, t)}|{n}", p.id) not in done]
                    for t in TARGETS_STUDIED}
            for t in TARGETS_STUDIED:  # the maps the construction lacks: a skipped row, not counted
                for n, j in want[t]:
                    if (n, j) not in has:
                        rows.append({**kind.base_row(f"{config_key(fill, q, t)}|{n}", sub[j]), "verdict": SKIPPED,
                                     "failed": [f"the {c.truth} construction has no {n} map for this composite"]})
            todo = list(dict.fromkeys(x for t in TARGETS_STUDIED for x in want[t] if x in has))
            if not todo:
                continue
            got = test_distances(model, xs, f_x, r, live, todo, study_config(c, fill, 0.1 if q is None else q,
                                                                                "embedding"),
                                 [p.index for p in sub], cohorts, qs=qs if q is None else None)
            for t in TARGETS_STUDIED:
                key_of = config_key(fill, q, t)
                for n, j in want[t]:
                    if (n, j) not in has:
                        continue
                    g = got[n, j]
                    if (q, n, j) not in locs:  # the regions depend on q only, not on the fill or target
                        locs[q, n, j] = localisation(live[n][j].double().numpy(), built[good[j]][0].truth,
                                                     g["high"].numpy() if g["reason"] is None else None)
                    loc = locs[q, n, j]
                    if g["reason"] is None:  # the comparator of beyond-mirror: the row's sets reflected
                        loc = {**loc, "mirror": list(g["mirror"][t])}
                    row = {**kind.base_row(f"{key_of}|{n}", sub[j]), "detail": loc,
                           "seconds": (time.perf_counter() - t0) / len(pairs)}
                    if g["reason"] is not None:
                        rows.append({**row, "verdict": "untestable", "failed": [g["reason"]]})
                    else:
                        dh, dl = g[t]
                        rows.append({**row, "verdict": "tested", "d_high": dh, "d_low": dl, "margin": dh - dl,
                                     "n_high": g["n_high"], "n_low": g["n_low"], "k": g["k"]})
        yield rows, []
