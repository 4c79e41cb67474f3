"""Experiment 6.5: convergence of Algorithm 1 and the sample size the falsification rate needs.

Rows: 6.1's (the sample-size analysis resamples them), and under the experiment key ``6.5`` one
row per (region, start, pair): Algorithm 1 (the optimised fill,
``falsify.falsification.counterfactuals.optimise_counterfactuals``) run on S_high and S_low of the
first real method's map of the probe face A, from K seeded starts (the same starts the optimised
fill of the test draws), with the loss curve, the steps taken, whether it converged within T =
``opt_steps`` steps and the final d_g. Analyses: :func:`convergence_summary` and
:func:`sample_size_analysis` (seeded bootstrap, binomial std, Wilson CI width, exact McNemar
power, Hoeffding's n). Tables 6.5, the convergence and sample-size figures, ``exp_6_5.html.j2``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from ..choices import CONTROLS, is_control
from ..report.tables import fmt_num, fmt_pct, run_description
from .base import Experiment
from .rows import ChunkRows, RowKind

KEY = "experiment_6_5"
ROWS_OF = "6.5"
#: sample sizes of the bootstrap (those up to the run's n, and the run's n)
SIZES: tuple[int, ...] = (10, 25, 50, 100, 200, 500, 1000, 2000, 5000)
#: bootstrap resamples per (method, n)
N_BOOT = 2000
#: FR differences between two methods whose detection the McNemar power is computed for
DIFFERENCES: tuple[float, ...] = (0.1, 0.2)
ALPHA = 0.05
#: (epsilon, delta) of Hoeffding's bound
HOEFFDING: tuple[tuple[float, float], ...] = ((0.1, 0.05), (0.05, 0.05), (0.1, 0.01), (0.05, 0.01))
#: loss curves kept in the summary for the figure
MAX_CURVES = 200


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


# ---------------------------------------------------------------------------------------------
# convergence of Algorithm 1


def convergence_method(methods: Sequence[str]) -> str | None:
    """The method whose regions Algorithm 1 is run on: the first method of the run that is not a control."""
    return next((m for m in methods if m not in CONTROLS), None)


class Rows65(RowKind):
    """6.5's rows: Algorithm 1 from each seeded start, per (``region/kJ``, pair). A unit is a
    chunk of pairs and one start J on both regions, so the starts spread over Ray workers (the
    map whose regions Algorithm 1 runs on is made once per chunk in a process)."""

    rows_of = ROWS_OF
    unit_name = "start"

    def __init__(self, ctx, method: str) -> None:
        super().__init__(ctx)
        self.method = method

    def keys(self) -> list[str]:
        return [f"{region}/k{j}" for region in ("high", "low") for j in range(self.ctx.config.K)]

    def groups(self, keys):
        starts: dict = {}
        for k in keys:
            starts.setdefault(k.split("/")[1], []).append(k)
        return list(starts.values())

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        c, fc = self.ctx.config, self.ctx.fconfig
        return (f"experiment 6.5: Algorithm 1 on {n_todo} images x 2 regions x {c.K} starts "
                f"(regions of {self.method}; at most {fc.opt_steps} steps) ...")

    def computer(self, model, explainers=None, random_model=None):
        return ConvergenceRows(self, model, explainers, random_model)


class ConvergenceRows(ChunkRows):
    """Computes 6.5's units (:class:`Rows65`)."""

    def starts(self, pairs, images, refs):
        """Per pair: its regions' masks and Algorithm 1's K starts in each (those of the test's
        optimised fill), or None for an untestable map; and f(x) of the images."""
        import torch

        from ..falsification.stages import optimised_starts, regions_for
        from ..models.base import model_device

        model, fc, c = self.model, self.ctx.fconfig, self.ctx.config
        device = model_device(model)
        maps = self.explainer(self.kind.method)(images.to(device), refs.to(device)).detach().cpu()
        with torch.inference_mode():
            f_x = model(images.to(device)).float()
        out = []
        for i, p in enumerate(pairs):
            reg = regions_for(images[i], maps[i], fc, p.index)
            if not reg.testable:
                out.append(None)
                continue
            # the starts of the test's optimised fill
            starts = optimised_starts(images[i], reg, c.K, c.seed, p.index, fc.opt_init_sigma)
            out.append({region: (mask, init) for (region, mask), init in
                        zip((("high", reg.high), ("low", reg.low)), starts)})
        return out, f_x

    def compute(self, pairs, images, refs, keys, done):
        import torch

        from ..falsification.counterfactuals import optimise_counterfactuals
        from ..geometry import geodesic_distance
        from ..models.base import model_device

        kind, model, fc, c = self.kind, self.model, self.ctx.fconfig, self.ctx.config
        device = model_device(model)
        starts, f_x = self._images.get("starts", [p.id for p in pairs], lambda: self.starts(pairs, images, refs))
        rows, samples = [], []  # samples: (pair position, key, image, mask, init)
        for i, p in enumerate(pairs):
            pending = [k for k in keys if (k, p.id) not in done]
            if starts[i] is None:
                rows += [{**kind.base_row(k, p), "verdict": "untestable",
                          "failed": [f"the map of {kind.method} is untestable"]} for k in pending]
                continue
            for key in pending:
                region, j = key.split("/")[0], int(key.split("k")[-1])
                mask, init = starts[i][region]
                samples.append((i, key, images[i], mask, init[j]))
        for s0 in range(0, len(samples), c.batch_size):
            part = samples[s0 : s0 + c.batch_size]
            idx = [s[0] for s in part]
            cf, info = optimise_counterfactuals(
                model, torch.stack([s[2] for s in part]).to(device), torch.stack([s[3] for s in part]).to(device),
                f_x[idx], init=torch.stack([s[4] for s in part]).to(device), steps=fc.opt_steps, lr=fc.opt_lr,
                lam=fc.opt_lambda, delta_target=fc.opt_delta_target, grad_clip=fc.opt_grad_clip, tol=fc.opt_tol,
                patience=fc.opt_patience, history=True)
            with torch.inference_mode():
                dist = geodesic_distance(f_x[idx], model(cf)).float().cpu()
            for r, (i, key, *_rest) in enumerate(part):
                curve = [round(float(v), 6) for v in info.losses[r] if math.isfinite(float(v))]
                rows.append({
                    **kind.base_row(key, pairs[i]),
                    "verdict": "converged" if bool(info.converged[r]) else "not-converged",
                    "seconds": None,
                    "detail": {"method": kind.method, "region": key.split("/")[0], "start": int(key.split("k")[-1]),
                               "iterations": int(info.iterations[r]), "converged": bool(info.converged[r]),
                               "final_loss": float(info.final_loss[r]), "final_distance": float(dist[r]),
                               "steps": fc.opt_steps, "losses": curve},
                })
        yield rows, []


