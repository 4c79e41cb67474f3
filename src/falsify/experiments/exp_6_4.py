"""Experiment 6.4: do falsification rates hold across models?

``falsify run 6.4 --models dlib-resnet,sface,dlib-resnet:random`` runs 6.1's test for every model
on the same pairs (a model is a built-in name, a model file, ``ARCH:CHECKPOINT`` such as
``iresnet50:/path/backbone.pth``, or any of these followed by ``:random``; the list is split at
commas, so a path in it cannot hold one, while a ``:`` in a checkpoint's path is read as part of
the path because the architecture ends at the first ``:``): each model is one 6.1 run in
``OUT/models/<model>/`` (its own store, its own calibrated thresholds and prior, resumed row by
row like 6.1; one row per (model, method, pair)).
A real model whose randomised copy (``NAME:random``) is among the models also gets 6.1's
``METHOD@random-model`` rows: the randomised model's maps tested on the real model. ``OUT`` holds
the run's settings (``results.sqlite``, so that the same command resumes), ``summary.json``,
Table 6.4, the heatmap and ``report.html``.

Analysis (:func:`across_models`, on verdicts; synthetic ones in the tests):

- pairs that any model cannot use (an error row on any of its methods) are dropped for every model,
  and counted;
- FR per (model, method) with a Wilson 95% CI;
- per method, Cochran's Q across the real models (statsmodels ``cochrans_q``) on the pairs where
  every one of them has a passed/falsified verdict; pairwise McNemar (exact) between all models,
  Holm-corrected across every comparison of the run; the coefficient of variation of FR across the
  real models;
- the randomised models as negative controls: their maps tested on themselves, and on the real
  model they were derived from.
"""
from __future__ import annotations

import hashlib
import math
import re
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..choices import RANDOM_MODEL, RANDOM_SUFFIX
from ..report.tables import fmt_num, fmt_p, fmt_pct
from .base import Experiment, load_raw_summary

KEY = "experiment_6_4"
DEFAULT_MODELS = ("dlib-resnet", "sface", "dlib-resnet:random")
ALPHA = 0.05
BINARY = ("passed", "falsified")


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _spec(model: str):
    """``model`` parsed (``falsify.models.ModelSpec``; imported here: the report reads 6.4's
    summaries without torch)."""
    from ..models.spec import ModelSpec

    return ModelSpec.parse(model)


def is_random(model: str) -> bool:
    return _spec(model).random


def base_of(model: str) -> str:
    """The real model a ``NAME:random`` model was derived from."""
    return _spec(model).base


def slug(model: str) -> str:
    """A folder name for a model (``dlib-resnet:random`` -> ``dlib-resnet_random``). A checkpoint,
    ``ARCH:PATH``, is named by its architecture, file name and a digest of PATH
    (``iresnet50_backbone.pth_1a2b3c4d``): arcface_torch names every checkpoint backbone.pth."""
    text = str(model)
    parsed = _spec(text)
    suffix = "_random" if parsed.random else ""
    if parsed.checkpoint is not None:
        arch, path = parsed.checkpoint
        digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{arch}_{Path(path).name}_{digest}") + suffix
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name if "/" in text else text)


# ---------------------------------------------------------------------------------------------
# statistics


def cochrans_q(x) -> dict:
    """Cochran's Q of a binary (pairs x models) table (1: falsified): statsmodels' ``cochrans_q``.
    When no pair differs across models (every row all 0 or all 1) Q is 0/0: reported as Q = 0,
    p = 1 (no evidence of a difference), as McNemar without discordant pairs."""
    from statsmodels.stats.contingency_tables import cochrans_q as _q

    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"Cochran's Q needs a pairs x models table with at least two models, got shape {x.shape}")
    if x.shape[0] == 0:
        return {"q": None, "df": x.shape[1] - 1, "p": None}
    if not ((x.min(axis=1) == 0) & (x.max(axis=1) == 1)).any():
        return {"q": 0.0, "df": x.shape[1] - 1, "p": 1.0}
    res = _q(x)
    return {"q": float(res.statistic), "df": int(res.df), "p": float(res.pvalue)}


