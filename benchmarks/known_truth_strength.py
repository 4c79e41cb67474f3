"""How strong is each known-truth construction? For N seeded impostor pairs (A, B) of the data,
every construction (base: the average face or A) x part set (eyes, eyes+nose, inner) is built as
``falsify run known-truth`` builds it, and the effect on the pair is measured: angle(f(base),
f(B)) - angle(f(x'), f(B)) in radians (> 0: the composite is closer to B). The average face is the
mean of 40 aligned images that no tested pair uses (as the run's prior images are).

    python benchmarks/known_truth_strength.py --data ../shared/data/lfw-sample --n-pairs 40 [--model sface]

Prints a Markdown table: per construction, the median effect with its quartiles, the share of
composites closer to B, the median cosine gain and the truth's area.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from falsify.choices import TRUTH_CONSTRUCTIONS, TRUTH_PARTS  # noqa: E402
from falsify.data import load_images, load_pairs  # noqa: E402
from falsify.experiments import configure  # noqa: E402
from falsify.experiments.exp_6_3 import frame_points  # noqa: E402
from falsify.experiments.known_truth import EXPERIMENT, Construction, composite  # noqa: E402
from falsify.experiments.rows import load_run_model  # noqa: E402
from falsify.falsification.stages import embed  # noqa: E402
from falsify.geometry import geodesic_distance  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-sample"))
    p.add_argument("--model", default="dlib-resnet")
    p.add_argument("--n-pairs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    c = configure(experiment="known-truth", data=args.data, model=args.model, n_pairs=args.n_pairs, seed=args.seed)
    model = load_run_model(c)
    pairs = EXPERIMENT.pairs(c)  # impostor pairs, as the benchmark runs on
    size = tuple(model.input_size)
    used = {q for pr in pairs for q in (pr.a, pr.b)}
    others = [q for q in dict.fromkeys(x for pr in load_pairs(args.data) for x in (pr.a, pr.b)) if q not in used][:40]
    average = load_images(others, size, errors="skip", align=model.aligner)[0].mean(dim=0)
    a_imgs = load_images([pr.a for pr in pairs], size, align=model.aligner)[0]
    b_imgs = load_images([pr.b for pr in pairs], size, align=model.aligner)[0]
    f_b = embed(model, b_imgs, 64, "cpu").double()
    print(f"{args.model}: {len(pairs)} impostor pairs of {args.data} (seed {args.seed}); average face of {len(others)} "
          "other images\n")
    print("| construction | parts | n | median effect (rad) | IQR | closer to B | median cos gain | truth area |")
    print("|---|---|---|---|---|---|---|---|")
    for construction in TRUTH_CONSTRUCTIONS:
        for parts in TRUTH_PARTS:
            xs, bases, keep, areas = [], [], [], []
            for i, pr in enumerate(pairs):
                pts, why = frame_points(model, pr.a if construction == "swap" else pr.b)
                if why:
                    continue
                con = Construction(pts, size, parts)
                base = a_imgs[i] if construction == "swap" else average
                xs.append(composite(base, b_imgs[i], con.alpha))
                bases.append(base)
                keep.append(i)
                areas.append(con.truth.mean())
            e = embed(model, torch.stack(xs + bases), 64, "cpu").double()
            ex, eb = e[: len(xs)], e[len(xs):]
            r = f_b[keep]
            before, after = geodesic_distance(eb, r), geodesic_distance(ex, r)
            eff = (before - after).numpy()
            gain = (torch.cos(after) - torch.cos(before)).numpy()
            q1, q2, q3 = np.percentile(eff, [25, 50, 75])
            print(f"| {construction} | {parts} | {len(keep)} | {q2:.4f} | [{q1:.4f}, {q3:.4f}] | "
                  f"{100 * (eff > 0).mean():.0f}% | {np.median(gain):+.4f} | {100 * np.mean(areas):.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
