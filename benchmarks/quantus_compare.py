"""Convergent validity (issue 21, item 4): do Quantus's faithfulness metrics rank the methods as
falsify's falsification rate does?

On the pairs of one 6.1 run (made first when ``--run`` holds none: ``falsify run 6.1`` with the
default calibrated test, the same data, pairs, seed and methods), every method's maps of image A
against f(B) are made again with the run's explainers and options, and scored by

* falsify's FR (from the run's summary: low = faithful) and our deletion curves (blur fill, 14 x 14
  cells, genuine pairs the model accepts: the mean area of cos - threshold, low = faithful);
* Quantus 0.6.0 through ``falsify.falsification.quantus_bridge`` (the similarity wrapper):
  FaithfulnessCorrelation, RegionPerturbation (patches), ROAD and EfficientMPRT.

It prints a Markdown table (per method: FR, the deletion area, each metric's mean and n) and
Kendall's tau-b (``scipy.stats.kendalltau``) between FR and each column across the methods, with
its p-value, over all methods and over the real ones (controls left out). FR is low for a faithful
map; each metric's faithful direction is in the table, and "agrees" is the sign tau has when the
two rank the methods alike.

    python benchmarks/quantus_compare.py --n-pairs 30 --run /tmp/run61-n30 --pairs 10 --workers 2

``--pairs K`` scores the first K pairs of the run's sample only (FR then counts the run's verdicts
on those K pairs); ``--workers`` runs the metrics in that many processes of one torch thread each.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_METHODS = ("saliency", "gradient-x-input", "gradcam", "gradcam++", "ig", "occlusion", "random", "centre", "edge")
CONTROLS = ("random", "centre", "edge")
#: ig re-explained by EfficientMPRT on the randomised model: a fixed 32-step path, as the validity
#: study does (the completeness refinement spends up to 512 steps where attributions never add up)
MPRT_OPTIONS = {"ig": {"steps": 32, "tolerance": None}}


def ensure_run(run: Path, data: str, n_pairs: int, seed: int, methods, model: str) -> dict:
    """The run's summary.json, running ``falsify run 6.1`` into ``run`` first when it has none."""
    summary = run / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "falsify.cli", "run", "6.1", "--data", data, "--n-pairs", str(n_pairs),
               "--seed", str(seed), "--methods", ",".join(methods), "--model", model, "--out", str(run), "--quiet"]
        print("$", " ".join(cmd), flush=True)
        env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run(cmd, check=True, env=env)
    return json.loads(summary.read_text())


