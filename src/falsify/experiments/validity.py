"""``falsify run validity``: does the falsification test falsify maps that cannot be right?

On the pairs given, maps that *must fail* - they ignore the image (``centre``: the model's prior;
``gaussian``: a centred blob), the model (``edge``; ``random``) or the trained weights
(``saliency@random-model``, ``ig@random-model``: computed on a randomised copy of the model), or
rank the regions backwards (``inverted``: the model's own occlusion map, reversed) - are tested
beside the model's own occlusion map (``occlusion-oracle``: the quantity the test measures, one
cell at a time) and three real methods (``occlusion``: captum's sliding window with a black patch,
``saliency``, ``ig``), and, for the reference-swap control,
``saliency@other-reference`` (saliency made against another pair's face). Every configuration

    fill in FILLS_STUDIED  x  q in QS_STUDIED  x  criterion (absolute; beyond-prior at each delta)

is evaluated on the same distances (the criterion does not change the counterfactuals; the prior's
own distances are the ``centre`` map's). The *discriminative power* of a configuration is the
lowest falsification rate among the must-fail maps minus the oracle's. To keep the choice honest,
the pairs are split in two halves by position: the configuration is chosen on the first
("selection") and its rates are reported on the second ("confirmation"), pairs the choice has
never seen.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from ..falsification import stats
from ..report.tables import write_summary_json
from .base import Experiment, load_raw_summary
from .rows import ChunkRows, RowKind
from .resume import now
from .study import study_config

#: Fills, region sizes and beyond-prior margins (in units of the model's threshold angle theta*)
#: the study compares.
FILLS_STUDIED = ("blur", "mean", "noise")
QS_STUDIED = (0.1, 0.2)
#: what the distances measure: the embedding's own move, or the pair's angle (pair-aware)
TARGETS_STUDIED = ("embedding", "pair")
#: beyond-prior margins: 0 (strictly better than the prior), theta*/16, and the calibrated one
#: (the 95th percentile of the excess that maps knowing only the prior reach: ``calibrate_delta``)
DELTA_RULES = ("0", "theta*/16", "calibrated")

#: Maps that cannot be right about the model on this image: each must be falsified.
MUST_FAIL = ("inverted", "centre", "gaussian", "edge", "random", "saliency@random-model", "ig@random-model")
#: The model's own occlusion map: the reference a good map should match.
ORACLE = "occlusion-oracle"
#: Real methods and the reference-swap control, reported for context.
OTHERS = ("occlusion", "saliency", "ig", "saliency@other-reference")
MAPS = (ORACLE, *MUST_FAIL, *OTHERS)
#: IG in the study: a fixed 32-step path (the completeness refinement would spend up to 512 steps on
#: the randomised model, whose attributions never add up); ``--option ig.KEY=VALUE`` overrides.
IG_OPTIONS = {"steps": 32, "tolerance": None}
#: Configuration key of the deletion-curve rows
DELETION = "deletion"
#: Experiment key of the study's rows in the store: one row per (configuration, map, pair).
ROWS_OF = "validity"


def gaussian_map(size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A centred isotropic Gaussian (std ``sigma`` x the image height): a weaker centre control."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    return torch.exp(-(yy.float() ** 2 + xx.float() ** 2) / (2 * (sigma * h) ** 2))


def config_key(fill: str, q: float, target: str = "embedding") -> str:
    return f"{fill}/q{q:g}" + ("" if target == "embedding" else f"/{target}")


def _configs():
    return [(f, q, t) for t in TARGETS_STUDIED for f in FILLS_STUDIED for q in QS_STUDIED]


def map_groups() -> list[tuple[str, ...]]:
    """The study's maps in the groups one unit makes together: the oracle and its inversion share
    the occlusion map, every other map is a group of its own."""
    return [(ORACLE, "inverted"), *[(m,) for m in MAPS if m not in (ORACLE, "inverted")]]


class ValidityRows(RowKind):
    """The study's rows (``executor.RowKind``): the distances of every (configuration|map, pair)
    and a deletion curve per (map, pair); a unit is a chunk of pairs and one group of maps
    (:func:`map_groups`) under every configuration, so the maps spread over Ray workers."""

    rows_of = ROWS_OF

    def keys(self) -> list[str]:
        return [f"{config_key(f, q, t)}|{m}" for f, q, t in _configs() for m in MAPS] + [
            f"{DELETION}|{m}" for m in MAPS]

    def groups(self, keys):
        of = {m: g for g in map_groups() for m in g}
        out: dict = {}
        for k in keys:
            out.setdefault(of[k.split("|", 1)[1]], []).append(k)
        return list(out.values())

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        return f"{n_rows} of {n_pairs * n_keys} (configuration|map, pair) rows to compute"

    def computer(self, model, explainers=None, random_model=None):
        return StudyRows(self, model, explainers, random_model)


class StudyRows(ChunkRows):
    """Computes the study's units (:class:`ValidityRows`)."""

    def needs(self, p) -> list:
        return [self.ctx.other_ref[p.id]]  # saliency@other-reference's face

    def random(self):
        """The randomised copy of the model (that of ``row_explainers``: the same seed)."""
        if self.random_model is None:
            from ..models.base import randomised_copy

            self.random_model = randomised_copy(self.model, seed=self.ctx.config.seed)
        return self.random_model

    def maps(self, names, pairs, images, refs) -> dict[str, torch.Tensor]:
        """The maps ``names`` of A of ``pairs`` (CPU)."""
        from ..attribution import get_explainer
        from ..falsification.calibration import occlusion_sensitivity
        from ..models.base import model_device
        from .executor import random_embeddings

        model, ctx, c = self.model, self.ctx, self.ctx.config
        device = model_device(model)
        x, r = images.to(device), refs.to(device)
        opts = c.method_options
        ig_opts = {**IG_OPTIONS, **opts.get("ig", {})}
        out = {}
        for name in names:
            if name in (ORACLE, "inverted"):
                if ORACLE not in out:
                    out[ORACLE] = occlusion_sensitivity(model, images, grid=c.prior_grid, fill="blur",
                                                        batch_size=c.batch_size)
                if name == "inverted":
                    out["inverted"] = -out[ORACLE]
            elif name == "centre":
                out[name] = ctx.prior_map.expand(len(pairs), -1, -1)
            elif name == "gaussian":
                out[name] = gaussian_map(model.input_size).expand(len(pairs), -1, -1)
            elif name in ("edge", "random"):
                out[name] = get_explainer(name, model, **({"seed": c.seed} if name == "random" else {}))(x, r).cpu()
            elif name.endswith("@random-model"):
                base = name.split("@")[0]
                random_refs = self._images.get("random-b", [p.id for p in pairs],
                                               lambda: random_embeddings(self.random(), model, pairs))
                options = ig_opts if base == "ig" else opts.get(base, {})
                out[name] = get_explainer(base, self.random(), **options)(x, random_refs.to(device)).cpu()
            elif name == "saliency@other-reference":
                other = torch.stack([ctx.emb[ctx.other_ref[p.id]] for p in pairs]).to(device)
                out[name] = get_explainer("saliency", model, **opts.get("saliency", {}))(x, other).cpu()
            else:  # occlusion, saliency, ig
                out[name] = get_explainer(name, model, **(ig_opts if name == "ig" else opts.get(name, {})))(x, r).cpu()
        return {n: out[n] for n in names}

    def compute(self, pairs, images, refs, keys, done):
        from ..falsification import falsification_test
        from ..geometry import cosine_similarity
        from .executor import deletion_of

        kind, model, ctx, c = self.kind, self.model, self.ctx, self.ctx.config
        t = time.perf_counter()
        names = list(dict.fromkeys(k.split("|", 1)[1] for k in keys))
        maps = self.maps(names, pairs, images, refs)
        cos = cosine_similarity(torch.stack([ctx.emb[p.a] for p in pairs]), refs).tolist()
        loose = dict(tau_high=0.0, tau_low=math.pi, epsilon=0.0)  # distances only; verdicts in the summary
        rows = []
        for fill, q, target in _configs():
            cfg = study_config(c, fill, q, target, **loose)
            for name, mp in maps.items():
                key = f"{config_key(fill, q, target)}|{name}"
                idx = [i for i, p in enumerate(pairs) if key in keys and (key, p.id) not in done]
                if not idx:
                    continue
                rs = falsification_test(model, images[idx], refs[idx], mp[idx], cfg,
                                        pair_ids=[pairs[i].index for i in idx])
                for i, r in zip(idx, rs):
                    rows.append({**kind.base_row(key, pairs[i]), "verdict": r.verdict,
                                 "d_high": r.d_high, "d_low": r.d_low, "sd_high": r.sd_high,
                                 "sd_low": r.sd_low, "margin": r.margin, "n_high": r.n_high,
                                 "n_low": r.n_low, "k": r.K, "failed": list(r.failed),
                                 "seconds": (time.perf_counter() - t) / len(pairs)})
        # one deletion curve per (map, genuine pair the model accepts); other pairs get an
        # untestable row saying why, so that a resumed study knows they are done
        for name, mp in maps.items():
            key = f"{DELETION}|{name}"
            for i, p in enumerate(pairs):
                if key not in keys or (key, p.id) in done:
                    continue
                curve = deletion_of(model, ctx.threshold, c, p, images[i], mp[i], refs[i], cos[i])
                if curve is None:
                    why = "impostor pair" if not p.same else "a genuine pair the model already rejects"
                    rows.append({**kind.base_row(key, p), "verdict": "untestable",
                                 "failed": [f"no deletion curve: {why}"]})
                else:
                    rows.append({**kind.base_row(key, p), "verdict": "passed", "detail": curve,
                                 "seconds": time.perf_counter() - t})
        yield rows, []


