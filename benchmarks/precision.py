"""bfloat16 against float32 (issue 30, item 2): speed, embedding error, and 6.1's verdicts.

Per model (``--models``, default the built-in ones), in one process at torch's default threads:

- forward and forward+backward (input gradient) throughput, float32 and ``--precision`` (default
  bf16), batch ``--batch`` of random images; each round times both back to back and a ratio is the
  median of the rounds' ratios, so load on a shared machine falls on both;
- the embedding error: over ``--images`` aligned images of the data's pairs, the smallest cosine
  between an image's float32 and low-precision embeddings, and the largest angle between them.

With ``--run OUT``, the done-when of issue 30: ``falsify run 6.1`` on ``--n-pairs`` pairs with
``--methods``, once per precision (and in the order fp32, low, low, fp32 with ``--repeat``), each
into ``OUT/MODEL-PRECISION[-2]``, in this process; it prints the rows' seconds (the store's
``seconds``: maps and tests, without the set-up) per precision, their ratio, and the verdicts
compared row by row (``benchmarks/compare_verdicts.py``: the rows that moved, with their margins
and their excess over the prior's margin). A folder that exists is resumed (its rows are kept).
The low-precision runs re-check their near-ties in float32 (``--recheck-band``, radians; 0: none),
and each line says how many rows were re-checked. ``--recheck`` adds a run whose maps are made in
low precision and whose test runs in float32; ``--maps-fp32`` one whose maps are made in float32
and whose test runs in low precision (neither re-checks). ``--timing N`` runs instead N rounds of
fp32, low and low re-checked (``timing``) and prints the rows' seconds round by round.

    python benchmarks/precision.py                                  # ~3 min on 2 cores
    python benchmarks/precision.py --models dlib-resnet --run runs/precision   # + two 12-pair runs
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-sample"
RUN_METHODS = "saliency,gradcam,gradient-x-input,occlusion,kernelshap,random,centre"


def _rate(model, x, backward: bool) -> float:
    t = time.perf_counter()
    if backward:
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(model(x)[:, 0].sum(), x)
    else:
        with torch.inference_mode():
            model(x)
    return x.shape[0] / (time.perf_counter() - t)


def speed(model, low: str, batch: int, rounds: int) -> dict:
    """Median img/s per precision and the median of the per-round ratios low / fp32."""
    x = torch.rand(batch, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    out = {}
    for backward in (False, True):
        rates: dict = {"fp32": [], low: []}
        for r in range(rounds + 1):  # round 0 warms up (allocations, folded weights, kernels)
            for p in ("fp32", low):
                model.precision = p
                rate = _rate(model, x, backward)
                if r:
                    rates[p].append(rate)
        model.precision = "fp32"
        ratios = [b / a for a, b in zip(rates["fp32"], rates[low])]
        out["fwd+bwd" if backward else "fwd"] = (statistics.median(rates["fp32"]), statistics.median(rates[low]),
                                                 statistics.median(ratios))
    return out


def embedding_error(model, low: str, data: str, n_images: int) -> tuple[float, float, int]:
    """(min cosine, max angle in radians, images) between float32 and low-precision embeddings."""
    from falsify.data import load_images, load_pairs
    from falsify.geometry import geodesic_distance

    paths = list(dict.fromkeys(p for pair in load_pairs(data).pairs for p in (pair.a, pair.b)))[:n_images]
    images, _ = load_images(paths, model.input_size, errors="skip", align=model.aligner)
    embs = {}
    for p in ("fp32", low):
        model.precision = p
        with torch.inference_mode():
            embs[p] = torch.cat([model(chunk) for chunk in images.split(32)]).double()
    model.precision = "fp32"
    cos = (embs["fp32"] * embs[low]).sum(1)
    return float(cos.min()), float(geodesic_distance(embs["fp32"], embs[low]).max()), images.shape[0]


def row_seconds(folder: Path) -> float:
    with sqlite3.connect(folder / "results.sqlite") as c:
        return float(c.execute("SELECT SUM(seconds) FROM results WHERE experiment = '6.1'").fetchone()[0])


def rechecked(folder: Path) -> tuple[int, int]:
    """(rows, rows re-checked in float32) of a 6.1 store."""
    with sqlite3.connect(folder / "results.sqlite") as c:
        details = [d for (d,) in c.execute("SELECT detail FROM results WHERE experiment = '6.1'")]
    return len(details), sum('"recheck"' in (d or "") for d in details)


def runs(args, model_name: str) -> None:
    from falsify.experiments import RunConfig, runner_for

    order = ["fp32", args.precision] + ([args.precision, "fp32"] if args.repeat else [])
    folders: dict = {}
    for i, p in enumerate(order):
        out = Path(args.run) / f"{model_name}-{p}{'-2' if p in folders else ''}"
        config = RunConfig.resolve(experiment="6.1", data=args.data, n_pairs=args.n_pairs, out=str(out),
                                   model=model_name, methods=args.methods, precision=p, seed=args.seed,
                                   recheck_band=None if p == "fp32" else args.recheck_band, **no_ceiling(args))
        t = time.perf_counter()
        runner_for(config, progress=False, log=lambda *_: None).run()
        n, n_re = rechecked(out)
        print(f"- `{out}`: {p}, wall {time.perf_counter() - t:.0f} s, rows' seconds {row_seconds(out):.1f}, "
              f"load average {os.getloadavg()[0]:.1f}"
              + (f"; re-check band {config.recheck_band:g} rad: {n_re} of {n} rows re-checked in fp32 "
                 f"({100 * n_re / max(1, n):.1f}%)" if p != "fp32" else ""))
        folders.setdefault(p, []).append(out)
    secs = {p: sum(row_seconds(f) for f in fs) for p, fs in folders.items()}
    print(f"\nrows' seconds fp32 / {args.precision}: **{secs['fp32'] / secs[args.precision]:.2f}x** "
          f"({secs['fp32']:.1f} s / {secs[args.precision]:.1f} s over {len(folders['fp32'])} run(s) each)\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import compare_verdicts

    compare_verdicts.main([str(folders["fp32"][0]), str(folders[args.precision][0])])
    if args.recheck:
        out = split_run(args, model_name, args.precision, "fp32")
        print(f"\nThe maps in {args.precision}, the test (the two distances) in fp32, no re-check "
              f"(`{out}`, rows' seconds {row_seconds(out):.1f}):\n")
        compare_verdicts.main([str(folders["fp32"][0]), str(out)])
    if args.maps_fp32:
        out = split_run(args, model_name, "fp32", args.precision)
        print(f"\nThe maps in fp32, the test (the two distances) in {args.precision}, no re-check (`{out}`, rows' "
              f"seconds {row_seconds(out):.1f}; fp32 / this: {secs['fp32'] / len(folders['fp32']) / row_seconds(out):.2f}x):\n")
        compare_verdicts.main([str(folders["fp32"][0]), str(out)])
    if args.repeat:
        print("\nfp32 against itself (run again, the same settings):\n")
        compare_verdicts.main([str(folders["fp32"][0]), str(folders["fp32"][1])])


def timing(args, model_name: str) -> None:
    """``--timing N``: N rounds of three fresh runs, fp32, low precision without a re-check and low
    precision re-checked at ``--recheck-band``, one after the other, so load on a shared machine
    falls on all three; per round the rows' seconds, and the median of the rounds' ratios."""
    from falsify.experiments import RunConfig, runner_for

    labels = (("fp32", "fp32", None), ("low", args.precision, 0.0), ("re-checked", args.precision, args.recheck_band))
    secs: dict = {label: [] for label, _, _ in labels}
    print(f"#### Rows' seconds, {args.timing} round(s) of fp32, {args.precision} and {args.precision} re-checked\n")
    print(f"| round | fp32 | {args.precision} | {args.precision} re-checked | rows re-checked | fp32 / {args.precision} | "
          f"fp32 / re-checked | load average |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.timing):
        for label, p, band in labels:
            out = Path(args.run) / "timing" / f"{model_name}-{label}-{r}"
            config = RunConfig.resolve(experiment="6.1", data=args.data, n_pairs=args.n_pairs, out=str(out),
                                       model=model_name, methods=args.methods, precision=p, seed=args.seed,
                                       recheck_band=band, **no_ceiling(args))
            runner_for(config, progress=False, log=lambda *_: None).run()
            secs[label].append(row_seconds(out))
        n, n_re = rechecked(out)
        f32, low, re = (secs[label][-1] for label, _, _ in labels)
        print(f"| {r + 1} | {f32:.1f} | {low:.1f} | {re:.1f} | {n_re} of {n} | {f32 / low:.2f}x | {f32 / re:.2f}x | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)
    ratio = lambda label: statistics.median(a / b for a, b in zip(secs["fp32"], secs[label]))
    print(f"\nmedian of the rounds' ratios: fp32 / {args.precision} **{ratio('low'):.2f}x**, fp32 / {args.precision} "
          f"re-checked at {config.recheck_band:g} rad **{ratio('re-checked'):.2f}x**\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import compare_verdicts

    base = Path(args.run) / "timing"
    compare_verdicts.main([str(base / f"{model_name}-fp32-0"), str(base / f"{model_name}-re-checked-0")])


def no_ceiling(args) -> dict:
    """The runs' settings for ``--no-ceiling`` (none otherwise: the run's default searches it)."""
    return {"ceiling": False} if getattr(args, "no_ceiling", False) else {}


def split_run(args, model_name: str, maps: str, test: str) -> Path:
    """6.1 with the maps made in ``maps`` precision and the test (its counterfactuals' forwards) in
    ``test``, without a re-check; the set-up runs in float32 in every run. Every explainer gets a
    shallow copy of the run's model (the same network and weights) that runs in ``maps``.
    ``maps`` low, ``test`` fp32: whether a float32 re-check of the two distances alone would bring
    back the verdicts that moved; ``maps`` fp32, ``test`` low: the design that keeps the maps in
    float32 and runs only the test's forwards in low precision."""
    import copy

    import falsify.attribution as attribution
    from falsify.experiments import RunConfig, runner_for

    out = Path(args.run) / f"{model_name}-maps-{maps}-test-{test}"
    config = RunConfig.resolve(experiment="6.1", data=args.data, n_pairs=args.n_pairs, out=str(out),
                               model=model_name, methods=args.methods, precision=test, seed=args.seed,
                               recheck_band=None if test == "fp32" else 0.0, **no_ceiling(args))
    original = attribution.get_explainer

    def maps_in(name, model, **options):
        view = copy.copy(model)  # shares the network; only its precision differs
        view.precision = maps
        return original(name, view, **options)

    attribution.get_explainer = maps_in
    try:
        runner_for(config, progress=False, log=lambda *_: None).run()
    finally:
        attribution.get_explainer = original
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dlib-resnet,sface")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=200, help="images of the data for the embedding error")
    ap.add_argument("--run", metavar="OUT", help="also run 6.1 per precision into OUT/MODEL-PRECISION and compare")
    ap.add_argument("--n-pairs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=RUN_METHODS)
    ap.add_argument("--no-ceiling", action="store_true", help="with --run: the 6.1 runs leave out the test's ceiling")
    ap.add_argument("--repeat", action="store_true", help="with --run: fp32, low, low, fp32 (4 runs)")
    ap.add_argument("--recheck-band", type=float, default=None, help="the low-precision runs' float32 re-check band "
                    "(radians; default: the run's default, falsify.experiments.recheck.DEFAULT_RECHECK_BAND; 0: none)")
    ap.add_argument("--timing", type=int, default=0, metavar="N", help="with --run: N rounds of fp32, low and low "
                    "re-checked runs instead, timed round by round (OUT/timing)")
    ap.add_argument("--recheck", action="store_true", help="with --run: also a run with the maps in low precision "
                    "and the test in fp32 (OUT/MODEL-maps-PRECISION-test-fp32)")
    ap.add_argument("--maps-fp32", action="store_true", help="with --run: also a run with the maps in fp32 and the "
                    "test in low precision, no re-check (OUT/MODEL-maps-fp32-test-PRECISION)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import falsify
    from falsify.models import load_model
    from falsify.models.precision import cpu_bf16_units

    print(f"### {args.precision} against fp32\n")
    print(f"falsify {falsify.__version__} from `{Path(falsify.__file__).parent}`; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {platform.machine()}, {os.cpu_count()} CPUs, bfloat16 units: "
          f"{cpu_bf16_units()}; load average at start {os.getloadavg()[0]:.2f}; command `python "
          f"benchmarks/precision.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"| model | forward img/s fp32 -> {args.precision} | ratio | forward+backward img/s | ratio | "
          "min cos of embeddings | max angle (rad) | images |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = load_model(name, device="cpu", precision=args.precision)  # refused here if this CPU cannot
        model.precision = "fp32"
        s = speed(model, args.precision, args.batch, args.rounds)
        cos, angle, n = embedding_error(model, args.precision, args.data, args.images)
        (f32, low, r), (b32, blow, br) = s["fwd"], s["fwd+bwd"]
        print(f"| {name} | {f32:.1f} -> {low:.1f} | **{r:.2f}x** | {b32:.1f} -> {blow:.1f} | **{br:.2f}x** | "
              f"{cos:.6f} | {angle:.2e} | {n} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.run:
        for name in args.models.split(","):
            print(f"\n#### 6.1 on {args.n_pairs} pairs, {name}, methods {args.methods}\n")
            (timing if args.timing else runs)(args, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