def coefficient_of_variation(rates: Sequence[float | None]) -> float | None:
    """SD / mean of the rates (population SD, the models being the whole set compared); None with
    fewer than two rates or a zero mean."""
    r = np.array([x for x in rates if x is not None], dtype=float)
    if r.size < 2 or r.mean() == 0:
        return None
    return float(r.std(ddof=0) / r.mean())


def usable_pairs(verdicts: Mapping[str, Mapping[str, Mapping[str, str]]], pairs: Sequence[str]) -> tuple[list[str], dict]:
    """The pairs every model can use: those without an error row in any (model, method). Returns
    (kept pairs in order, {model: pairs it could not use}); a pair dropped for one model is dropped
    for all."""
    dropped = {}
    for model, by_method in verdicts.items():
        dropped[model] = sorted({p for vs in by_method.values() for p, v in vs.items() if v == "error"}
                                | {p for vs in by_method.values() for p in pairs if p not in vs})
    bad = {p for ps in dropped.values() for p in ps}
    return [p for p in pairs if p not in bad], dropped


def across_models(verdicts: Mapping[str, Mapping[str, Mapping[str, str]]], pairs: Sequence[str],
                  methods: Sequence[str], controls: Mapping[str, Mapping[str, str]] | None = None,
                  alpha: float = ALPHA) -> dict:
    """The 6.4 analysis. ``verdicts[model][method][pair]``: the verdict of that model's map tested
    on that model; ``controls[real_model][method]`` -> ``{pair: verdict}``: the maps of the real
    model's randomised copy tested on the real model (6.1's ``METHOD@random-model`` rows).
    Models ending in ``:random`` are negative controls: left out of Cochran's Q and of the
    coefficient of variation, kept in the pairwise comparisons."""
    from ..falsification import stats
    from ..falsification.stats import wilson

    models = list(verdicts)
    real = [m for m in models if not is_random(m)]
    kept, dropped = usable_pairs(verdicts, pairs)
    controls = controls or {}

    def rate(vs: Sequence[str]) -> dict:
        n_f, n_p = vs.count("falsified"), vs.count("passed")
        n = n_f + n_p
        lo, hi = wilson(n_f, n)
        return {"n_passed": n_p, "n_falsified": n_f, "n_untestable": vs.count("untestable"), "n": n,
                "fr": n_f / n if n else None, "ci_low": lo, "ci_high": hi}

    rates = []
    for model in models:
        for method in methods:
            vs = [verdicts[model].get(method, {}).get(p) for p in kept]
            rates.append({"model": model, "maps_of": model, "method": method, "control": is_random(model),
                          **rate([v for v in vs if v is not None])})
    for model, by_method in controls.items():
        for method in methods:
            if method not in by_method:
                continue
            vs = [by_method[method].get(p) for p in kept]
            rates.append({"model": model, "maps_of": model + RANDOM_SUFFIX, "method": method, "control": True,
                          **rate([v for v in vs if v is not None and v != "error"])})
    fr_of = {(r["model"], r["maps_of"], r["method"]): r["fr"] for r in rates}

    per_method, pairwise = [], []
    q_models = real if len(real) >= 2 else models
    for method in methods:
        col = {m: verdicts[m].get(method, {}) for m in models}
        complete = [p for p in kept if all(col[m].get(p) in BINARY for m in q_models)]
        entry = {"method": method, "models": q_models, "n_paired": len(complete),
                 "n_excluded": len(kept) - len(complete), "q": None, "df": len(q_models) - 1, "p": None,
                 "cv": coefficient_of_variation([fr_of[(m, m, method)] for m in real]),
                 "fr_real": {m: fr_of[(m, m, method)] for m in real}}
        if len(q_models) >= 2 and complete:
            x = [[int(col[m][p] == "falsified") for m in q_models] for p in complete]
            entry.update(cochrans_q(x))
        per_method.append(entry)
        for a, b in combinations(models, 2):
            both = [p for p in kept if col[a].get(p) in BINARY + ("untestable",)
                    and col[b].get(p) in BINARY + ("untestable",)]
            c = {"method": method, "a": a, "b": b, "n_paired": 0, "n01": None, "n10": None, "fr_a": None,
                 "fr_b": None, "p": None, "p_holm": None, "significant": None}
            try:
                r = stats.mcnemar_paired([col[a][p] for p in both], [col[b][p] for p in both], a, b)
            except ValueError:  # no pair testable on both
                pairwise.append(c)
                continue
            c.update(n_paired=r.n_pairs, n01=r.table[0][1], n10=r.table[1][0], fr_a=r.rate_a, fr_b=r.rate_b,
                     p=r.pvalue)
            pairwise.append(c)
    tested = [c for c in pairwise if c["p"] is not None]
    if tested:
        h = stats.holm([c["p"] for c in tested], alpha)
        for c, p, rej in zip(tested, h.pvalues_adjusted, h.reject):
            c["p_holm"], c["significant"] = p, rej
    return {"models": models, "real_models": real, "random_models": [m for m in models if is_random(m)],
            "q_models": q_models, "methods": list(methods), "n_pairs": len(pairs), "n_kept": len(kept),
            "n_dropped": len(pairs) - len(kept), "dropped_by_model": {m: len(d) for m, d in dropped.items()},
            "dropped_examples": sorted({p for d in dropped.values() for p in d})[:10],
            "rates": rates, "per_method": per_method, "pairwise": pairwise, "alpha": alpha}