def row_kind(session) -> Rows65:
    """6.5's row kind for a run (``session.RunSession``): Algorithm 1 on the regions of the run's
    first method that is not a control."""
    method = convergence_method(session.config.methods)
    if method is None:
        raise ValueError("experiment 6.5 runs Algorithm 1 on the regions of a method's map: give a method that is "
                         f"not a control in --methods (e.g. gradcam); got {', '.join(session.config.methods)}")
    return Rows65(session.context(ROWS_OF), method)


def convergence_summary(details: Sequence[Mapping], steps: int) -> dict:
    """The convergence of Algorithm 1 over samples (``detail`` of each 6.5 row): the share converged
    within ``steps`` with its Wilson 95% CI, iterations (median, mean, p95) of the converged samples
    and of all, the final d_g; overall and per region; and the loss curves for the figure."""
    from ..falsification.stats import wilson

    def block(ds):
        n = len(ds)
        conv = [d for d in ds if d["converged"]]
        lo, hi = wilson(len(conv), n)
        it_c = np.array([d["iterations"] for d in conv], dtype=float)
        it_all = np.array([d["iterations"] for d in ds], dtype=float)
        dist = np.array([d["final_distance"] for d in ds], dtype=float)
        q = lambda a, x: _f(np.quantile(a, x)) if a.size else None  # noqa: E731
        return {"n": n, "n_converged": len(conv), "rate": len(conv) / n if n else None, "ci_low": lo, "ci_high": hi,
                "iterations_median": q(it_c, 0.5), "iterations_mean": _f(it_c.mean()) if it_c.size else None,
                "iterations_p95": q(it_c, 0.95), "iterations_all_median": q(it_all, 0.5),
                "final_distance_median": q(dist, 0.5), "final_distance_p10": q(dist, 0.1),
                "final_distance_p90": q(dist, 0.9)}

    out = {"steps": steps, "all": block(details),
           "regions": {r: block([d for d in details if d["region"] == r]) for r in ("high", "low")},
           "iterations": [d["iterations"] for d in details],
           "curves": [{"region": d["region"], "losses": d["losses"]} for d in details[:MAX_CURVES]]}
    return out


