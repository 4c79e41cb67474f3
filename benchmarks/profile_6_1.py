"""Where the time of an Experiment 6.1 run goes: per method, seconds and model passes.

Runs ``falsify run 6.1`` in this process (the real runner, its defaults: the default methods
unless ``--methods``, and the test's ceiling unless ``--no-ceiling``) on ``--n-pairs`` pairs
into a fresh folder (or ``--out``), and prints one markdown table: per method and for the
ceiling, the seconds per pair (maps and falsification test, as the run's rows record them), the
images the model saw in inference forwards and in forwards under autograd (per pair), the
forward-equivalents per pair, and for the path methods the integration steps each image ended
with. The set-up (calibration, the model's prior map) and the rest of the run are timed apart,
so the table adds up to the wall time of the run.

    forward-equivalents = forward images + 3 x forward+backward images

(a backward pass counted as two forwards, as in ``method_cost.py``): a count, not a timing, so
it does not depend on the machine's load. The last line sums them over the methods and the
ceiling: the cost of one pair of a full 6.1 in forward passes.

Passes are counted by wrapping the backbone's ``forward`` (not with a hook: a hook would switch
the dlib model off its fused inference path and slow what is measured).

    python benchmarks/profile_6_1.py --n-pairs 8                  # ~4 min on 2 cores
    python benchmarks/profile_6_1.py --n-pairs 8 --seed 7 --out runs/passes-after   # keep the store
    python benchmarks/profile_6_1.py --n-pairs 8 --align none --methods ig,geodesic-ig

To profile older code, put its source first on the path (``git archive REV src | tar -x -C
/tmp/old`` then ``PYTHONPATH=/tmp/old/src python benchmarks/profile_6_1.py ...``); the script
prints which falsify it imported.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-sample"


def pair_batch(model, data, n_pairs: int, seed: int):
    """``(pairs, xa, xb, refs)``: a seeded sample of ``n_pairs`` pairs of ``data``, their A and B
    images at the model's input size and alignment, and f(B) (the references the maps explain A
    against), computed without autograd."""
    from falsify.data import load_images, load_pairs

    pairs = load_pairs(data).sample(n_pairs, seed=seed)
    xa, _ = load_images([p.a for p in pairs], model.input_size, align=model.aligner)
    xb, _ = load_images([p.b for p in pairs], model.input_size, align=model.aligner)
    with torch.inference_mode():
        refs = model(xb).clone()  # a normal tensor: autograd may use it later
    return pairs, xa, xb, refs


class PassCounter:
    """Images through a model's backbone, split into inference and autograd forwards, by bucket."""

    def __init__(self) -> None:
        self.bucket = "set-up"
        self.fwd: dict = collections.Counter()
        self.grad: dict = collections.Counter()
        self._wrapped: set = set()

    def attach(self, model) -> None:
        backbone = model.backbone
        if id(backbone) in self._wrapped:
            return
        self._wrapped.add(id(backbone))
        inner = backbone.forward

        def forward(x, *a, **k):
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                self.grad[self.bucket] += x.shape[0]
            else:
                self.fwd[self.bucket] += x.shape[0]
            return inner(x, *a, **k)

        backbone.forward = forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LFW folder with pairs.txt (default: %(default)s)")
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--methods", default=None, help="comma-separated, or all (default: the run's default methods)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (its pairs and draws)")
    ap.add_argument("--no-ceiling", action="store_true", help="leave out the test's ceiling")
    ap.add_argument("--align", default=None, help="as falsify run --align (default: the model's own)")
    ap.add_argument("--model", default="dlib-resnet")
    ap.add_argument("--precision", default=None, help="as falsify run --precision (default fp32)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="run folder (default: a fresh temporary one)")
    ap.add_argument("--title", default="", help="a label printed in the heading (e.g. before, after)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import falsify
    from falsify.experiments import RunConfig, runner_for
    from falsify.experiments import executor as executor_module
    from falsify.experiments import runner as runner_module

    counter = PassCounter()
    seconds: dict = collections.defaultdict(float)
    steps: dict = collections.defaultdict(list)
    orig_test = executor_module.RowComputer.test

    def test(self, method, explainer, model, *a, **k):
        counter.attach(model)
        counter.attach(explainer.model)
        counter.bucket = method
        t = time.perf_counter()
        try:
            return orig_test(self, method, explainer, model, *a, **k)
        finally:
            seconds[method] += time.perf_counter() - t
            steps[method] += list(getattr(explainer, "last_steps", []) or [])
            counter.bucket = "rest"

    executor_module.RowComputer.test = test
    def timed(name):  # the run's set-up: its checks (pairs, model, store) and its preparation (calibration, prior)
        orig = getattr(runner_module.Runner, name)

        def step(self, *a, **k):
            t = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                seconds["set-up"] += time.perf_counter() - t

        setattr(runner_module.Runner, name, step)

    timed("_check")
    timed("_prepare")
    try:
        from falsify.experiments.ceiling import CeilingRows
    except ImportError:  # older falsify: no ceiling
        CeilingRows = None
    if CeilingRows is not None:
        orig_compute = CeilingRows.compute

        def compute(self, *a, **k):
            counter.attach(self.model)
            t = time.perf_counter()
            counter.bucket = "ceiling"
            try:
                for out in orig_compute(self, *a, **k):
                    seconds["ceiling"] += time.perf_counter() - t
                    counter.bucket = "rest"
                    yield out
                    t = time.perf_counter()
                    counter.bucket = "ceiling"
            finally:
                counter.bucket = "rest"

        CeilingRows.compute = compute

    out = args.out or tempfile.mkdtemp(prefix="falsify-profile-")
    extra = {"ceiling": False} if args.no_ceiling else {}
    config = RunConfig.resolve(experiment="6.1", data=args.data, n_pairs=args.n_pairs, out=out, model=args.model,
                               methods=args.methods, align=args.align, seed=args.seed, precision=args.precision,
                               **extra)
    runner = runner_for(config, progress=False, log=lambda *_: None)

    t0 = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - t0
    n = args.n_pairs

    print(f"### Experiment 6.1 profile{(' (' + args.title + ')') if args.title else ''}: {n} pairs, "
          f"model {args.model}, align {config.align}\n")
    print(f"falsify {falsify.__version__} from `{Path(falsify.__file__).parent}`; torch threads "
          f"{torch.get_num_threads()}; load average at start/end "
          f"{os.getloadavg()[0]:.2f}; command `python benchmarks/profile_6_1.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print("| method | s / pair | fwd images / pair | fwd+bwd images / pair | forward-equivalents / pair | "
          "steps per image (median, max) |")
    print("|---|---|---|---|---|---|")
    methods = [m for m in config.row_methods()]
    if counter.fwd["ceiling"] or counter.grad["ceiling"]:
        methods.append("ceiling")
    total_seconds, total_equiv = 0.0, 0.0
    for m in methods:
        st = steps.get(m)
        st_txt = f"{statistics.median(st):.0f}, {max(st)}" if st else ""
        total_seconds += seconds[m]
        equiv = (counter.fwd[m] + 3 * counter.grad[m]) / n
        total_equiv += equiv
        print(f"| {m} | {seconds[m] / n:.2f} | {counter.fwd[m] / n:.0f} | {counter.grad[m] / n:.0f} | {equiv:.0f} | "
              f"{st_txt} |")
    rest = wall - total_seconds - seconds["set-up"]
    label = "all methods and the ceiling" if "ceiling" in methods else "all methods"
    print(f"| **{label}** | **{total_seconds / n:.2f}** | | | **{total_equiv:.0f}** | |")
    rest_equiv = (counter.fwd["rest"] + 3 * counter.grad["rest"]) / n
    print(f"\nwall time {wall:.1f} s: rows {total_seconds:.1f} s, set-up (model, calibration, prior) "
          f"{seconds['set-up']:.1f} s, the rest (embedding, summary, figures) {rest:.1f} s. "
          f"Full 6.1 at n = 200 by this profile: {(total_seconds / n * 200 + seconds['set-up'] + rest) / 60:.1f} min "
          f"(the set-up does not grow with n). Outside the rows: {rest_equiv:.0f} forward-equivalents per pair "
          f"(each pair's two faces embedded). Store: `{out}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
