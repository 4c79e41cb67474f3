"""The known-truth benchmark's analysis and report (:mod:`.known_truth`): the verdicts of every
criterion from the stored distances, the rates per configuration and map, the tables and the figure."""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from ..report.labels import fit_titles, quiet
from ..report.tables import fmt_num
from ..geometry import excess_rounding
from .truth_rows import APART, COMPOSITE, FILLS_STUDIED, NEGATIVE, POSITIVE, SKIPPED, config_key, configs, q_label

KEY = "known_truth"

# ---------------------------------------------------------------------------------------------
# the analysis


#: the quantile of the null maps' excess that calibrates delta per configuration (selection half)
DELTA_QUANTILE = 0.95
#: bootstrap resamples of the composites for the specificity's interval
BOOTSTRAP = 2000


#: the criteria whose comparator the study holds: beyond-prior's (the centre map's distances on the
#: composite) and beyond-mirror's (each row's own sets reflected, stored in its detail)
COMPARED = ("beyond-prior", "beyond-mirror")


def criteria_of(deltas: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """``(label, criterion, delta name)`` of the criteria judged on every configuration's
    distances: absolute, and beyond the prior and beyond the mirror by each named delta (``run``:
    the run's delta; ``calibrated``: per configuration and criterion)."""
    return [("absolute", "absolute", None)] + [(crit if name == "run" else f"{crit}, delta {name}", crit, name)
                                               for crit in COMPARED for name in deltas]


def _verdict(dh, dl, prior, crit, delta, cal, tol) -> tuple[bool, bool, bool, bool] | None:
    """(passed, top holds, bottom holds, tie) of one row's distances, or None (no comparator).
    Beyond-prior and beyond-mirror (``prior``: the comparator's (d_high, d_low): the centre map's,
    or the row's mirrored sets'): passed when the excess beats delta by more than ``tol`` (its
    float32 rounding, :func:`falsify.geometry.excess_rounding`; within it, a tie, falsified on
    every machine); the top holds when d_high is no smaller than the comparator's, the bottom when
    d_low is no larger (within half that rounding); absolute: d_high > tau_high, d_low < tau_low."""
    from ..falsification.criteria import verdict_beyond_prior

    if crit == "absolute":
        top, bottom = dh > cal["tau_high"], dl < cal["tau_low"]
        return bool(top and bottom and dh - dl >= cal["epsilon"]), bool(top), bool(bottom), False
    if prior is None or prior[0] is None:
        return None
    ph, pl = prior
    excess = (dh - dl) - (ph - pl)
    verdict, _ = verdict_beyond_prior(excess, delta, tol)
    return (verdict == "passed", bool(dh >= ph - tol / 2), bool(dl <= pl + tol / 2),
            bool(abs(excess - delta) <= tol))


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


def split_halves(kept: Sequence[str], seed: int) -> dict[str, str]:
    """A seeded random split of the composites: the first half of a seeded permutation of ``kept``
    (in its given order) is the selection half, the rest the confirmation half."""
    perm = np.random.default_rng([int(seed), 28]).permutation(len(kept))
    n_sel = (len(kept) + 1) // 2
    return {kept[int(i)]: ("selection" if rank < n_sel else "confirmation") for rank, i in enumerate(perm)}


def bootstrap_by_composite(per_composite: Sequence[tuple[int, int]], seed: int, n: int = BOOTSTRAP) -> list | None:
    """The 95% percentile interval of the pooled rate sum(k) / sum(n) over composites, each
    composite's (k, n) resampled together (``n`` resamples, seeded): negatives of one composite are
    not independent, so the interval counts composites, not maps."""
    arr = np.array([x for x in per_composite if x[1] > 0], dtype=float).reshape(-1, 2)
    if arr.shape[0] == 0:
        return None
    idx = np.random.default_rng([int(seed), 29]).integers(0, arr.shape[0], size=(n, arr.shape[0]))
    rates = arr[idx, 0].sum(axis=1) / arr[idx, 1].sum(axis=1)
    return [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]


def _distances(rows, kept_set):
    dist: dict[tuple[str, str], dict] = {}
    locs: dict[tuple[str, str], list] = {}
    for r in rows:
        if r["method"] == COMPOSITE or r["verdict"] in ("error", SKIPPED) or r["pair"] not in kept_set:
            continue
        cfg, name = r["method"].split("|", 1)
        tested = r["d_high"] is not None and r["verdict"] != "untestable"
        detail = (json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]) if r["detail"] else {}
        mirror = detail.get("mirror") or (None, None)
        dist.setdefault((cfg, name), {})[r["pair"]] = (r["d_high"], r["d_low"], *mirror) if tested else None
        if detail:
            locs.setdefault((cfg, name), []).append(detail)
    return dist, locs


