"""The known-truth benchmark's rows (:mod:`.known_truth`): the configurations studied, the test's
distances of every map on every composite, and the computer of a unit of composites."""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from ..choices import CONTROLS, TRUTH_METHODS
from .exp_6_3 import FramePoints
from .rows import ChunkRows, RowKind
from .truth_construction import Construction, composite, truth_maps

ROWS_OF = "known-truth"
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
#: the key of a composite's own row (its strength)
COMPOSITE = "composite"


def config_key(fill: str, q: float, target: str) -> str:
    return f"{fill}/q{q:g}/{target}"


def configs() -> list[tuple[str, float, str]]:
    return [(f, q, t) for t in TARGETS_STUDIED for f in FILLS_STUDIED for q in QS_STUDIED]



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

