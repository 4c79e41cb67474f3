"""Experiment 6.6: biometric vs standard attribution methods, identity preservation of the
counterfactuals, and fairness by demographic group.

Rows: 6.1's (``falsify run 6.6`` computes whichever are missing), and under the experiment key
``6.6`` one row per (method, pair): the test's own counterfactuals of that map rebuilt (the same
regions and seeded fills as 6.1's test; the distances are compared with the 6.1 row's, so a row
says whether it reproduced the test), with per region the SSIM between x and each counterfactual
x' (scikit-image) and whether the verification decision on the pair survives: cos(f(x'), f(B))
on the same side of the run's threshold as cos(f(x), f(B)).

Analyses, each on rows (synthetic rows in the tests):

- :func:`family_comparison`: the paired families of ``falsify.choices.METHOD_FAMILIES`` (standard
  vs biometric) on the pairs both tested: FR of each, the reduction, McNemar's exact p, Cohen's h,
  Holm across families (Table 6.6).
- :func:`identity_summary`: mean SSIM and the decision's survival per method and region.
- :func:`group_fairness`: FR per group of image A (gender per image, race per person; labels
  from ``--labels``), the gap max - min, the disparate-impact ratio min/max with a seeded
  stratified bootstrap CI, and Fisher's exact test (Table 6.7, figure).
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np

from ..choices import METHOD_FAMILIES, is_control
from ..report.tables import fmt_num, fmt_p, fmt_pct, run_description
from .base import Experiment
from .rows import ChunkRows, RowKind

KEY = "experiment_6_6"
ROWS_OF = "6.6"
#: bootstrap resamples of the disparate-impact ratio
N_BOOT = 2000
#: Monte Carlo tables of Fisher's test on more than two groups (scipy's R x C test)
N_FISHER_MC = 9999
ALPHA = 0.05
#: distances of a rebuilt counterfactual within this of the 6.1 row's count as reproduced (radians)
REPRODUCE_TOL = 1e-3
ATTRIBUTES = ("gender", "race")
NO_LABELS = ("fairness by demographic group needs labels of the images: rerun with --labels DIR "
             "(e.g. ../shared/data/lfw-labels)")


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def families_in(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The families of :data:`METHOD_FAMILIES` both of whose methods are in ``methods``."""
    return [(a, b) for a, b in METHOD_FAMILIES if a in methods and b in methods]


# ---------------------------------------------------------------------------------------------
# analyses


def family_comparison(verdicts: Mapping[str, Mapping[str, str]], families: Sequence[tuple[str, str]],
                      alpha: float = ALPHA) -> list[dict]:
    """Each family (standard, biometric) on the pairs where both methods have a verdict that is
    not an error: McNemar's exact test on the pairs both tested (untestable ones left out and
    counted), FR of each there, the reduction FR_standard - FR_biometric (and relative to
    FR_standard), Cohen's h(FR_standard, FR_biometric) (positive: the biometric method is
    falsified less often); Holm's correction across the families that have a p-value."""
    from ..falsification import stats

    out = []
    for std, bio in families:
        a, b = verdicts.get(std, {}), verdicts.get(bio, {})
        common = sorted(p for p in set(a) & set(b) if a[p] != "error" and b[p] != "error")
        entry = {"standard": std, "biometric": bio, "n_common": len(common), "n_pairs": 0, "n_excluded": len(common),
                 "fr_standard": None, "fr_biometric": None, "reduction": None, "relative_reduction": None,
                 "cohens_h": None, "p": None, "p_holm": None, "reject": None, "table": None}
        try:
            c = stats.mcnemar_paired([a[p] for p in common], [b[p] for p in common], std, bio)
        except ValueError:  # no pair testable by both
            out.append(entry)
            continue
        red = c.rate_a - c.rate_b
        entry.update(n_pairs=c.n_pairs, n_excluded=c.n_excluded, fr_standard=c.rate_a, fr_biometric=c.rate_b,
                     reduction=red, relative_reduction=red / c.rate_a if c.rate_a > 0 else None,
                     cohens_h=_f(c.cohens_h), p=c.pvalue, table=[list(r) for r in c.table])
        out.append(entry)
    tested = [e for e in out if e["p"] is not None]
    if tested:
        h = stats.holm([e["p"] for e in tested], alpha)
        for e, p, r in zip(tested, h.pvalues_adjusted, h.reject):
            e["p_holm"], e["reject"] = p, r
    return out