def comparator(dist, cfg: str, crit: str, pid: str, v) -> tuple | None:
    """The (d_high, d_low) a row ``v`` of composite ``pid`` is compared with under ``crit``: the
    centre map's (beyond-prior) or its own mirrored sets' (beyond-mirror); None without one."""
    if crit == "beyond-mirror":
        return None if v is None or len(v) < 4 or v[2] is None else (v[2], v[3])
    c = dist.get((cfg, "centre"), {}).get(pid)
    return None if c is None else c[:2]


def calibrated_deltas(dist, half, comps, crit: str = "beyond-prior") -> dict[str, float]:
    """delta per configuration under ``crit``: the :data:`DELTA_QUANTILE` quantile of the excess
    over the comparator (the prior's margin, or the mirrored sets') of the null maps (maps that
    know only the prior) on the selection half, at least 0."""
    out = {}
    for fill, q, target in configs():
        cfg = config_key(fill, q, target)
        null = dist.get((cfg, "null"), {})
        ex = []
        for p, v in null.items():
            c = comparator(dist, cfg, crit, p, v)
            if v is not None and c is not None and half.get(p) == "selection":
                ex.append((v[0] - v[1]) - (c[0] - c[1]))
        out[cfg] = max(0.0, float(np.quantile(ex, DELTA_QUANTILE))) if ex else 0.0
    return out


#: the specificity at which :func:`separability` reads the best sensitivity any delta could give
ORACLE_SPECIFICITY = 0.90


def separability(dist, cfg: str, crit: str) -> dict | None:
    """How far any delta could take this (configuration, criterion), on every kept composite:
    the AUC of the truth maps' excess against the negatives' (the chance that a truth map beats a
    negative map; 0.5: no separation), and the highest sensitivity at which some delta keeps the
    specificity at :data:`ORACLE_SPECIFICITY` or more. An *oracle* bound, chosen on the same
    composites it is read on (optimistic), never a headline; None for the absolute criterion."""
    if crit == "absolute":
        return None

    def excesses(names):
        out = []
        for name in names:
            for pid, v in dist.get((cfg, name), {}).items():
                c = None if v is None else comparator(dist, cfg, crit, pid, v)
                if c is not None:
                    out.append((v[0] - v[1]) - (c[0] - c[1]))
        return np.array(out, dtype=float)

    pos, neg = excesses(POSITIVE), excesses(NEGATIVE)
    if not pos.size or not neg.size:
        return None
    from scipy.stats import mannwhitneyu

    auc = float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (pos.size * neg.size))
    # the smallest delta with specificity >= ORACLE_SPECIFICITY: the negatives' quantile
    cut = float(np.quantile(neg, ORACLE_SPECIFICITY, method="higher"))
    return {"auc": auc, "delta_at_specificity": cut, "specificity": float((neg <= cut).mean()),
            "sensitivity": float((pos > cut).mean()), "n_positive": int(pos.size), "n_negative": int(neg.size)}