def study(session, store) -> dict:
    """The validity study on a run (``Experiment.compute``): rows ``(validity, model,
    "<fill>/q<q>|<map>", pair)`` hold the distances (:class:`ValidityRows`); the verdicts of every
    criterion are computed from them in the summary."""
    from ..falsification.prior import calibrate_delta

    c, pairs, model = session.config, session.pairs, session.model
    session.compute_rows(store, ValidityRows(session.context(ROWS_OF)))
    deltas = store.get_meta("validity_deltas")
    if deltas is None:
        session.log("calibrating delta for each fill and q on the prior's images ...")
        images, prior_refs = session.prior_image_batch()
        deltas = {}
        for fill, q, target in _configs():
            cfg = study_config(c, fill, q, target)
            deltas[config_key(fill, q, target)] = calibrate_delta(model, images, session.prior_map, cfg, seed=c.seed,
                                                                  references=prior_refs)
        store.set_meta("validity_deltas", deltas)
    ids = {p.id for p in pairs}
    rows = store.rows(ROWS_OF, model.name, pairs=ids)
    summary = validity_summary(rows, pairs, session.calibration, c, deltas)
    summary.update(created=now(), started=session.started, model=model.name,
                   elapsed_s=time.perf_counter() - session.t0, experiment="validity",
                   calibration=session.calibration.to_dict(), prior=session.prior.to_dict(), data=pairs.data_record())
    return summary