def identity_summary(details: Sequence[Mapping], order: Sequence[str] = ()) -> list[dict]:
    """Per method (those of ``order`` first, in its order, then in first-seen order) and region: the mean and minimum over pairs of the mean
    SSIM(x, x') of the pair's counterfactuals; the decision's survival: pairs on which it
    survives every counterfactual of the region (with a Wilson 95% CI) and the mean share of
    counterfactuals it survives; and how many rows reproduced the test's distances."""
    from ..falsification.stats import wilson

    seen = list(dict.fromkeys(d["method"] for d in details))
    methods = [m for m in order if m in seen] + [m for m in seen if m not in order]
    out = []
    for m in methods:
        ds = [d for d in details if d["method"] == m]
        entry = {"method": m, "control": is_control(m), "n": len(ds),
                 "n_reproduced": sum(bool(d.get("reproduced")) for d in ds)}
        for region in ("high", "low"):
            ssim = np.array([d[f"ssim_{region}"] for d in ds], dtype=float)
            shares = [d[f"survive_{region}"] for d in ds if d.get(f"survive_{region}") is not None]
            n_all = sum(s == 1.0 for s in shares)
            lo, hi = wilson(n_all, len(shares))
            entry[region] = {"ssim_mean": _f(ssim.mean()) if ssim.size else None,
                             "ssim_min": _f(ssim.min()) if ssim.size else None,
                             "n_decided": len(shares), "n_survives": n_all,
                             "survives": n_all / len(shares) if shares else None, "ci_low": lo, "ci_high": hi,
                             "survive_share_mean": _f(np.mean(shares)) if shares else None}
        out.append(entry)
    return out


def fisher_test(table: np.ndarray, seed: int = 0) -> tuple[float | None, str | None]:
    """Fisher's exact test of independence of group (rows) and verdict (falsified, passed):
    scipy's exact test for two groups, scipy's R x C test by Monte Carlo (seeded) for more.
    (None, None) with fewer than two groups; p = 1 when every verdict is the same."""
    from scipy.stats import MonteCarloMethod, fisher_exact

    table = np.asarray(table, dtype=np.int64)
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2:
        return None, None
    if (table.sum(axis=0) == 0).any():
        return 1.0, "exact" if table.shape[0] == 2 else "no variation"
    if table.shape[0] == 2:
        return float(fisher_exact(table).pvalue), "exact"
    res = fisher_exact(table, method=MonteCarloMethod(n_resamples=N_FISHER_MC, rng=np.random.default_rng(seed)))
    return float(res.pvalue), f"Monte Carlo ({N_FISHER_MC} tables)"