def judge_config(dist, cfg, crit, delta, cal, maps, comps, half, seed) -> dict:
    """The verdicts of one (configuration, criterion): per half, the sensitivity, the specificity
    (Wilson over maps, and bootstrapped by composite), per map and per region, and the ties."""
    out: dict = {}
    for part in ("selection", "confirmation", "all"):
        per_map, per_comp, regions, ties = {}, {}, {}, 0
        for name in maps:
            flags = []
            for pid, v in dist.get((cfg, name), {}).items():
                if part != "all" and half[pid] != part:
                    continue
                tol = excess_rounding(int(comps[pid].get("dim", 128)))
                got = (False, False, False, False) if v is None else _verdict(
                    v[0], v[1], comparator(dist, cfg, crit, pid, v), crit, delta, cal, tol)
                if got is None:
                    continue
                flags.append(got)
                ties += got[3] and name in (*POSITIVE, *NEGATIVE)
                if name in NEGATIVE:
                    k, n = per_comp.get(pid, (0, 0))
                    per_comp[pid] = (k + (not got[0]), n + 1)
                if name in POSITIVE:
                    regions.setdefault(comps[pid].get("region", "all"), []).append(got[0])
            per_map[name] = {"passed": _rate([f[0] for f in flags]), "top": _rate([f[1] for f in flags]),
                             "bottom": _rate([f[2] for f in flags]), "ties": int(sum(f[3] for f in flags))}
        pos = [per_map[m]["passed"] for m in POSITIVE if m in per_map]
        neg = [per_map[m]["passed"] for m in NEGATIVE if m in per_map]
        sens_k, sens_n = sum(x["k"] for x in pos), sum(x["n"] for x in pos)
        spec_n = sum(x["n"] for x in neg)
        spec_k = spec_n - sum(x["k"] for x in neg)
        sens = _rate([True] * sens_k + [False] * (sens_n - sens_k))
        spec = _rate([True] * spec_k + [False] * (spec_n - spec_k))
        spec["ci_maps"] = spec.pop("ci")
        spec["ci"] = bootstrap_by_composite(list(per_comp.values()), seed)
        spec["n_composites"] = len(per_comp)
        j = None if sens["rate"] is None or spec["rate"] is None else sens["rate"] + spec["rate"] - 1
        by_neg = {}
        for m in NEGATIVE:  # the negatives this construction has (no mirror of a nose)
            if m in per_map and per_map[m]["passed"]["n"]:
                r = per_map[m]["passed"]
                by_neg[m] = {"rate": None if r["rate"] is None else 1 - r["rate"], "n": r["n"], "k": r["n"] - r["k"],
                             "ci": None if r["ci"] is None else [1 - r["ci"][1], 1 - r["ci"][0]]}
        out[part] = {"sensitivity": sens, "specificity": spec, "youden": j, "ties": ties,
                     "specificity_by_negative": by_neg,
                     "apart": {m: per_map[m]["passed"] for m in APART if m in per_map},
                     "sensitivity_by_region": {g: _rate(v) for g, v in sorted(regions.items())}}
        if part == "all":
            out["maps"] = per_map
    return out


