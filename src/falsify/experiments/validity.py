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
from tqdm.auto import tqdm

from ..data import load_images
from ..falsification import stats
from .base import Experiment, load_raw_summary
from .runner import Runner, _now
from .store import ResultsStore

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


class ValidityStudy(Runner):
    """The validity study as a resumable run: rows ``(validity, model, "<fill>/q<q>|<map>", pair)``
    hold the distances; the verdicts of every criterion are computed from them in the summary."""

    rows_of = ROWS_OF

    def _maps(self, pairs, images, refs, emb, random_refs) -> dict[str, torch.Tensor]:
        from ..attribution import get_explainer
        from ..falsification.calibration import occlusion_sensitivity

        model, device = self.model, self.device
        n = images.shape[0]
        occ = occlusion_sensitivity(model, images, grid=self.config.prior_grid, fill="blur",
                                    batch_size=self.config.batch_size)
        other = torch.stack([emb[self.other_ref[p.id]] for p in pairs]).to(device)
        x, r = images.to(device), refs.to(device)
        opts = self.config.method_options
        ig_opts = {**IG_OPTIONS, **opts.get("ig", {})}
        sal = get_explainer("saliency", model, **opts.get("saliency", {}))
        return {
            ORACLE: occ,
            "inverted": -occ,
            "centre": self.prior_map.expand(n, -1, -1),
            "gaussian": gaussian_map(model.input_size).expand(n, -1, -1),
            "edge": get_explainer("edge", model)(x, r).cpu(),
            "random": get_explainer("random", model, seed=self.config.seed)(x, r).cpu(),
            "saliency@random-model": get_explainer("saliency", self.random_model, **opts.get("saliency", {}))(
                x, random_refs.to(device)).cpu(),
            "ig@random-model": get_explainer("ig", self.random_model, **ig_opts)(x, random_refs.to(device)).cpu(),
            "occlusion": get_explainer("occlusion", model, **opts.get("occlusion", {}))(x, r).cpu(),
            "saliency": sal(x, r).cpu(),
            "ig": get_explainer("ig", model, **ig_opts)(x, r).cpu(),
            "saliency@other-reference": sal(x, other).cpu(),
        }

    def _deletion_rows(self, pairs, images, refs, cos, maps, done, t) -> list[dict]:
        """One deletion curve per (map, genuine pair the model accepts: ``Runner._deletion``); other
        pairs get an untestable row saying why (so that a resumed study knows they are done)."""
        rows = []
        for name, mp in maps.items():
            key = f"{DELETION}|{name}"
            for i, p in enumerate(pairs):
                if (key, p.id) in done:
                    continue
                base = self._base_row(key, p)
                curve = self._deletion(p, images[i], mp[i], refs[i], cos[i])
                if curve is None:
                    why = "impostor pair" if not p.same else "a genuine pair the model already rejects"
                    rows.append({**base, "verdict": "untestable", "failed": [f"no deletion curve: {why}"]})
                else:
                    rows.append({**base, "verdict": "passed", "detail": curve, "seconds": time.perf_counter() - t})
        return rows

    def _study_config(self, fill: str, q: float, target: str, **thresholds):
        """The test's configuration for one (fill, q, target) of the study, the run's other settings."""
        from ..falsification import FalsificationConfig

        c = self.config
        return FalsificationConfig(fill=fill, q=q, K=c.K, seed=c.seed, batch_size=c.batch_size, grid=c.grid,
                                   granularity=c.granularity, target=target, **thresholds)

    def _compute(self, store: ResultsStore, started: str, t0: float) -> dict:
        from ..falsification import falsification_test
        from ..geometry import cosine_similarity
        from ..verification import embed_paths

        c, pairs, model = self.config, self.pairs, self.model
        keys = [f"{config_key(f, q, t)}|{m}" for f, q, t in _configs() for m in MAPS]
        keys += [f"{DELETION}|{m}" for m in MAPS]
        done = store.done(ROWS_OF, model.name)
        todo = [p for p in pairs if any((k, p.id) not in done for k in keys)]
        self.log(f"{sum((k, p.id) not in done for p in pairs for k in keys)} of {len(pairs) * len(keys)} "
                 "(configuration|map, pair) rows to compute")
        if todo:
            emb, failed = embed_paths(model, [q for p in pairs for q in (p.a, p.b)], c.batch_size, progress=False)
            self.other_ref = {p.id: pairs[(k + 1) % len(pairs)].b for k, p in enumerate(pairs)}
            loose = dict(tau_high=0.0, tau_low=math.pi, epsilon=0.0)  # distances only; verdicts in the summary
            bar = tqdm(total=len(todo), desc="validity study", unit="pair", disable=not self.progress)
            for start in range(0, len(todo), c.batch_pairs):
                chunk = todo[start : start + c.batch_pairs]
                bad = [p for p in chunk if failed.get(p.a) or failed.get(p.b) or failed.get(self.other_ref[p.id])]
                for p in bad:
                    why = failed.get(p.a) or failed.get(p.b) or failed.get(self.other_ref[p.id])
                    store.add_rows([self._error_row(k, p, why) for k in keys if (k, p.id) not in done])
                good = [p for p in chunk if p not in bad]
                if good:
                    images, _ = load_images([p.a for p in good], model.input_size, align=model.aligner)
                    refs = torch.stack([emb[p.b] for p in good])
                    cos = cosine_similarity(torch.stack([emb[p.a] for p in good]), refs).tolist()
                    b_images, _ = load_images([p.b for p in good], model.input_size, align=model.aligner)
                    with torch.inference_mode():
                        random_refs = self.random_model(b_images.to(self.device)).float().cpu()
                    t = time.perf_counter()
                    maps = self._maps(good, images, refs, emb, random_refs)
                    for fill, q, target in _configs():
                        cfg = self._study_config(fill, q, target, **loose)
                        rows = []
                        for name, mp in maps.items():
                            key = f"{config_key(fill, q, target)}|{name}"
                            idx = [i for i, p in enumerate(good) if (key, p.id) not in done]
                            if not idx:
                                continue
                            rs = falsification_test(model, images[idx], refs[idx], mp[idx], cfg,
                                                    pair_ids=[good[i].index for i in idx])
                            for i, r in zip(idx, rs):
                                rows.append({**self._base_row(key, good[i]), "verdict": r.verdict,
                                             "d_high": r.d_high, "d_low": r.d_low, "sd_high": r.sd_high,
                                             "sd_low": r.sd_low, "margin": r.margin, "n_high": r.n_high,
                                             "n_low": r.n_low, "k": r.K, "failed": list(r.failed),
                                             "seconds": (time.perf_counter() - t) / len(good)})
                        store.add_rows(rows)
                    store.add_rows(self._deletion_rows(good, images, refs, cos, maps, done, t))
                bar.update(len(chunk))
            bar.close()
        deltas = store.get_meta("validity_deltas")
        if deltas is None:
            from ..falsification.prior import calibrate_delta

            self.log("calibrating delta for each fill and q on the prior's images ...")
            images, prior_refs = self._prior_image_batch(model, pairs)
            deltas = {}
            for fill, q, target in _configs():
                cfg = self._study_config(fill, q, target)
                deltas[config_key(fill, q, target)] = calibrate_delta(model, images, self.prior_map, cfg, seed=c.seed,
                                                                      references=prior_refs)
            store.set_meta("validity_deltas", deltas)
        rows = [r for r in store.rows(ROWS_OF, model.name) if r["pair"] in {p.id for p in pairs}]
        summary = validity_summary(rows, pairs, self.calibration, self.config, deltas)
        summary.update(created=_now(), started=started, model=model.name, elapsed_s=time.perf_counter() - t0,
                       experiment="validity", calibration=self.calibration.to_dict(), prior=self.prior.to_dict(),
                       data={"source": pairs.source, "n_pairs": len(pairs), "n_genuine": pairs.n_genuine,
                             "n_impostor": pairs.n_impostor, "n_skipped": len(pairs.skipped)})
        return summary

    def _write(self, summary: dict) -> None:
        import json

        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str, allow_nan=False))
        tmp.replace(path)
        (self.out / "validity.md").write_text(format_validity(summary) + "\n", encoding="utf-8")


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
    """``falsify run validity``: its runner is :class:`ValidityStudy`; its output is
    ``OUT/validity.md`` (:func:`format_validity`), which ``falsify report`` rewrites."""

    name = "validity"
    title = "The validity study"
    anchor = "validity"
    nav = "Validity"
    key = "configurations"

    def runner(self, config, **kw):
        return ValidityStudy(config, **kw)

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