def disparate_impact(groups: Mapping[str, Sequence[str]], seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """FR per group (passed/falsified verdicts; untestable ones counted apart) with its Wilson CI;
    the gap max FR - min FR; the disparate-impact ratio DIR = min FR / max FR over the groups with a
    testable pair (1: equal rates; undefined when no group has a falsified map) with a 95%
    percentile CI from a seeded bootstrap that resamples pairs within each group (resamples in
    which no group has a falsified map are dropped and counted); Fisher's test (:func:`fisher_test`)."""
    from ..falsification import stats

    rows, ys = [], {}
    for g, vs in groups.items():
        r = stats.falsification_rate([v for v in vs if v in ("passed", "falsified", "untestable")])
        rows.append({"group": g, "n": r.n_testable, "n_falsified": r.n_falsified, "n_untestable": r.n_untestable,
                     "fr": _f(r.rate), "ci_low": _f(r.ci_low), "ci_high": _f(r.ci_high)})
        if r.n_testable:
            ys[g] = np.array([v == "falsified" for v in vs if v in ("passed", "falsified")], dtype=float)
    out = {"groups": rows, "gap": None, "gap_groups": None, "dir": None, "dir_ci_low": None, "dir_ci_high": None,
           "n_boot": n_boot, "n_boot_used": 0, "fisher_p": None, "fisher_method": None}
    if len(ys) < 2:
        return out
    fr = {g: float(y.mean()) for g, y in ys.items()}
    hi_g, lo_g = max(fr, key=fr.get), min(fr, key=fr.get)
    out["gap"], out["gap_groups"] = fr[hi_g] - fr[lo_g], [hi_g, lo_g]
    if fr[hi_g] > 0:
        out["dir"] = fr[lo_g] / fr[hi_g]
    rng = np.random.default_rng(seed)
    boot = np.stack([y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1) for y in ys.values()], axis=1)
    mx = boot.max(axis=1)
    ok = mx > 0
    out["n_boot_used"] = int(ok.sum())
    if ok.any():
        ratios = boot.min(axis=1)[ok] / mx[ok]
        out["dir_ci_low"], out["dir_ci_high"] = (float(v) for v in np.quantile(ratios, [0.025, 0.975]))
    table = np.array([[int(y.sum()), int(y.size - y.sum())] for y in ys.values()])
    out["fisher_p"], out["fisher_method"] = fisher_test(table, seed)
    return out


