"""Calibrate the falsification thresholds for a model on pairs, and optionally rerun the
measurements the defaults were chosen from (docs/method.md, falsification test).

    python docs/scripts/calibration_study.py --data ../shared/data/lfw-sample --n-pairs 600 --study 40 --optimised 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python docs/scripts/calibration_study.py",
        description="Calibrate the falsification thresholds for a model on pairs; optionally rerun "
        "the measurements behind the defaults (docs/method.md (falsification test)).",
    )
    parser.add_argument("--data", help="pairs: LFW-layout folder with pairs.txt, identity folders or a CSV (default: LFW via scikit-learn)")
    parser.add_argument("--pairs", help="pairs file (default DATA/pairs.txt)")
    parser.add_argument("--model", default="dlib-resnet")
    parser.add_argument("--n-pairs", type=int, default=600, help="balanced seeded sample of pairs to calibrate on (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", type=int, metavar="N", default=0, help="also rerun the default-choosing study on N images")
    parser.add_argument("--optimised", type=int, metavar="M", default=0, help="with --study: also run the optimised fill on M images (slow on a CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from falsify.data import load_pairs
    from falsify.falsification.calibration import calibrate, study
    from falsify.models import load_model

    model = load_model(args.model)
    pairs = load_pairs(args.data, args.pairs, n_pairs=args.n_pairs, seed=args.seed)
    t0 = time.time()
    cal = calibrate(model, pairs)
    if args.json:
        print(json.dumps(cal.to_dict(), indent=2))
    else:
        print(cal.format())
        print(f"(calibration: {time.time() - t0:.0f} s)")
    if args.study:
        t0 = time.time()
        study(model, pairs, n_images=args.study, seed=args.seed, calibration=cal, optimised=args.optimised)
        print(f"\n(study: {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