def truth_summary(rows: list[dict], pairs, calibration: Mapping, fconfig: Mapping, maps: Sequence[str],
                  min_effect: float, prior_map=None) -> dict:
    """Everything the benchmark reports, from its rows (``calibration``: tau_high, tau_low,
    epsilon; ``fconfig``: the run's test, whose fill, target and criterion with q matched to the
    truth are the default configuration; ``prior_map``: the prior, for its left-right asymmetry)."""
    comps, kept = kept_composites(rows, pairs, min_effect)
    errors = [r for r in rows if r["verdict"] == "error"]
    seed = int(fconfig.get("seed", 0))
    half = split_halves(kept, seed)
    dist, locs = _distances(rows, set(kept))
    run_delta = float(fconfig.get("delta") or 0.0)
    cal_deltas = {crit: calibrated_deltas(dist, half, comps, crit) for crit in COMPARED}
    table = []
    for fill, q, target in configs():
        cfg = config_key(fill, q, target)
        for label, crit, dname in criteria_of(("run", "calibrated")):
            d = None if dname is None else (run_delta if dname == "run" else cal_deltas[crit][cfg])
            entry = {"fill": fill, "q": q, "q_label": q_label(q), "target": target, "criterion": label, "delta": d,
                     **judge_config(dist, cfg, crit, d, calibration, maps, comps, half, seed)}
            entry["separability"] = separability(dist, cfg, crit)  # the same excesses whatever delta
            table.append(entry)
    dkey = (fconfig["fill"], None, fconfig["target"], fconfig["criterion"])
    ranked = sorted((e for e in table if e["selection"]["youden"] is not None),
                    key=lambda e: (-e["selection"]["youden"], (e["fill"], e["q"], e["target"], e["criterion"]) != dkey,
                                   e["target"] != fconfig["target"], e["q"] is not None,
                                   FILLS_STUDIED.index(e["fill"])))
    default = next((e for e in table if (e["fill"], e["q"], e["target"], e["criterion"]) == dkey), None)
    best = ranked[0] if ranked else None

    def headline(e):
        if e is None:
            return None
        c = e["confirmation"]
        return {"configuration": {k: e[k] for k in ("fill", "q_label", "target", "criterion", "delta")},
                "sensitivity": c["sensitivity"]["rate"], "sensitivity_ci": c["sensitivity"]["ci"],
                "specificity": c["specificity"]["rate"], "specificity_ci": c["specificity"]["ci"],
                "specificity_ci_maps": c["specificity"]["ci_maps"],
                "n": c["sensitivity"]["n"], "n_negative_maps": c["specificity"]["n"], "ties": c["ties"],
                "specificity_by_negative": c["specificity_by_negative"], "apart": c["apart"],
                "sensitivity_by_region": c["sensitivity_by_region"]}

    kept_comps = [comps[p] for p in kept]
    strength = strength_of(comps, kept_comps, min_effect)
    run_cfg = config_key(fconfig["fill"], None, fconfig["target"])
    loc_table = []
    for name in maps:
        ls = locs.get((run_cfg, name), [])

        def mean(k):
            v = [x[k] for x in ls if x.get(k) is not None]
            return float(np.mean(v)) if v else None
        fr = default["maps"].get(name) if default else None
        loc_table.append({"map": name, "kind": _kind(name), "n": len(ls), "rank_share": mean("rank_share"),
                          "top_share": mean("top_share"), "pointing": mean("pointing"), "auc": mean("auc"),
                          "passed": fr and fr["passed"], "top": fr and fr["top"], "bottom": fr and fr["bottom"]})
    conf = headline(best)
    return {"configurations": table,
            "best": best and {k: best[k] for k in ("fill", "q", "q_label", "target", "criterion", "delta")},
            "best_confirmation": best and best["confirmation"],
            "confirmation": conf, "default_confirmation": headline(default),
            "default": {**{k: fconfig[k] for k in ("fill", "target", "criterion")}, "q": None, "q_label": "truth"},
            "sensitivity": default["all"]["sensitivity"]["rate"] if default else None,
            "specificity": default["all"]["specificity"]["rate"] if default else None,
            "default_rates": default and default["all"],
            "specificity_by_negative": conf and conf["specificity_by_negative"],
            "prior_share_in_truth": _mean(kept_comps, "prior_share_in_truth"),
            "prior_share_matched": _mean(kept_comps, "prior_share_matched"),
            "prior_by_region": prior_by_region(kept_comps), "prior_asymmetry": asymmetry(prior_map, fconfig),
            "split": {"seed": seed, "rule": "seeded permutation of the kept composites; first half selects",
                      "n_selection": sum(v == "selection" for v in half.values()),
                      "n_confirmation": sum(v == "confirmation" for v in half.values())},
            "calibrated_deltas": cal_deltas, "ties": {"rule": "an excess within 8 x float32 angle rounding of "
                                                               "delta is a tie, falsified"},
            "strength": strength, "localisation": loc_table, "maps": list(maps),
            "positive": list(POSITIVE), "negative": list(NEGATIVE), "apart": dict(APART),
            "n_errors": len({r["pair"] for r in errors}),
            "error_examples": sorted({r["error"] for r in errors if r.get("error")})[:3]}


