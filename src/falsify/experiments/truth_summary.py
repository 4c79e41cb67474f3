"""The known-truth benchmark's analysis and report (:mod:`.known_truth`): the verdicts of every
criterion from the stored distances, the rates per configuration and map, the tables and the figure."""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from ..report.labels import fit_titles, quiet
from ..report.tables import fmt_num
from .truth_rows import COMPOSITE, FILLS_STUDIED, NEGATIVE, POSITIVE, TRUTH_MAPS, WRONG_MAPS, config_key, configs

KEY = "known_truth"

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