# ---------------------------------------------------------------------------------------------
# the run: one 6.1 run per model


def sub_config(config, model: str, out=None):
    """The 6.1 settings of ``model``'s run inside a 6.4 run (in ``out``, by default ``config.out``)."""
    from .config import RunConfig

    values = {**config.to_dict(), "experiment": "6.1", "model": model, "models": None,
              "out": str(Path(out if out is not None else config.out) / "models" / slug(model)),
              "sanity": not is_random(model) and model + RANDOM_SUFFIX in config.models,
              "other_reference": False}
    return RunConfig(**values)


def check_models(config) -> None:
    """``models`` (default :data:`DEFAULT_MODELS`), each a built-in name, ``NAME:random`` or an
    existing model file, at least two; and every model's 6.1 settings checked."""
    from ..choices import unknown_architecture
    from ..models import MODELS

    if isinstance(config.models, str):
        config.models = [m.strip() for m in config.models.split(",") if m.strip()]
    config.models = list(dict.fromkeys(config.models or DEFAULT_MODELS))
    for m in config.models:
        spec = _spec(m)
        typo = unknown_architecture(spec.base)
        if typo is not None:
            raise ValueError(f"models: {typo}")
        if spec.checkpoint is None and spec.builtin is None and not Path(spec.base).expanduser().is_file():
            raise ValueError(f"unknown model {m!r} in models; use built-in names ({', '.join(sorted(MODELS))}), "
                             f"NAME{RANDOM_SUFFIX} or a model file (see 'falsify models')")
    if len(config.models) < 2:
        raise ValueError(f"experiment 6.4 compares models: give at least two in models, got {config.models}")
    for m in config.models:  # each model's run's settings, checked before anything is written
        sub_config(config, m, out=config.out or ".")