def _mean(items, key):
    v = [x[key] for x in items if x.get(key) is not None]
    return float(np.mean(v)) if v else None


def prior_by_region(comps: Sequence[Mapping]) -> dict:
    """Per region of the construction: composites, the prior's top-q share in the truth, the prior
    mass of the truth and of its mirror, the median effect."""
    out: dict = {}
    for c in comps:
        out.setdefault(c.get("region", "all"), []).append(c)
    return {g: {"n": len(v), "prior_share_in_truth": _mean(v, "prior_share_in_truth"),
                "prior_share_matched": _mean(v, "prior_share_matched"), "truth_mass": _mean(v, "truth_mass"),
                "mirror_mass": _mean(v, "mirror_mass"), "matched_mass": _mean(v, "matched_mass"),
                "effect_median": float(np.median([x["effect"] for x in v]))} for g, v in sorted(out.items())}


def asymmetry(prior_map, fconfig: Mapping) -> dict | None:
    """The prior's left-right asymmetry: its summed map on the image's left and right halves and
    (left - right) / (left + right); and the mean |p - mirror(p)| over the map, relative to its
    mean."""
    if prior_map is None:
        return None
    p = np.asarray(prior_map, dtype=np.float64)
    w = p.shape[1]
    left, right = float(p[:, : w // 2].sum()), float(p[:, w - w // 2 :].sum())
    return {"left": left, "right": right, "index": (left - right) / (left + right) if left + right else None,
            "mean_abs_mirror_difference": float(np.abs(p - p[:, ::-1]).mean() / (p.mean() or 1.0))}


def strength_of(comps: Mapping, kept: Sequence[Mapping], min_effect: float) -> dict:
    effects = np.array([c["effect"] for c in comps.values()], dtype=float)
    strength = {"n": int(effects.size), "n_kept": len(kept), "min_effect": min_effect}
    if effects.size:
        q25, q50, q75 = np.percentile(effects, [25, 50, 75])
        cos_gain = np.array([c["cos_after"] - c["cos_before"] for c in comps.values()])
        strength.update(effect_median=float(q50), effect_q25=float(q25), effect_q75=float(q75),
                        effect_min=float(effects.min()), share_closer=float((effects > 0).mean()),
                        cos_gain_median=float(np.median(cos_gain)),
                        truth_area_mean=float(np.mean([c["truth_area"] for c in comps.values()])),
                        core_area_mean=float(np.mean([c["core_area"] for c in comps.values()])))
    return strength


def _kind(name: str) -> str:
    if name in POSITIVE:
        return "known positive"
    if name in NEGATIVE:
        return "known negative"
    if name in APART:
        return "apart: " + ("tautology" if name == "centre" else "shortcut check")
    return "method"


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
    what = "" if s["construction"] in ("lateral", "parts") else f", parts {s['parts']}"
    lines = [f"known truth on {summary['model']}: {s['construction']} composites{what}; "
             f"{st['n']} composites, {st['n_kept']} kept (effect >= {st['min_effect']:g} rad)"]
    if st.get("effect_median") is not None:
        lines.append(f"strength of the truth: the composite moves the pair closer by a median "
                     f"{st['effect_median']:.4f} rad [IQR {st['effect_q25']:.4f}, {st['effect_q75']:.4f}] "
                     f"(cos +{st['cos_gain_median']:.4f}); closer in {100 * st['share_closer']:.0f}%; "
                     f"truth covers {100 * st['truth_area_mean']:.1f}% of the image (core "
                     f"{100 * st['core_area_mean']:.1f}%)")
    d = s["default"]
    lines.append(f"default configuration (fill {d['fill']}, q {d['q_label']}, target {d['target']}, {d['criterion']}): "
                 f"sensitivity {fmt_num(s['sensitivity'], 3) or 'n/a'}, specificity "
                 f"{fmt_num(s['specificity'], 3) or 'n/a'}")
    if s.get("best"):
        b, conf = s["best"], s["best_confirmation"]
        lines.append(f"highest Youden's J on the selection half: fill {b['fill']}, q {b['q_label']}, target "
                     f"{b['target']}, {b['criterion']}; on the confirmation half sensitivity "
                     f"{pct(conf['sensitivity'])}%, specificity {pct(conf['specificity'])}%")
    c = s.get("confirmation")
    if c:
        ci = lambda x: "" if not x else f" [{100 * x[0]:.0f}, {100 * x[1]:.0f}]"  # noqa: E731
        neg = ", ".join(f"{m} {pct(v)}%" for m, v in c["specificity_by_negative"].items())
        lines.append(f"confirmation half ({c['n']} composites): sensitivity {pct({'rate': c['sensitivity']})}%"
                     f"{ci(c['sensitivity_ci'])}, specificity {pct({'rate': c['specificity']})}%"
                     f"{ci(c['specificity_ci'])} (bootstrap by composite); falsified: {neg}; ties {c['ties']}")
    if s.get("prior_share_in_truth") is not None:
        asym = (s.get("prior_asymmetry") or {}).get("index")
        lines.append(f"the prior's top-q share inside the truth: {s['prior_share_in_truth']:.2f}"
                     + ("" if asym is None else f"; its left-right asymmetry (L - R) / (L + R): {asym:+.3f}"))
    lines += ["", "| map | kind | n | rank share | top-q share | pointing | AUC | passed % | top holds % | "
              "bottom holds % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in s["localisation"]:
        lines.append(f"| {e['map']} | {e['kind']} | {e['n']} | {fmt_num(e['rank_share'], 2) or '-'} | "
                     f"{fmt_num(e['top_share'], 2) or '-'} | {fmt_num(e['pointing'], 2) or '-'} | "
                     f"{fmt_num(e['auc'], 2) or '-'} | {pct(e['passed'])} | {pct(e['top'])} | {pct(e['bottom'])} |")
    lines += ["", "| fill | q | target | criterion | sensitivity % | specificity % | J (sel.) | J (conf.) | "
              "AUC | oracle sens. % at spec. 90 | " + " | ".join(f"{m} %" for m in s["maps"]) + " |",
              "|" + "---|" * (10 + len(s["maps"]))]
    for e in s["configurations"]:
        a, sep = e["all"], e.get("separability") or {}
        cells = [e["fill"], e['q_label'], e["target"], e["criterion"], pct(a["sensitivity"]),
                 pct(a["specificity"]), fmt_num(e["selection"]["youden"], 2) or "-",
                 fmt_num(e["confirmation"]["youden"], 2) or "-", fmt_num(sep.get("auc"), 2) or "-",
                 pct({"rate": sep.get("sensitivity")})]
        cells += [pct(e["maps"][m]["passed"]) for m in s["maps"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Passed % per map: share of composites whose map passes. Sensitivity: truth maps passed; "
                 "specificity: " + ", ".join(s["negative"]) + " falsified. AUC: the chance a truth map's excess "
                 "beats a negative's (0.5: none); oracle: the best sensitivity any delta gives at specificity >= 90% "
                 "on the same composites (an optimistic bound, not a result).")
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
               f"under the run's configuration (fill {d['fill']}, $q$ = {d['q_label']}, target {d['target']}, "
               f"{d['criterion']}): passed, and each half of the verdict apart.")
    out = [Table(name="table_known_truth", frame=frame(header, rows), label="tab:known-truth", caption=caption,
                 html_id="table-known-truth", numeric=range(2, len(header)), size=r"\footnotesize")]
    rows = []
    for e in s["configurations"]:
        a = e["all"]
        rows.append([f"{e['fill']}, q {e['q_label']}, {e['target']}, {e['criterion']}", pct(a["sensitivity"]),
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

