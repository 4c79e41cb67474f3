"""What one map costs, per method: model passes and seconds per pair, the map alone.

``profile_6_1.py`` times whole 6.1 rows (the map and its falsification test); this script times
``explainer.attribute(a, f(b))`` alone on ``--n-pairs`` real pairs of the shared sample, one pair
at a time, and counts the images the model's backbone saw with :class:`profile_6_1.PassCounter`
(inference forwards, and forwards under autograd, each followed by one backward). It prints one
markdown table with the forward-equivalents per pair:

    forward-equivalents = forward images + 3 x forward+backward images

(a backward pass counted as two forwards, the usual rule; dlib's measured ratio at the best
batch sizes is 151.9 / 59.8 = 2.5, benchmarks/README.md "Model limit"). Work outside the
backbone (similarity-map's head applied per feature-map cell, RISE's mask making) is not a
model pass and shows only in the seconds.

    python benchmarks/method_cost.py --n-pairs 4 --threads 1
    python benchmarks/method_cost.py --methods similarity-map,xssab,rise --model sface
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_6_1 import DEFAULT_DATA, PassCounter, pair_batch  # noqa: E402

NEW = "similarity-map,xssab,rise,rise-dissimilarity"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LFW folder with pairs.txt (default: %(default)s)")
    ap.add_argument("--n-pairs", type=int, default=4)
    ap.add_argument("--methods", default=f"saliency,gradcam,occlusion,{NEW}", help="comma-separated (default: %(default)s)")
    ap.add_argument("--model", default="dlib-resnet")
    ap.add_argument("--seed", type=int, default=0, help="the pairs' sample seed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import falsify
    from falsify.attribution import get_explainer
    from falsify.models import load_model

    model = load_model(args.model, device="cpu")
    pairs, xa, xb, refs = pair_batch(model, args.data, args.n_pairs, args.seed)
    counter = PassCounter()
    counter.attach(model)
    n = len(pairs)
    print(f"### Cost of one map per pair: {n} pairs, model {args.model}\n")
    print(f"falsify {falsify.__version__} from `{Path(falsify.__file__).parent}`; torch threads "
          f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.2f}; command "
          f"`python benchmarks/method_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print("| method | fwd images / pair | fwd+bwd images / pair | forward-equivalents / pair | s / pair |")
    print("|---|---|---|---|---|")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        explainer = get_explainer(method, model)  # built first: a probe forward pass is not the map's
        counter.bucket = method
        t0 = time.perf_counter()
        for i in range(n):
            explainer.attribute(xa[i : i + 1], refs[i : i + 1])
        seconds = time.perf_counter() - t0
        counter.bucket = "rest"
        fwd, grad = counter.fwd[method] / n, counter.grad[method] / n
        print(f"| {method} | {fwd:.0f} | {grad:.0f} | {fwd + 3 * grad:.0f} | {seconds / n:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
