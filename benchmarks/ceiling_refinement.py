"""What the ceiling's refinement adds to its screening start, and how many counterfactuals it
embeds: on N seeded pairs of the data (dlib, its alignment, fill mean, q 0.1, the absolute
criterion with fixed thresholds, which decide only the verdict, not the search), the search with
``CeilingSearch(rounds=0)`` (the screening's ranking alone) and with the default settings.

    python benchmarks/ceiling_refinement.py --data ../shared/data/lfw-sample --n-pairs 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from falsify.data import load_images, load_pairs  # noqa: E402
from falsify.falsification import FalsificationConfig  # noqa: E402
from falsify.falsification.ceiling import CeilingSearch, ceiling_search  # noqa: E402
from falsify.models import load_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-sample"))
    p.add_argument("--n-pairs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = load_model("dlib-resnet")
    pairs = load_pairs(args.data, n_pairs=args.n_pairs, seed=args.seed)
    a = load_images([q.a for q in pairs], model.input_size, align=model.aligner)[0]
    b = load_images([q.b for q in pairs], model.input_size, align=model.aligner)[0]
    with torch.inference_mode():
        refs = model(b)
    cfg = FalsificationConfig(fill="mean", q=0.1, criterion="absolute", delta=None, tau_high=0.2, tau_low=0.1,
                              epsilon=0.05, seed=args.seed)
    ids = [q.index for q in pairs]
    start = ceiling_search(model, a, refs, cfg, pair_ids=ids, search=CeilingSearch(rounds=0))
    full = ceiling_search(model, a, refs, cfg, pair_ids=ids)
    print("| pair | d_high start | d_high refined | d_low start | d_low refined | counterfactuals embedded |")
    print("|---|---|---|---|---|---|")
    for q, s, f in zip(pairs, start, full):
        print(f"| {q.index} | {s.d_high_search:.3f} | {f.d_high_search:.3f} | {s.d_low_search:.3f} | "
              f"{f.d_low_search:.3f} | {f.n_embedded} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
