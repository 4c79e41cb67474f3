"""Why the path methods (ig, geodesic-ig) refined to their cap under a low precision, and what
the stall stop (``PathExplainer.stall_factor``) costs and changes.

For ``--n-pairs`` pairs of the sample (probe = face A, reference = the embedding of face B, as
6.1 makes its maps), runs ``ig`` then ``geodesic-ig`` (sharing path points, as a run does), one
run after another in this process: in float32; in ``--precision`` without the stall stop
(refined to the cap, as before the fix); in ``--precision`` with each stall factor of
``--stall``; and, as a control, in float32 at 16 steps unrefined (how far an unconverged float32
map lies from the converged one). Prints:

1. per image: s(x) - s(b) in both precisions and their difference (the precision's error on
   the gap, which completeness compares the map's sum with); with ``--history``, each image's
   residual round by round (intervals:|residual| / |s(x) - s(b)|), in float32 and in the low
   precision without the stall stop;
2. per method and run: seconds per image (compare them only within one output), forward-
   equivalents per image (forward images + 3 x forward+backward images, as ``profile_6_1.py``
   counts them), final steps (median, max), |residual| and |residual| / |gap| (median, max),
   and the maps' agreement with the float32 maps (Spearman's rank correlation of |map| over
   pixels, median and min over the images);
3. per stall factor: how many float32 images it would have stopped before their tolerance.

    python benchmarks/path_precision.py --n-pairs 8 --seed 7 --threads 1 --stall 1.5,2,4 --history
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-sample"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stall", default="2", help="comma-separated stall factors to run in the low precision "
                    "(PathExplainer.stall_factor; default: %(default)s)")
    ap.add_argument("--history", action="store_true", help="print every image's residual history")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from profile_6_1 import PassCounter, pair_batch

    from falsify.attribution import get_explainer
    from falsify.models import load_model

    model = load_model("dlib-resnet")
    pairs, xa, xb, refs = pair_batch(model, args.data, args.n_pairs, args.seed)
    counter = PassCounter()
    counter.attach(model)
    methods = ("ig", "geodesic-ig")
    low = args.precision
    stalls = [float(f) for f in args.stall.split(",") if f]
    # (label, precision, explainer attributes): fp32; the low precision without a stall stop (refined
    # to the cap, as before); with each stall factor; and, as a control, fp32 at 16 steps unrefined
    variants = [("fp32", "fp32", {}), (f"{low}, no stall stop", low, {"stall_factor": None})] + [
        (f"{low}, stall x{f:g}", low, {"stall_factor": f}) for f in stalls] + [
        ("fp32, 16 steps, not refined", "fp32", {"tolerance": None})]
    out: dict = {}
    for label, precision, attrs in variants:
        model.precision = precision
        model.__dict__.pop("_falsify_path_embeddings", None)  # each variant its own path points
        with torch.inference_mode():
            r = F.normalize(refs, dim=1)
            gap = ((model(xa) * r).sum(1) - (model(torch.zeros_like(xa)) * r).sum(1)).double()
        for m in methods:
            e = get_explainer(m, model)
            for k, v in attrs.items():
                setattr(e, k, v)
            counter.bucket = (label, m)
            t = time.perf_counter()
            raw = e.attribute(xa, refs)
            out[label, m] = dict(raw=raw.detach(), seconds=(time.perf_counter() - t) / len(pairs), steps=list(e.last_steps), residual=list(e.last_residual),
                                 history=list(e.last_history), gap=gap,
                                 equiv=(counter.fwd[label, m] + 3 * counter.grad[label, m]) / len(pairs))
    model.precision = "fp32"
    labels = [v[0] for v in variants]
    print(f"### Path methods in fp32 and {low}: {len(pairs)} pairs, seed {args.seed}, threads "
          f"{torch.get_num_threads()}\n")
    print(f"| image | s(x) - s(b) fp32 | {low} | difference | difference / abs(gap fp32) |")
    print("|---|---|---|---|---|")
    g32, glow = out["fp32", "ig"]["gap"], out[labels[1], "ig"]["gap"]
    for i in range(len(pairs)):
        d = float(glow[i] - g32[i])
        print(f"| {i} | {float(g32[i]):+.5f} | {float(glow[i]):+.5f} | {d:+.5f} | {abs(d) / abs(float(g32[i])):.3f} |")
    if args.history:
        for m in methods:
            for label in labels[:2]:
                print(f"\n{m}, {label}: per image, intervals:abs(residual) / abs(gap) per round")
                o = out[label, m]
                for i, h in enumerate(o["history"]):
                    g = abs(float(o["gap"][i]))
                    print(f"  {i}: " + " ".join(f"{n}:{abs(r) / g:.3f}" for n, r in h))
    print("\n| method | run | s / image | forward-equivalents / image | steps (median, max) | "
          "abs(residual) (median, max) | abs(residual) / abs(gap) (median, max) | Spearman of abs(map) with fp32 (median, min) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        for label in labels:
            o = out[label, m]
            res = [abs(r) for r in o["residual"]]
            rel = [abs(r) / abs(float(g)) for r, g in zip(o["residual"], o["gap"])]
            rho = [spearman(a.abs(), b.abs()) for a, b in zip(o["raw"], out["fp32", m]["raw"])]
            print(f"| {m} | {label} | {o['seconds']:.3f} | {o['equiv']:.0f} | {statistics.median(o['steps']):.0f}, {max(o['steps'])} | "
                  f"{statistics.median(res):.4f}, {max(res):.4f} | {statistics.median(rel):.3f}, {max(rel):.3f} | "
                  f"{statistics.median(rho):.4f}, {min(rho):.4f} |")
    for f in stalls:
        for m in methods:
            hist = out["fp32", m]["history"]
            early = [i for i, h in enumerate(hist) if any(stalled(h[: t + 1], f) for t in range(len(h) - 1))]
            print(f"\nfp32 {m}: the x{f:g} stall stop would have ended {len(early)} of {len(hist)} images before "
                  f"their tolerance (images {early}); it acts only under a low precision")
    return 0


def stalled(history, factor: float) -> bool:
    """``PathExplainer._stalled``'s test on a history of (intervals, residual) rounds."""
    best = min(range(len(history)), key=lambda t: abs(history[t][1]))
    return history[-1][0] >= factor * history[best][0]


if __name__ == "__main__":
    raise SystemExit(main())