# ---------------------------------------------------------------------------------------------
# sample size


@lru_cache(maxsize=4096)
def _rejects(d: int, alpha: float) -> np.ndarray:
    """The counts k of one kind of discordant pair, out of d, for which McNemar's exact test
    (two-sided binomial test at 1/2, as statsmodels' ``mcnemar(exact=True)``) rejects at ``alpha``."""
    from scipy.stats import binom

    k = np.arange(d + 1)
    p = np.minimum(1.0, 2.0 * np.minimum(binom.cdf(k, d, 0.5), binom.sf(k - 1, d, 0.5)))
    return p <= alpha


def mcnemar_power(n: int, p10: float, p01: float, alpha: float = ALPHA) -> float:
    """Exact power of McNemar's exact test on ``n`` pairs when a pair is discordant one way with
    probability ``p10`` and the other way with ``p01``: sum over the number of discordant pairs D ~
    Bin(n, p10 + p01) of P(reject | D), with n10 | D ~ Bin(D, p10 / (p10 + p01))."""
    from scipy.stats import binom

    psi = p10 + p01
    if n < 1 or psi <= 0:
        return 0.0
    p_d = binom.pmf(np.arange(n + 1), n, psi)
    q = p10 / psi
    total = 0.0
    for d in range(1, n + 1):
        if p_d[d] < 1e-15:
            continue
        rej = _rejects(d, alpha)
        total += p_d[d] * float(binom.pmf(np.nonzero(rej)[0], d, q).sum())
    return min(1.0, total)


def n_for_power(p10: float, p01: float, target: float = 0.8, n_max: int = 5000) -> int | None:
    """The smallest n at which :func:`mcnemar_power` reaches ``target`` (None above ``n_max``): n
    doubles until it does, then every n since the last doubling is tried (the exact test's power is
    not monotone in n)."""
    prev, n = 0, 8
    while prev < n_max:
        n = min(n, n_max)
        if mcnemar_power(n, p10, p01) >= target:
            return next(m for m in range(prev + 1, n + 1) if mcnemar_power(m, p10, p01) >= target)
        prev, n = n, 2 * n
    return None


def hoeffding_n(epsilon: float, delta: float) -> int:
    """The n for which Hoeffding's inequality guarantees P(|FR_hat - FR| >= epsilon) <= delta:
    n >= ln(2 / delta) / (2 epsilon^2)."""
    return math.ceil(math.log(2.0 / delta) / (2.0 * epsilon**2))


def sizes_for(n_run: int) -> list[int]:
    return [n for n in SIZES if n < n_run] + ([n_run] if n_run > 0 else [])


def bootstrap_rates(verdicts: Sequence[str], sizes: Sequence[int], seed: int, n_boot: int = N_BOOT) -> list[dict]:
    """FR of ``verdicts`` (passed/falsified) resampled with replacement at each n (seeded): the mean,
    the observed std beside the binomial sqrt(p(1-p)/n) (p: the FR of all the verdicts), and the mean
    width of the Wilson 95% CI a study of n pairs would report."""
    from ..falsification.stats import wilson_interval

    y = np.array([v == "falsified" for v in verdicts], dtype=float)
    p = float(y.mean())
    out = []
    for n in sizes:
        rng = np.random.default_rng([seed, n])
        k = y[rng.integers(0, len(y), size=(n_boot, n))].sum(axis=1)
        lo, hi = wilson_interval(k, n)
        out.append({"n": n, "mean": float(k.mean() / n), "std": float((k / n).std(ddof=1)),
                    "binomial_std": math.sqrt(p * (1 - p) / n), "ci_width": float(np.mean(hi - lo))})
    return out