def compute(session, store) -> dict:
    """``falsify run 6.4`` on its session: a 6.1 run per model (each resumable, in
    ``OUT/models/<model>``, on the run's executor), then :func:`across_models`."""
    import time

    from ..models.base import model_device
    from .exp_6_1 import EXPERIMENT as EXPERIMENT_6_1
    from .resume import environment
    from .runner import Runner
    from .session import load_run_pairs

    c = session.config
    c.out = str(session.out)
    notes: list[str] = []  # --n-pairs above what the data holds: said by this run, not again by each model's
    load_run_pairs(c, log=notes.append)
    runs = []
    for sc in [sub_config(c, m) for m in c.models]:
        session.log(f"experiment 6.4: model {sc.model} -> {sc.out}")
        r = Runner(sc, EXPERIMENT_6_1, session.write_outputs, progress=session.progress,
                   retry_errors=session.retry_errors, executor=session.executor,
                   log=lambda *a: None if a and a[0] in notes else session.log(*a))
        s = r.run()
        runs.append((sc, r.session, s))
    summary = _summarise(c, runs, session.pairs, session.started)
    summary["elapsed_s"] = time.perf_counter() - session.t0
    summary["environment"] = environment(model_device(runs[0][1].model))
    return summary


def _summarise(c, runs, pairs, started: str) -> dict:
    from .resume import now
    from .store import ResultsStore

    ids = [p.id for p in pairs]
    verdicts, controls, per_model = {}, {}, []
    for sc, r, s in runs:
        if [p.id for p in r.pairs] != ids:  # the same data, n_pairs and seed give the same sample
            raise RuntimeError(f"model {sc.model} was run on other pairs than the others; please report this")
        with ResultsStore(Path(sc.out) / "results.sqlite") as store:
            rows = [x for x in store.rows("6.1", r.model.name, sc.row_methods()) if x["pair"] in set(ids)]
        verdicts[sc.model] = {m: {x["pair"]: x["verdict"] for x in rows if x["method"] == m} for m in c.methods}
        ctrl = {m[: -len(RANDOM_MODEL)]: {x["pair"]: x["verdict"] for x in rows if x["method"] == m}
                for m in sc.row_methods() if m.endswith(RANDOM_MODEL)}
        if ctrl:
            controls[sc.model] = ctrl
        fals = s.get("falsification") or {}
        per_model.append({"model": sc.model, "name": r.model.name, "out": str(sc.out),
                          "align": (s.get("alignment") or {}).get("template"),
                          "threshold": r.threshold, "tau_high": fals.get("tau_high"),
                          "tau_low": fals.get("tau_low"), "epsilon": fals.get("epsilon"),
                          "calibrated": r.calibration is not None, "n_errors": s.get("n_errors")})
    section = across_models(verdicts, ids, c.methods, controls)
    section["per_model"] = per_model
    section["random_seed_matches"] = c.seed == 0  # NAME:random is seed 0; @random-model rows use --seed
    return {
        "experiment": "6.4", "created": now(), "started": started, "model": ", ".join(c.models),
        "data": pairs.data_record(),
        "methods": [], "n_rows": sum(len(vs) for v in verdicts.values() for vs in v.values()),
        "config": c.to_dict(), KEY: section,
    }


# ---------------------------------------------------------------------------------------------
# tables and figures


def _section(summary: Mapping) -> Mapping | None:
    s = summary.get(KEY)
    return s if isinstance(s, Mapping) else None


def _columns(s: Mapping) -> list[tuple[str, str]]:
    """(model tested, maps of) of each FR column: the models, then the randomised maps on real models."""
    cols = []
    for r in s["rates"]:
        key = (r["model"], r["maps_of"])
        if key not in cols:
            cols.append(key)
    return cols


def column_label(model: str, maps_of: str) -> str:
    return model if model == maps_of else f"{maps_of} maps on {model}"


def _rate_cell(r: Mapping | None) -> str | None:
    if r is None or r["fr"] is None:
        return None
    return f"{fmt_pct(r['fr'])} [{fmt_pct(r['ci_low'])}, {fmt_pct(r['ci_high'])}] n={r['n']}"