def metric_rows(job):
    """One metric on every map, in a worker process of one torch thread: (metric, rows, seconds)."""
    model_name, metric, a, b, maps, options, threshold, accepted, seed = job
    torch.set_num_threads(1)
    from falsify.falsification import quantus_bridge as qb
    from falsify.models import load_model

    t = time.perf_counter()
    rows = qb.quantus_scores(load_model(model_name), a, b, maps, metrics=(metric,), options=options,
                             threshold=threshold, accepted=accepted, seed=seed)
    return metric, rows, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-sample"))
    ap.add_argument("--n-pairs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="dlib-resnet")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--run", type=Path, required=True, help="a 6.1 run folder (made when it holds no summary.json)")
    ap.add_argument("--metrics", default=None, help="comma-separated subset of the bridge's METRICS")
    ap.add_argument("--pairs", type=int, default=None, help="score the first K pairs of the run only")
    ap.add_argument("--workers", type=int, default=1, help="processes for the metrics (one torch thread each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--json", type=Path, default=None, help="also write every score here")
    args = ap.parse_args(argv)

    from scipy.stats import kendalltau

    from falsify.attribution import get_explainer
    from falsify.data import load_image, load_pairs
    from falsify.experiments.store import ResultsStore
    from falsify.falsification import quantus_bridge as qb
    from falsify.falsification.deletion import deletion_curve, summarise_curves
    from falsify.falsification.prior import Prior
    from falsify.models import load_model

    qb.import_quantus()  # one line naming the install, before any work
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = qb.METRICS if args.metrics is None else tuple(m.strip() for m in args.metrics.split(","))
    t_all = time.perf_counter()
    t = time.perf_counter()
    summary = ensure_run(args.run, args.data, args.n_pairs, args.seed, methods, args.model)
    print(f"6.1 run: {args.run} ({time.perf_counter() - t:.0f} s)", flush=True)
    missing = [m for m in methods if m not in {r["method"] for r in summary["methods"]}]
    if missing:
        raise SystemExit(f"{args.run} has no 6.1 rows of {', '.join(missing)}: pass another --run or those --methods")
    threshold = float(summary["calibration"]["threshold_cos"])
    with ResultsStore(args.run / "results.sqlite") as store:
        prior = Prior.from_dict(store.get_meta("prior")).map()
        run_rows = store.rows("6.1", args.model)

    model = load_model(args.model)
    pairs = list(load_pairs(args.data, n_pairs=args.n_pairs, seed=args.seed))
    if {p.id for p in pairs} != {r["pair"] for r in run_rows}:
        raise SystemExit(f"the pairs of {args.run} are not --n-pairs {args.n_pairs} --seed {args.seed} of {args.data}")
    pairs = pairs[: args.pairs]
    ids = {p.id for p in pairs}
    fr = {}
    for m in methods:  # FR = falsified / (passed + falsified) over these pairs' verdicts in the run
        v = [r["verdict"] for r in run_rows if r["method"] == m and r["pair"] in ids]
        tested = [x for x in v if x in ("passed", "falsified")]
        fr[m] = sum(x == "falsified" for x in tested) / len(tested)
    a = torch.stack([load_image(p.a, model.input_size, model.aligner) for p in pairs])
    b = torch.stack([load_image(p.b, model.input_size, model.aligner) for p in pairs])
    with torch.no_grad():
        ref = model(b)
        cos = (model(a) * ref).sum(1)
    accepted = [bool(p.same and c >= threshold) for p, c in zip(pairs, cos.tolist())]
    print(f"{len(pairs)} pairs ({sum(p.same for p in pairs)} genuine, {sum(accepted)} of them accepted at "
          f"cos >= {threshold:.4f}); model {args.model}; torch threads {torch.get_num_threads()}", flush=True)

    maps, seconds = {}, {}
    for m in methods:
        t = time.perf_counter()
        opts = {"prior": prior} if m == "centre" else ({"seed": args.seed} if m == "random" else {})
        explainer = get_explainer(m, model, **opts)
        maps[m] = torch.cat([explainer(a[i : i + 8], ref[i : i + 8]) for i in range(0, len(pairs), 8)]).cpu()
        seconds[f"maps {m}"] = time.perf_counter() - t

    t = time.perf_counter()
    deletion = {}
    for m in methods:
        curves = [deletion_curve(model, a[i], maps[m][i], ref[i], threshold).to_dict()
                  for i in range(len(pairs)) if accepted[i]]
        deletion[m] = summarise_curves(curves)
    seconds["deletion curves"] = time.perf_counter() - t

    rows = []
    options = {m: ({"prior": prior} if m == "centre" else {"seed": args.seed} if m == "random"
                   else MPRT_OPTIONS.get(m, {})) for m in methods}
    # the longest first: EfficientMPRT re-explains (occlusion twice per pair), then 50 subsets per map
    order = sorted(metrics, key=lambda m: ["efficient-mprt", "faithfulness-correlation"].index(m)
                   if m in ("efficient-mprt", "faithfulness-correlation") else 2)
    jobs = [(args.model, m, a, b, maps, options, threshold, accepted, args.seed) for m in order]
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(metric_rows, jobs))
    else:
        done = map(metric_rows, jobs)
    for metric, metric_rows_, secs in done:
        rows += metric_rows_
        seconds[metric] = secs
        print(f"{metric}: {secs:.0f} s", flush=True)
    scores = qb.summarise_scores(rows)

    columns = [("deletion area", "lower", {m: deletion[m]["mean_area"] for m in methods},
                {m: deletion[m]["n"] for m in methods})]
    columns += [(metric, qb.FAITHFUL_IF[metric], {m: scores[m][metric]["mean"] for m in methods},
                 {m: scores[m][metric]["n"] for m in methods}) for metric in metrics]

    print(f"\n### Quantus {qb.QUANTUS_VERSION} beside falsify's FR: {len(pairs)} pairs, {args.model}, seed {args.seed}\n")
    head = ["method", "FR (6.1)"] + [f"{name} ({'higher' if d == 'higher' else 'lower'} = faithful)"
                                     for name, d, _, _ in columns]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in methods:
        cells = [m + (" (control)" if m in CONTROLS else ""), f"{100 * fr[m]:.1f}%"]
        cells += ["n/a" if v[m] is None else f"{v[m]:+.4f} (n={n[m]})" for _, _, v, n in columns]
        print("| " + " | ".join(cells) + " |")
    print("\nKendall's tau-b between FR and each column across the methods (FR low = faithful; "
          "'agrees' is the sign tau takes when both rank the methods alike):\n")
    print("| column | agrees if | tau, all methods | p | tau, real methods only | p |")
    print("|---|---|---|---|---|---|")
    taus = {}
    for name, d, v, _ in columns:
        cells = [name, "tau < 0" if d == "higher" else "tau > 0"]
        for subset in (methods, [m for m in methods if m not in CONTROLS]):
            ms = [m for m in subset if v[m] is not None]
            res = kendalltau([fr[m] for m in ms], [v[m] for m in ms]) if len(ms) > 2 else None
            tau, p = (None, None) if res is None else (float(res.statistic), float(res.pvalue))
            taus.setdefault(name, []).append({"n_methods": len(ms), "tau": tau, "p": p})
            cells += ["n/a", "n/a"] if tau is None or not np.isfinite(tau) else [f"{tau:+.2f} ({len(ms)})", f"{p:.2g}"]
        print("| " + " | ".join(cells) + " |")
    total = time.perf_counter() - t_all
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; total {total:.0f}")
    if args.json:
        args.json.write_text(json.dumps({"fr": fr, "deletion": deletion, "scores": scores, "rows": rows,
                                         "taus": taus, "seconds": seconds, "threshold": threshold,
                                         "n_pairs": len(pairs), "accepted": sum(accepted)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