def sample_size_analysis(verdicts: Mapping[str, Mapping[str, str]], seed: int, n_boot: int = N_BOOT) -> dict:
    """From 6.1's verdicts (method -> pair -> verdict): per method, the bootstrap at each n; the
    exact power of McNemar's test for each FR difference in :data:`DIFFERENCES` at the discordance
    observed between the run's methods; Hoeffding's n."""
    testable = {m: {p: v for p, v in vs.items() if v in ("passed", "falsified")} for m, vs in verdicts.items()}
    methods = []
    for m, vs in testable.items():
        if not vs:
            continue
        order = sorted(vs)
        n_run = len(order)
        methods.append({"method": m, "control": is_control(m), "n": n_run,
                        "fr": sum(vs[p] == "falsified" for p in order) / n_run,
                        "bootstrap": bootstrap_rates([vs[p] for p in order], sizes_for(n_run), seed, n_boot)})
    real = [m for m in testable if not is_control(m) and testable[m]]
    disc = []
    for i, a in enumerate(real):
        for b in real[i + 1 :]:
            common = set(testable[a]) & set(testable[b])
            if common:
                disc.append(sum(testable[a][p] != testable[b][p] for p in common) / len(common))
    psi = float(np.median(disc)) if disc else None
    n_run = max((m["n"] for m in methods), default=0)
    grid = sorted(set(sizes_for(n_run)) | {n for n in SIZES if n <= 1000})
    power = []
    for delta in DIFFERENCES:
        psi_eff = max(psi if psi is not None else 0.0, delta)
        p10, p01 = (psi_eff + delta) / 2, (psi_eff - delta) / 2
        curve = [{"n": n, "power": mcnemar_power(n, p10, p01)} for n in grid]
        need = n_for_power(p10, p01)
        power.append({"difference": delta, "discordance": psi_eff, "p10": p10, "p01": p01, "curve": curve,
                      "n_for_80": need})
    return {"methods": methods, "n_boot": n_boot, "seed": seed, "discordance_observed": psi,
            "n_method_pairs": len(disc), "alpha": ALPHA, "power": power, "power_method": "exact",
            "hoeffding": [{"epsilon": e, "delta": d, "n": hoeffding_n(e, d)} for e, d in HOEFFDING]}


# ---------------------------------------------------------------------------------------------
# tables and figures


def _section(summary: Mapping) -> Mapping | None:
    s = summary.get(KEY)
    return s if isinstance(s, Mapping) else None


def tables_6_5(summary: Mapping) -> list:
    from ..report.render import Table, frame

    s = _section(summary)
    if s is None:
        return []
    out = []
    conv = s.get("convergence")
    if conv:
        rows = []
        for name, b in [("all samples", conv["all"])] + [(f"S_{r}", conv["regions"][r]) for r in ("high", "low")]:
            rate = None if b["rate"] is None else f"{fmt_pct(b['rate'])} [{fmt_pct(b['ci_low'])}, {fmt_pct(b['ci_high'])}]"
            rows.append([name, str(b["n"]), str(b["n_converged"]), rate, fmt_num(b["iterations_median"], 0),
                         fmt_num(b["iterations_mean"], 1), fmt_num(b["iterations_p95"], 0),
                         fmt_num(b["final_distance_median"], 3)])
        header = ["Samples", "n", "converged", "% [95% CI]", "iter. median", "iter. mean", "iter. p95",
                  "final d_g median"]
        caption = (rf"Experiment 6.5: convergence of Algorithm 1 (the optimised fill) within $T = {conv['steps']}$"
                   rf" steps, on $S_{{\mathrm{{high}}}}$ and $S_{{\mathrm{{low}}}}$ of {conv['method']}'s maps, "
                   rf"{conv['n_images']} images $\times$ {conv['starts']} starts. Converged: the loss stopped improving"
                   r" (relative tolerance, patience) before $T$; Wilson 95\% CI over samples; iterations of the"
                   r" converged samples; final $d_g$ in radians.")
        out.append(Table(name="table_6_5_convergence", frame=frame(header, rows), label="tab:exp-6-5-convergence",
                         caption=caption, html_id="table-6-5-convergence", numeric=range(1, len(header))))
    ss = s.get("sample_size")
    if ss and ss["methods"]:
        sizes = sorted({b["n"] for m in ss["methods"] for b in m["bootstrap"]})
        header = ["Method", "n", "FR %"] + [f"n={n}" for n in sizes]
        rows = []
        for m in ss["methods"]:
            by_n = {b["n"]: b for b in m["bootstrap"]}
            cells = [m["method"], str(m["n"]), fmt_pct(m["fr"])]
            for n in sizes:
                b = by_n.get(n)
                cells.append(None if b is None else (f"sd {b['std']:.3f} ({b['binomial_std']:.3f})",
                                                     f"CI {100 * b['ci_width']:.1f}"))
            rows.append(cells)
        desc = run_description(summary)
        caption = (r"Experiment 6.5: sample size" + (f" ({desc})" if desc else "") + r". Each method's FR resampled"
                   rf" with replacement ({ss['n_boot']} seeded bootstrap samples) at $n$ pairs: observed sd of the FR"
                   r" (binomial $\sqrt{p(1-p)/n}$ in brackets) and the mean width (points of \%) of the Wilson 95\% CI.")
        out.append(Table(name="table_6_5", frame=frame(header, rows), label="tab:exp-6-5", caption=caption,
                         html_id="table-6-5", numeric=range(1, len(header)), size=r"\footnotesize"))
        header = ["FR difference", "discordance"] + [f"n={c['n']}" for c in ss["power"][0]["curve"]] + ["n for 80%"]
        rows = [[f"{p['difference']:.2f}", f"{p['discordance']:.3f}"] + [f"{c['power']:.2f}" for c in p["curve"]]
                + [None if p["n_for_80"] is None else str(p["n_for_80"])] for p in ss["power"]]
        out.append(Table(name="table_6_5_power", frame=frame(header, rows), label="tab:exp-6-5-power",
                         caption=(r"Experiment 6.5: exact power of McNemar's exact test ($\alpha = 0.05$) to detect an"
                                  r" FR difference between two methods on $n$ pairs, at the discordance (share of"
                                  r" pairs on which two methods disagree) observed between the run's methods."),
                         html_id="table-6-5-power", numeric=range(1, len(header)), size=r"\footnotesize"))
    return out