def table_6_4(summary: Mapping):
    from ..report.render import Table, frame

    s = _section(summary)
    cols = _columns(s)
    by = {(r["model"], r["maps_of"], r["method"]): r for r in s["rates"]}
    per = {e["method"]: e for e in s["per_method"]}
    header = ["Method"] + [column_label(*c) for c in cols] + ["Cochran's Q", "p", "CV (real models)"]
    rows = []
    for m in s["methods"]:
        e = per[m]
        q = None if e["q"] is None else f"{e['q']:.2f} (df {e['df']}, n={e['n_paired']})"
        rows.append([m] + [_rate_cell(by.get((*c, m))) for c in cols] + [q, fmt_p(e["p"]), fmt_num(e["cv"], 2)])
    caption = (f"Experiment 6.4: falsification rate per model and method on the same {s['n_kept']} pairs"
               + (f" ({s['n_dropped']} pair(s) some model could not use dropped for all)" if s["n_dropped"] else "")
               + r". FR \% with its Wilson 95\% CI and the testable pairs $n$; thresholds calibrated per model."
               r" Randomised models (NAME:random) are negative controls: their maps on themselves, and on the"
               r" real model they were derived from. Cochran's $Q$ across "
               + ", ".join(s["q_models"]) + r" on the pairs where each has a testable map; CV: SD / mean of FR"
               r" across the real models.")
    return Table(name="table_6_4", frame=frame(header, rows), label="tab:exp-6-4", caption=caption,
                 html_id="table-6-4", numeric=range(1, len(header)), size=r"\footnotesize")


def table_6_4_pairwise(summary: Mapping):
    from ..report.render import Table, frame

    s = _section(summary)
    yes_no = lambda x: None if x is None else ("yes" if x else "no")  # noqa: E731
    rows = [[c["method"], c["a"], c["b"], str(c["n_paired"]), fmt_num(c["n01"], 0), fmt_num(c["n10"], 0),
             fmt_pct(c["fr_a"]), fmt_pct(c["fr_b"]), fmt_p(c["p"]), fmt_p(c["p_holm"]), yes_no(c["significant"])]
            for c in s["pairwise"]]
    header = ["Method", "Model A", "Model B", "n", "A only falsified", "B only falsified", "FR A %", "FR B %",
              "McNemar p", "Holm p", "Significant"]
    caption = (r"Experiment 6.4: pairwise McNemar (exact) between models, per method, on the pairs where both maps"
               rf" are testable; Holm's correction across all {len([c for c in s['pairwise'] if c['p'] is not None])}"
               rf" comparisons ($\alpha = {s['alpha']}$).")
    return Table(name="table_6_4_pairwise", frame=frame(header, rows), label="tab:exp-6-4-pairwise",
                 caption=caption, html_id="table-6-4-pairwise", numeric=range(3, 10), size=r"\footnotesize")