def group_fairness(verdicts: Mapping[str, Mapping[str, str]], group_of: Mapping[str, str | None],
                   seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """For one attribute: per method, :func:`disparate_impact` over the groups of ``group_of``
    (pair -> group of its image A, None when unlabelled); error rows are left out."""
    methods = []
    for m, vs in verdicts.items():
        by: dict[str, list[str]] = {}
        unlabelled = 0
        for pair, v in vs.items():
            if v == "error":
                continue
            g = group_of.get(pair)
            if g is None:
                unlabelled += 1
            else:
                by.setdefault(g, []).append(v)
        methods.append({"method": m, "control": is_control(m), "n_unlabelled": unlabelled,
                        **disparate_impact(dict(sorted(by.items())), seed, n_boot)})
    return {"methods": methods, "groups": sorted({g for g in group_of.values() if g is not None})}


# ---------------------------------------------------------------------------------------------
# the 6.6 rows: the test's counterfactuals rebuilt, SSIM and the decision


def _ssim(x, cfs) -> list[float]:
    from skimage.metrics import structural_similarity

    a = x.permute(1, 2, 0).double().numpy()
    return [float(structural_similarity(a, c.permute(1, 2, 0).double().numpy(), data_range=1.0, channel_axis=2))
            for c in cfs]


def measure(model, image, f_x, ref, regions, pair_index: int, fc, threshold, cos_x: float) -> dict:
    """One map's counterfactuals (as the test builds them), their SSIM to x, their embeddings'
    cosine with f(B) and distances from f(x), per region."""
    from ..falsification.stages import counterfactuals_of, distances, embed
    from ..geometry import cosine_similarity
    from ..models.base import model_device

    k = fc.k_effective
    device = model_device(model)
    cfs = counterfactuals_of(model, image, regions, f_x, pair_index, fc).stacked()
    e = embed(model, cfs, fc.batch_size, device).double()
    d = distances(f_x.double(), e, ref, fc.target)
    cos = cosine_similarity(e, ref.double().unsqueeze(0))
    out = {"k": k, "cos": cos_x, "accepted": None if threshold is None else bool(cos_x >= threshold)}
    for region, sl in (("high", slice(0, k)), ("low", slice(k, 2 * k))):
        ssim = _ssim(image, cfs[sl])
        out[f"ssim_{region}"] = float(np.mean(ssim))
        out[f"ssim_{region}_min"] = float(np.min(ssim))
        out[f"cos_{region}"] = float(cos[sl].mean())
        out[f"d_{region}"] = float(d[sl].mean())
        out[f"survive_{region}"] = (None if threshold is None else
                                    float(np.mean([(float(c) >= threshold) == (cos_x >= threshold) for c in cos[sl]])))
    return out


class Rows66(RowKind):
    """6.6's rows: one map's counterfactuals rebuilt per (method, pair) that 6.1 tested; a unit is
    a chunk of pairs and one method. ``tested``: 6.1's verdict and distances of each (method,
    pair id), fixed before the first unit."""

    rows_of = ROWS_OF

    def __init__(self, ctx, tested: dict) -> None:
        super().__init__(ctx)
        self.tested = tested

    def keys(self) -> list[str]:
        return list(self.ctx.config.methods)

    def groups(self, keys):
        return [[k] for k in keys]

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        return (f"experiment 6.6: the counterfactuals of {n_todo} pairs x {n_keys} methods rebuilt "
                "(SSIM, the decision) ...")

    def computer(self, model, explainers=None, random_model=None):
        return IdentityRows(self, model, explainers, random_model)


class IdentityRows(ChunkRows):
    """Computes 6.6's units (:class:`Rows66`)."""

    def compute(self, pairs, images, refs, keys, done):
        from ..falsification.stages import embed, regions_for
        from ..geometry import cosine_similarity
        from ..models.base import model_device

        kind, model, fc = self.kind, self.model, self.ctx.fconfig
        device = model_device(model)
        f_x = self._images.get("f_x", [p.id for p in pairs],
                               lambda: embed(model, images, self.ctx.config.batch_size, device))
        cos_x = cosine_similarity(f_x, refs).tolist()
        rows = []

        def untested(m, p):
            """The row of a map that 6.1 could not test (None: it did)."""
            t = kind.tested.get((m, p.id))
            if t is not None and t["verdict"] not in ("error", "untestable"):
                return None
            untestable = t is not None and t["verdict"] == "untestable"
            return kind.error_row(m, p, "the 6.1 test of this map " + ("found it untestable" if untestable else
                                  "has no result"), verdict="untestable" if untestable else "error")
        for m in keys:
            idx, maps, new = self.pending_maps(m, pairs, images, refs, done, lambda i, p: untested(m, p))
            rows += new
            if maps is None:
                continue
            for j, i in enumerate(idx):
                p, t = pairs[i], kind.tested[(m, pairs[i].id)]
                reg = regions_for(images[i], maps[j], fc, p.index)
                if not reg.testable:
                    rows.append(kind.error_row(m, p, "the rebuilt map is untestable but the 6.1 test's was not"))
                    continue
                d = measure(model, images[i], f_x[i], refs[i], reg, p.index, fc, self.ctx.threshold, cos_x[i])
                d["reproduced"] = bool(abs(d["d_high"] - t["d_high"]) <= REPRODUCE_TOL
                                       and abs(d["d_low"] - t["d_low"]) <= REPRODUCE_TOL)
                rows.append({**kind.base_row(m, p), "verdict": "measured", "cosine": cos_x[i], "d_high": d["d_high"],
                             "d_low": d["d_low"], "k": d["k"], "detail": {"method": m, **d}})
        yield rows, []


def row_kind(session, store) -> Rows66:
    """6.6's row kind for a run (``session.RunSession``), with 6.1's tests of its maps from ``store``."""
    methods = list(session.config.methods)
    tested = {(r["method"], r["pair"]): {"verdict": r["verdict"], "d_high": r["d_high"], "d_low": r["d_low"]}
              for r in store.rows("6.1", session.model.name, methods)}
    return Rows66(session.context(ROWS_OF), tested)


# ---------------------------------------------------------------------------------------------
# tables and figures


def _section(summary: Mapping) -> Mapping | None:
    s = summary.get(KEY)
    return s if isinstance(s, Mapping) else None


def _pct(x) -> str | None:
    return fmt_pct(x)


def tables_6_6(summary: Mapping) -> list:
    from ..report.render import Table, frame

    s = _section(summary)
    if s is None:
        return []
    out = []
    desc = run_description(summary)
    rows = []
    for e in s["families"]:
        rows.append([f"{e['standard']} vs {e['biometric']}", str(e["n_pairs"]), _pct(e["fr_standard"]),
                     _pct(e["fr_biometric"]), None if e["reduction"] is None else f"{100 * e['reduction']:+.1f}",
                     fmt_num(e["cohens_h"], 2), fmt_p(e["p"]), fmt_p(e["p_holm"])])
    header = ["Family", "n", "FR standard %", "FR biometric %", "reduction (points)", "Cohen's h", "McNemar p",
              "Holm p"]
    caption = ("Experiment 6.6: biometric vs standard methods" + (f" ({desc})" if desc else "")
               + r". On the pairs both methods tested ($n$; pairs either found untestable are left out): the FR of"
               r" each, the reduction FR$_\mathrm{standard}$ - FR$_\mathrm{biometric}$, Cohen's $h$ (positive: the"
               r" biometric method is falsified less), McNemar's exact $p$ and Holm's $p$ across the families.")
    out.append(Table(name="table_6_6", frame=frame(header, rows), label="tab:exp-6-6", caption=caption,
                     html_id="table-6-6", numeric=range(1, len(header)), size=r"\footnotesize"))
    ident = s.get("identity") or {}
    if ident.get("methods"):
        rows = []
        for e in ident["methods"]:
            cells = [e["method"], str(e["n"])]
            for r in ("high", "low"):
                b = e[r]
                cells.append(fmt_num(b["ssim_mean"], 3))
                cells.append(None if b["survives"] is None else
                             f"{fmt_pct(b['survives'])} [{fmt_pct(b['ci_low'])}, {fmt_pct(b['ci_high'])}]")
            cells.append(f"{e['n_reproduced']}/{e['n']}")
            rows.append(cells)
        header = ["Method", "n", "SSIM S_high", "decision kept S_high %", "SSIM S_low", "decision kept S_low %",
                  "reproduced"]
        thr = ident.get("threshold")
        caption = (r"Experiment 6.6: identity preservation of the counterfactuals. Per region, the mean SSIM between"
                   r" $x$ and its counterfactuals $x'$ and the share of pairs whose verification decision"
                   + (rf" (cosine threshold {thr:.4f})" if thr is not None else "")
                   + r" survives every counterfactual of the region, with its Wilson 95\% CI. Reproduced: rows whose"
                   r" rebuilt counterfactuals give the 6.1 test's $d_\mathrm{high}$ and $d_\mathrm{low}$.")
        out.append(Table(name="table_6_6_identity", frame=frame(header, rows), label="tab:exp-6-6-identity",
                         caption=caption, html_id="table-6-6-identity", numeric=range(1, len(header)),
                         size=r"\footnotesize"))
    fair = s.get("fairness")
    if fair:
        rows, groups_at = [], {}
        for attribute in ATTRIBUTES:
            a = fair["attributes"].get(attribute)
            if not a or not a["groups"]:
                continue
            groups_at[len(rows)] = f"{attribute} of image A ({a['n_labelled']} of {fair['n_pairs']} pairs labelled)"
            for e in a["methods"]:
                fr = "; ".join(f"{g['group']} {fmt_pct(g['fr']) or 'n/a'} (n={g['n']})" for g in e["groups"])
                dir_ = (None if e["dir"] is None else fmt_num(e["dir"], 2)
                        + ("" if e["dir_ci_low"] is None else f" [{e['dir_ci_low']:.2f}, {e['dir_ci_high']:.2f}]"))
                rows.append([e["method"], fr, None if e["gap"] is None else f"{100 * e['gap']:.1f}", dir_,
                             fmt_p(e["fisher_p"])])
        header = ["Method", "FR % by group (n testable)", "gap (points)", "DIR [95% CI]", "Fisher p"]
        caption = (r"Experiment 6.7: falsification rate by demographic group of the pair's image A" +
                   (f" ({desc})" if desc else "") + r". Gap: max - min FR over the groups; DIR: min FR / max FR"
                   rf" with a 95\% CI from {fair['n_boot']} seeded bootstrap resamples of the pairs within each group;"
                   r" Fisher's exact test of group against verdict (Monte Carlo for more than two groups).")
        out.append(Table(name="table_6_7", frame=frame(header, rows), label="tab:exp-6-7", caption=caption,
                         tex_groups=groups_at, html_id="table-6-7", numeric=(2, 3, 4), size=r"\footnotesize"))
    return out


def figure_fairness(summary: Mapping):
    """FR per group of image A with Wilson whiskers, one panel per attribute, one colour per method."""
    from matplotlib.figure import Figure

    from ..report.figures import rate_bars

    fair = _section(summary)["fairness"]
    attrs = [a for a in ATTRIBUTES if fair["attributes"].get(a) and fair["attributes"][a]["groups"]]
    fig = Figure(figsize=(4.6 * len(attrs) + 1.6, 3.8), layout="constrained")
    axes = fig.subplots(1, len(attrs), squeeze=False)[0]
    for ax, attribute in zip(axes, attrs):
        a = fair["attributes"][attribute]
        groups = a["groups"]
        series = []
        for e in a["methods"]:
            by = {g["group"]: g for g in e["groups"]}
            series.append((e["method"], e["control"], [by.get(g) for g in groups]))
        rate_bars(ax, series, [f"{g}\n(n={a['coverage'].get(g, 0)})" for g in groups])
        ax.set_title(f"by {attribute} of image A", fontsize=10)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


class Experiment66(Experiment):
    name = "6.6"
    title = "Experiment 6.6: biometric vs standard methods, identity preservation and fairness"
    anchor = "exp-6-6"
    nav = "6.6 biometric, fairness"
    key = KEY
    template = "exp_6_6.html.j2"
    figures = {
        "fig_6_7_fairness": ("Falsification rate by the group of each pair's image A (gender per image, race per "
                             "person where labelled), per method, with Wilson 95% whiskers; n: pairs of the group "
                             "in the run."),
    }

    def default_methods(self) -> list[str]:
        """The paired families (:data:`METHOD_FAMILIES`), both methods of each."""
        return [m for f in METHOD_FAMILIES for m in f]

    def check(self, config) -> None:
        if not families_in(config.methods):
            raise ValueError("experiment 6.6 compares " + " and ".join(f"{a} with {b}" for a, b in METHOD_FAMILIES)
                             + ": give both methods of at least one of these in --methods (or leave --methods out)")

    def extend(self, session, store, summary: dict) -> None:
        session.compute_rows(store, row_kind(session, store))
        c = session.config
        ids = {p.id for p in session.pairs}
        rows61 = store.rows("6.1", session.model.name, c.row_methods(), pairs=ids)
        verdicts = {m: {r["pair"]: r["verdict"] for r in rows61 if r["method"] == m} for m in c.row_methods()}
        rows = store.rows(ROWS_OF, session.model.name, c.methods, pairs=ids)
        details = [json.loads(r["detail"]) for r in rows if r["verdict"] == "measured"]
        section = {
            "families": family_comparison(verdicts, families_in(c.methods)),
            "missing_families": [list(f) for f in METHOD_FAMILIES if f not in families_in(c.methods)],
            "alpha": ALPHA,
            "identity": {"threshold": session.threshold, "methods": identity_summary(details, c.methods),
                         "n_untestable": sum(r["verdict"] == "untestable" for r in rows),
                         "n_errors": sum(r["verdict"] == "error" for r in rows)},
            "fairness": None, "fairness_note": NO_LABELS,
        }
        labels = session.labels
        if labels is not None:
            cov = labels.coverage(session.pairs)
            attributes = {}
            for attribute in ATTRIBUTES:
                if attribute == "race" and not labels.has_race:
                    continue
                group_of = {p.id: labels.group_of(attribute, p) for p in session.pairs}
                g = group_fairness(verdicts, group_of, c.seed)
                g.update(n_labelled=cov[attribute]["labelled"], coverage=cov[attribute]["groups"])
                attributes[attribute] = g
            section["fairness"] = {"labels": labels.source, "group_by": "image A", "n_pairs": len(session.pairs),
                                   "stratify": c.stratify, "n_boot": N_BOOT, "seed": c.seed, "attributes": attributes,
                                   "conflicts": len(labels.conflicts)}
            section["fairness_note"] = None
        summary[KEY] = section

    def tables(self, summary: Mapping) -> list:
        return tables_6_6(summary)

    def drawings(self, summary: Mapping, **kw) -> dict:
        s = _section(summary)
        if s is None or not s.get("fairness") or not any(a["groups"] for a in s["fairness"]["attributes"].values()):
            return {}
        return {"fig_6_7_fairness": lambda: figure_fairness(summary)}

    def context(self, summary: Mapping) -> dict:
        return {"section": _section(summary)}

    def text(self, summary: Mapping) -> str:
        s = summary[KEY]
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        lines = ["experiment 6.6: biometric vs standard methods (pairs both tested)"]
        for e in s["families"]:
            lines.append(f"  {e['standard']} {pct(e['fr_standard'])} vs {e['biometric']} {pct(e['fr_biometric'])} "
                         f"(n={e['n_pairs']}): reduction "
                         + ("n/a" if e["reduction"] is None else f"{100 * e['reduction']:+.1f} points")
                         + f", Cohen's h {fmt_num(e['cohens_h'], 2) or 'n/a'}, McNemar p {fmt_p(e['p']) or 'n/a'}, "
                         f"Holm p {fmt_p(e['p_holm']) or 'n/a'}")
        ident = s["identity"]
        lines.append("identity preservation: mean SSIM(x, x') and pairs whose decision survives every counterfactual"
                     + ("" if ident["threshold"] is not None else " (no decision threshold: survival not measured)"))
        for e in ident["methods"]:
            cells = "  ".join(f"S_{r} SSIM {fmt_num(e[r]['ssim_mean'], 3)} kept {pct(e[r]['survives'])}"
                              for r in ("high", "low"))
            lines.append(f"  {e['method']:18s} {cells}  (reproduced {e['n_reproduced']}/{e['n']})")
        fair = s.get("fairness")
        if not fair:
            lines.append(s["fairness_note"])
            return "\n".join(lines)
        for attribute, a in fair["attributes"].items():
            cov = ", ".join(f"{g} {n}" for g, n in a["coverage"].items())
            lines.append(f"fairness by {attribute} of image A: {a['n_labelled']} of {fair['n_pairs']} pairs labelled"
                         + (f" ({cov})" if cov else ""))
            for e in a["methods"]:
                frs = ", ".join(f"{g['group']} {pct(g['fr'])} (n={g['n']})" for g in e["groups"])
                dir_ = "n/a" if e["dir"] is None else (
                    f"{e['dir']:.2f}" + ("" if e["dir_ci_low"] is None else
                                         f" [{e['dir_ci_low']:.2f}, {e['dir_ci_high']:.2f}]"))
                gap = "n/a" if e["gap"] is None else f"{100 * e['gap']:.1f} points"
                lines.append(f"  {e['method']:18s} {frs}; gap {gap}, DIR {dir_}, Fisher p "
                             f"{fmt_p(e['fisher_p']) or 'n/a'}")
        return "\n".join(lines)


EXPERIMENT = Experiment66()