def _criteria(theta: float, calibrated: float) -> list[tuple[str, float | None]]:
    values = {"0": 0.0, "theta*/16": theta / 16, "calibrated": calibrated}
    return [("absolute", None)] + [(f"beyond-prior, delta {rule} = {values[rule]:.4f}", values[rule])
                                   for rule in DELTA_RULES]


def validity_summary(rows: list[dict], pairs, calibration, config, deltas: dict) -> dict:
    """FR of every map under every configuration, on the selection and confirmation halves, the
    discriminative power of each configuration, and the configuration chosen on the selection
    half (highest power; ties: absolute first, then the smaller q, then the fill order)."""
    order = {p.id: k for k, p in enumerate(pairs)}
    half = {pid: ("selection" if k < (len(pairs) + 1) // 2 else "confirmation") for pid, k in order.items()}
    dist: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for r in rows:
        if r["verdict"] == "error" or r["d_high"] is None:
            continue
        cfg, name = r["method"].split("|", 1)
        if cfg == DELETION:
            continue
        dist.setdefault((cfg, name), {})[r["pair"]] = (r["d_high"], r["d_low"])
    th = calibration.threshold_angle
    table = []
    for fill, q, target in _configs():
        cfg = config_key(fill, q, target)
        prior = dist.get((cfg, "centre"), {})
        for crit, delta in _criteria(th, deltas[cfg]["delta"]):
            entry = {"fill": fill, "q": q, "target": target, "criterion": crit, "delta": delta, "rates": {}}
            verdicts_all: dict[str, dict[str, str]] = {}
            for part in ("selection", "confirmation", "all"):
                rates = {}
                for name in MAPS:
                    d = dist.get((cfg, name), {})
                    verdicts = {}
                    for pid, (dh, dl) in d.items():
                        if part != "all" and half[pid] != part:
                            continue
                        if delta is None:
                            ok = dh > calibration.tau_high and dl < calibration.tau_low and dh - dl >= calibration.epsilon
                        else:
                            if pid not in prior:
                                continue
                            ok = (dh - dl) - (prior[pid][0] - prior[pid][1]) > delta
                        verdicts[pid] = "passed" if ok else "falsified"
                    fr = stats.falsification_rate(list(verdicts.values())) if verdicts else None
                    rates[name] = {"fr": None if fr is None else fr.rate, "n": len(verdicts),
                                   "ci": None if fr is None else [fr.ci_low, fr.ci_high]}
                    if part == "all":
                        verdicts_all[name] = verdicts
                must = [rates[m]["fr"] for m in MUST_FAIL if rates[m]["fr"] is not None]
                oracle = rates[ORACLE]["fr"]
                entry["rates"][part] = rates
                entry[f"power_{part}"] = None if not must or oracle is None else min(must) - oracle
            entry["pair_specific"] = _pair_specific(verdicts_all)
            table.append(entry)
    ranked = sorted(
        (e for e in table if e["power_selection"] is not None),
        key=lambda e: (-e["power_selection"], e["target"] != "embedding", e["criterion"] != "absolute", e["q"],
                       FILLS_STUDIED.index(e["fill"])),
    )
    best = ranked[0] if ranked else None
    return {"configurations": table, "deletion": deletion_summary(rows),
            "best": best and {k: best[k] for k in ("fill", "q", "target", "criterion", "delta")},
            "theta_star": th, "maps": list(MAPS), "must_fail": list(MUST_FAIL), "oracle": ORACLE,
            "K": config.K, "grid": config.grid, "seed": config.seed, "deltas": deltas}


def deletion_summary(rows: list[dict]) -> dict:
    """Per map, its deletion curves summarised by ``summarise_curves`` (``n`` 0 when it has none)."""
    import json

    from ..falsification.deletion import summarise_curves

    out = {}
    for name in MAPS:
        curves = [json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
                  for r in rows if r["method"] == f"{DELETION}|{name}" and r["verdict"] == "passed" and r["detail"]]
        out[name] = summarise_curves(curves) or {"n": 0, "flipped": None, "median_flip_fraction": None,
                                                 "mean_area": None}
    return out


def _pair_specific(verdicts: dict[str, dict[str, str]]) -> dict | None:
    """McNemar's exact test of saliency's maps made against another pair's face versus its true
    maps, on the same pairs: are the explanations about this pair?"""
    true, other = verdicts.get("saliency", {}), verdicts.get("saliency@other-reference", {})
    common = sorted(set(true) & set(other))
    if not common:
        return None
    c = stats.mcnemar_paired([other[p] for p in common], [true[p] for p in common],
                             name_a="saliency@other-reference", name_b="saliency")
    return {"n": c.n_pairs, "fr_other": c.rate_a, "fr_true": c.rate_b, "p": c.pvalue,
            "other_worse": bool(c.pvalue is not None and c.pvalue < 0.05 and c.rate_a > c.rate_b)}


def format_validity(summary: dict) -> str:
    """The validity table as Markdown: one line per configuration, FR (%) of each map on the
    confirmation half, and the power on both halves."""
    maps = summary["maps"]
    short = {ORACLE: "oracle", "saliency@random-model": "sal@rand", "ig@random-model": "ig@rand",
             "saliency@other-reference": "sal@other"}
    head = ["fill", "q", "target", "criterion"] + [short.get(m, m) for m in maps] + ["power (sel.)", "power (conf.)",
                                                                                  "other-ref. p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = summary.get("best") or {}
    for e in summary["configurations"]:
        rates = e["rates"]["confirmation"]
        cells = [e["fill"], f"{e['q']:g}", e["target"], e["criterion"]]
        cells += ["n/a" if rates[m]["fr"] is None else f"{100 * rates[m]['fr']:.0f}" for m in maps]
        cells += ["n/a" if e[k] is None else f"{100 * e[k]:+.0f}" for k in ("power_selection", "power_confirmation")]
        ps = e.get("pair_specific")
        cells.append("n/a" if not ps or ps["p"] is None else f"{ps['p']:.2g}" + (" (worse)" if ps["other_worse"] else ""))
        chosen = all(e[k] == best.get(k) for k in ("fill", "q", "target", "criterion"))
        lines.append("| " + " | ".join(f"**{x}**" if chosen else x for x in cells) + " |")
    n_sel = next(iter(summary["configurations"][0]["rates"]["selection"].values()))["n"]
    n_conf = next(iter(summary["configurations"][0]["rates"]["confirmation"].values()))["n"]
    lines.append("")
    lines.append(f"FR in % on the confirmation half ({n_conf} pairs); power = lowest FR of the must-fail maps "
                 f"({', '.join(summary['must_fail'])}) minus the oracle's, on the selection half ({n_sel} pairs) "
                 "and the confirmation half. Bold: the configuration chosen on the selection half. "
                 "other-ref. p: McNemar exact p of saliency made against another pair's face versus its true "
                 "maps, all pairs ('worse': the swapped maps are falsified significantly more often). "
                 f"theta* = {summary['theta_star']:.4f} rad.")
    deletion = summary.get("deletion") or {}
    if deletion:
        lines += ["", "Deletion curves (blur fill, genuine pairs the model accepts): cells hidden in the map's order "
                  "until the decision flips to a false non-match.", "",
                  "| map | pairs | flipped | median share hidden at the flip | mean area (cos - threshold) |",
                  "|---|---|---|---|---|"]
        for m in maps:
            d = deletion.get(m) or {}
            if not d.get("n"):
                continue
            lines.append(f"| {m} | {d['n']} | {100 * d['flipped']:.0f}% | {d['median_flip_fraction']:.2f} | "
                         f"{d['mean_area']:+.4f} |")
    return "\n".join(lines)


class ValidityExperiment(Experiment):
    """``falsify run validity``: its summary is :func:`study`'s; its output is ``OUT/validity.md``
    (:func:`format_validity`), which ``falsify report`` rewrites."""

    name = "validity"
    title = "The validity study"
    anchor = "validity"
    nav = "Validity"
    key = "configurations"
    rows_of = ROWS_OF
    needs_prior = True  # the centre map, and delta's calibration
    needs_random_model = True  # the @random-model maps

    def check(self, config) -> None:
        if config.tau_high is not None:
            raise ValueError("the validity study calibrates its thresholds on the data: drop tau_high, tau_low, epsilon")

    def compute(self, session, store) -> dict:
        return study(session, store)

    def write(self, session, summary: dict) -> None:
        write_summary_json(session.out, summary)
        (session.out / "validity.md").write_text(format_validity(summary) + "\n", encoding="utf-8")

    def present(self, summary) -> bool:
        return summary.get("experiment") == "validity" and isinstance(summary.get("configurations"), list)

    def text(self, summary) -> str:
        return format_validity(summary)

    def report_summary(self, out) -> dict:
        return load_raw_summary(out)

    def rewrite(self, out, summary, report, figures: bool = True):
        """Its report is ``OUT/validity.md`` (:func:`format_validity`), not report.html."""
        path = Path(out) / "validity.md"
        path.write_text(format_validity(summary) + "\n", encoding="utf-8")
        return path

    def outputs(self, out) -> str:
        return f"results: {out}/results.sqlite\ntable:   {out}/validity.md"


EXPERIMENT = ValidityExperiment()