def heatmap(summary: Mapping):
    """FR per (model, method): rows are the models (and the randomised maps on real models), columns the methods."""
    from matplotlib.figure import Figure

    s = _section(summary)
    cols = _columns(s)
    by = {(r["model"], r["maps_of"], r["method"]): r for r in s["rates"]}
    methods = s["methods"]
    z = np.array([[np.nan if by.get((*c, m)) is None or by[(*c, m)]["fr"] is None else by[(*c, m)]["fr"]
                   for m in methods] for c in cols], dtype=float)
    fig = Figure(figsize=(1.0 * len(methods) + 3.6, 0.55 * len(cols) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(z), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(cols)):
        for j in range(len(methods)):
            r = by.get((*cols[i], methods[j]))
            text = "n/a" if r is None or r["fr"] is None else f"{100 * r['fr']:.0f}%\nn={r['n']}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(z[i, j]) or z[i, j] >= 0.6 else "white")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(cols)))
    ax.set_yticklabels([column_label(*c) for c in cols], fontsize=8)
    fig.colorbar(im, ax=ax, label="falsification rate")
    ax.set_title(f"Experiment 6.4: FR per model and method ({s['n_kept']} pairs)", fontsize=10)
    return fig


class Experiment64(Experiment):
    name = "6.4"
    title = "Experiment 6.4: falsification rates across models"
    anchor = "exp-6-4"
    nav = "6.4 across models"
    key = KEY
    template = "exp_6_4.html.j2"
    figures = {
        "fig_6_4_heatmap": ("Falsification rate per model (rows) and method (columns) on the same pairs; n: "
                            "testable pairs. Rows named 'X:random maps on X' are the randomised model's maps tested "
                            "on the real model."),
    }

    needs_model = False  # each model's 6.1 run loads its own

    def check(self, config) -> None:
        check_models(config)

    def result_settings(self, config) -> dict:
        """As 6.1's, but ``align`` as given: each model's own store records what auto meant for it."""
        return {**config.result_settings(), "align": config.align}

    def models(self, config) -> list[str]:
        """Every model compared (a user's checkpoint read and checked against its architecture)."""
        for m in config.models:
            spec = _spec(m)
            if spec.checkpoint is not None:
                from ..models.checkpoints import check_checkpoint

                check_checkpoint(*spec.checkpoint, label=spec.base)
        return list(config.models)

    def compute(self, session, store) -> dict:
        return compute(session, store)

    def write(self, session, summary: dict) -> None:
        session.write_outputs(session.out, summary)

    def tables(self, summary: Mapping) -> list:
        if _section(summary) is None:
            return []
        return [table_6_4(summary), table_6_4_pairwise(summary)]

    def drawings(self, summary: Mapping, **kw) -> dict:
        if _section(summary) is None or not _section(summary)["methods"]:
            return {}
        return {"fig_6_4_heatmap": lambda: heatmap(summary)}

    def context(self, summary: Mapping) -> dict:
        return {"section": _section(summary)}

    def report_summary(self, out) -> dict:
        summary = load_raw_summary(out)
        if _section(summary) is None:
            raise ValueError(f"{Path(out) / 'summary.json'} holds no experiment 6.4 section; rerun 'falsify run 6.4'")
        return summary

    def text(self, summary: Mapping) -> str:
        s = summary[KEY]
        by = {(r["model"], r["maps_of"], r["method"]): r for r in s["rates"]}
        lines = [f"experiment 6.4 on {s['n_kept']} pairs ({s['n_dropped']} dropped because some model could not use them)"]
        for pm in s["per_model"]:
            th = ", ".join(f"{k} {pm[k]:.3f}" for k in ("tau_high", "tau_low", "epsilon") if pm.get(k) is not None)
            lines.append(f"  {pm['model']}: {'calibrated' if pm['calibrated'] else 'given'} {th}; rows in {pm['out']}")
        cols = _columns(s)
        w = max([16] + [len(column_label(*c)) for c in cols])
        lines.append(f"{'method':18s} " + " ".join(f"{column_label(*c):>{w}s}" for c in cols)
                     + "  Cochran Q      p     CV")
        for e in s["per_method"]:
            m = e["method"]
            cells = []
            for c in cols:
                r = by.get((*c, m))
                cell = "n/a" if r is None or r["fr"] is None else f"{100 * r['fr']:.1f}% (n={r['n']})"
                cells.append(f"{cell:>{w}s}")
            q = "n/a" if e["q"] is None else f"{e['q']:.2f}"
            lines.append(f"{m:18s} " + " ".join(cells) + f"  {q:>9s} {fmt_p(e['p']) or 'n/a':>6s} "
                         f"{fmt_num(e['cv'], 2) or 'n/a':>6s}")
        return "\n".join(lines)

    def outputs(self, out) -> str:
        return (f"results: {out}/models/*/results.sqlite (one 6.1 run per model)\nreport:  {out}/report.html")


EXPERIMENT = Experiment64()
