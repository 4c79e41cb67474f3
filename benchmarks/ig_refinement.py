"""What ig's completeness refinement costs, by rule: adaptive trapezoid (the default), the
trapezoid with every interval bisected (uniform doubling) and Gauss-Legendre with doubling (the
default before). Same probes, same references, same 2% tolerance and 512-step cap.

Prints, per rule: gradient images evaluated per image (counted by wrapping the backbone's
forward), final steps, the worst |residual| / |s(x) - s(b)|, seconds, and how close each
image's map is to the Gauss-Legendre map (Pearson correlation over pixels, and the overlap of
the 20 strongest cells of the 14 x 14 grid the falsification test ranks).

    python benchmarks/ig_refinement.py                # 8 pairs of the shared sample, seed 0
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-sample"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from profile_6_1 import PassCounter, pair_batch  # this folder's counter (a forward wrapper, not a hook)

    from falsify.attribution import get_explainer
    from falsify.models import load_model

    model = load_model("dlib-resnet")
    pairs, xa, xb, refs = pair_batch(model, args.data, args.n_pairs, args.seed)
    with torch.inference_mode():
        gap = (model(xa) * F.normalize(refs, dim=1)).sum(1) - (model(torch.zeros_like(xa)) * F.normalize(refs, dim=1)).sum(1)

    counter = PassCounter()
    counter.attach(model)
    rules = {
        "gausslegendre, doubling (before)": dict(rule="gausslegendre"),
        "trapezoid, every interval bisected": dict(rule="trapezoid"),
        "trapezoid, adaptive (default)": dict(rule="trapezoid"),
    }
    results = {}
    for name, opts in rules.items():
        e = get_explainer("ig", model, **opts)
        if "every interval" in name:
            e.refine_share = 1.0
        model.__dict__.pop("_falsify_path_embeddings", None)  # no path points shared between rules
        counter.bucket = name
        t = time.perf_counter()
        raw = e.attribute(xa, refs)
        results[name] = (raw, counter.grad[name], list(e.last_steps), list(e.last_residual), time.perf_counter() - t)

    ref_raw = results["gausslegendre, doubling (before)"][0]
    print(f"### ig's refinement by rule: {args.n_pairs} aligned probes (dlib), tolerance 2%, max 512 steps\n")
    print("| rule | gradient images / image | final steps (per image) | worst residual / gap | s / image | "
          "map corr. with Gauss-Legendre (min) | top-20 cells shared (min of 20) |")
    print("|---|---|---|---|---|---|---|")
    cells = lambda m: F.adaptive_avg_pool2d(m.abs()[:, None], 14).flatten(1)
    for name, (raw, n_grad, steps, res, sec) in results.items():
        corr = [float(torch.corrcoef(torch.stack([raw[i].abs().flatten(), ref_raw[i].abs().flatten()]))[0, 1])
                for i in range(len(raw))]
        ca, cb = cells(raw), cells(ref_raw)
        top = [len(set(ca[i].topk(20).indices.tolist()) & set(cb[i].topk(20).indices.tolist())) for i in range(len(raw))]
        worst = max(abs(r) / abs(float(g)) for r, g in zip(res, gap))
        print(f"| {name} | {n_grad / len(raw):.0f} | {', '.join(map(str, steps))} | {worst:.4f} | "
              f"{sec / len(raw):.2f} | {min(corr):.3f} | {min(top)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