def figure_convergence(summary: Mapping):
    from matplotlib.figure import Figure

    conv = _section(summary)["convergence"]
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax, hx = fig.subplots(1, 2)
    colours = {"high": "#c0392b", "low": "#2471a3"}
    for c in conv["curves"]:
        ax.plot(range(1, len(c["losses"]) + 1), c["losses"], color=colours[c["region"]], alpha=0.25, lw=0.8)
    for r in ("high", "low"):
        ax.plot([], [], color=colours[r], label=f"S_{r}")
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext (its fonts may be missing)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Algorithm 1: loss curves", fontsize=10)
    its = np.array(conv["iterations"])
    hx.hist(its, bins=np.arange(0, conv["steps"] + 2, max(1, conv["steps"] // 25)), color="0.4")
    hx.axvline(conv["steps"], color="k", ls=":", lw=1)
    hx.set_xlabel(f"steps taken (T = {conv['steps']})")
    hx.set_ylabel("samples")
    a = conv["all"]
    hx.set_title(f"converged {a['n_converged']}/{a['n']}", fontsize=10)
    return fig


def figure_sample_size(summary: Mapping):
    from matplotlib.figure import Figure

    from ..report.figures import method_colours

    ss = _section(summary)["sample_size"]
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax, px = fig.subplots(1, 2)
    colours = method_colours([m["method"] for m in ss["methods"] if not m["control"]])
    for m in ss["methods"]:
        ns = [b["n"] for b in m["bootstrap"]]
        ax.plot(ns, [100 * b["ci_width"] for b in m["bootstrap"]], marker="o", ms=3,
                color=colours.get(m["method"], "0.5"), ls="--" if m["control"] else "-", label=m["method"])
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # no mathtext (its fonts may be missing)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plain)
    ax.set_xlabel("pairs n")
    ax.set_ylabel("mean Wilson 95% CI width (points)")
    ax.legend(fontsize=7, frameon=False)
    for p in ss["power"]:
        px.plot([c["n"] for c in p["curve"]], [c["power"] for c in p["curve"]], marker="o", ms=3,
                label=f"difference {p['difference']:.2f}")
    px.axhline(0.8, color="k", ls=":", lw=1)
    px.set_xscale("log")
    px.xaxis.set_major_formatter(plain)
    px.set_ylim(0, 1.02)
    px.set_xlabel("pairs n")
    px.set_ylabel("power (McNemar exact, exact)")
    px.legend(fontsize=8, frameon=False)
    return fig


class Experiment65(Experiment):
    name = "6.5"
    title = "Experiment 6.5: convergence and sample size"
    anchor = "exp-6-5"
    nav = "6.5 convergence, sample size"
    key = KEY
    template = "exp_6_5.html.j2"
    figures = {
        "fig_6_5_convergence": ("Algorithm 1: loss curve of each sample (S_high red, S_low blue; log scale) and "
                                "the number of steps each took; the dotted line is T, where a sample that has not "
                                "converged stops."),
        "fig_6_5_sample_size": ("Left: mean width of the Wilson 95% CI of each method's FR at n pairs (bootstrap "
                                "from the run's rows). Right: exact power of McNemar's exact test to detect an FR "
                                "difference between two methods; the dotted line marks 80%."),
    }

    def check(self, config) -> None:
        if convergence_method(config.methods) is None:
            raise ValueError("experiment 6.5 runs Algorithm 1 on the regions of a method's map: give a method that "
                             "is not a control in --methods (e.g. gradcam)")

    def extend(self, session, store, summary: dict) -> None:
        import json

        session.compute_rows(store, row_kind(session))
        c = session.config
        ids = {p.id for p in session.pairs}
        rows = store.rows(ROWS_OF, session.model.name, pairs=ids)
        details = [json.loads(r["detail"]) for r in rows if r["verdict"] in ("converged", "not-converged")]
        conv = convergence_summary(details, session.fconfig.opt_steps)
        conv.update(method=convergence_method(c.methods), starts=c.K,
                    n_images=len({r["pair"] for r in rows if r["verdict"] in ("converged", "not-converged")}),
                    n_untestable=sum(r["verdict"] == "untestable" for r in rows),
                    n_errors=sum(r["verdict"] == "error" for r in rows))
        rows61 = store.rows("6.1", session.model.name, c.row_methods(), pairs=ids)
        verdicts = {m: {r["pair"]: r["verdict"] for r in rows61 if r["method"] == m} for m in c.row_methods()}
        summary[KEY] = {"convergence": conv, "sample_size": sample_size_analysis(verdicts, c.seed)}

    def tables(self, summary: Mapping) -> list:
        return tables_6_5(summary)

    def drawings(self, summary: Mapping, **kw) -> dict:
        s = _section(summary)
        out = {}
        if s is not None and s.get("convergence", {}).get("all", {}).get("n"):
            out["fig_6_5_convergence"] = lambda: figure_convergence(summary)
        if s is not None and s.get("sample_size", {}).get("methods"):
            out["fig_6_5_sample_size"] = lambda: figure_sample_size(summary)
        return out

    def context(self, summary: Mapping) -> dict:
        return {"section": _section(summary)}

    def text(self, summary: Mapping) -> str:
        s = summary[KEY]
        conv, ss = s["convergence"], s["sample_size"]
        a = conv["all"]
        lines = [f"experiment 6.5: Algorithm 1 on S_high and S_low of {conv['method']}'s maps, {conv['n_images']} "
                 f"images x {conv['starts']} starts, T = {conv['steps']} steps"]
        if a["n"]:
            its = ("none converged" if not a["n_converged"] else
                   f"iterations of the converged: median {fmt_num(a['iterations_median'], 0)}, mean "
                   f"{fmt_num(a['iterations_mean'], 1)}, p95 {fmt_num(a['iterations_p95'], 0)}")
            lines.append(f"converged within T {a['n_converged']}/{a['n']} = {100 * a['rate']:.1f}% [{100 * a['ci_low']:.1f}, "
                         f"{100 * a['ci_high']:.1f}] (Wilson 95%); {its}; final d_g median "
                         f"{fmt_num(a['final_distance_median'], 3)} rad")
            for r in ("high", "low"):
                b = conv["regions"][r]
                lines.append(f"  S_{r:4s} converged {b['n_converged']}/{b['n']}, final d_g median "
                             f"{fmt_num(b['final_distance_median'], 3)} rad")
        lines.append(f"sample size ({ss['n_boot']} bootstrap samples): FR std observed (binomial), mean Wilson CI width")
        for m in ss["methods"]:
            cells = "  ".join(f"n={b['n']}: {b['std']:.3f} ({b['binomial_std']:.3f}) {100 * b['ci_width']:.0f}pt"
                              for b in m["bootstrap"])
            lines.append(f"  {m['method']:18s} FR {100 * m['fr']:5.1f}%  {cells}")
        disc = ss["discordance_observed"]
        lines.append("McNemar exact power (alpha 0.05) at discordance "
                     + ("not observed (fewer than two methods): the difference itself" if disc is None else f"{disc:.3f}"))
        for p in ss["power"]:
            lines.append(f"  difference {p['difference']:.2f}: " + ", ".join(f"n={c['n']} {c['power']:.2f}"
                                                                             for c in p["curve"])
                         + f"; 80% at n = {p['n_for_80']}")
        lines.append("Hoeffding: " + ", ".join(f"eps {h['epsilon']} delta {h['delta']}: n >= {h['n']}"
                                              for h in ss["hoeffding"]))
        return "\n".join(lines)


EXPERIMENT = Experiment65()
