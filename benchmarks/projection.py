"""How long a full Experiment 6.1 (200 pairs, every default method, the ceiling) takes, per model
and checkpoint architecture, on this machine and per core (issue 30, item 4).

    projected time = pairs x forward-equivalents per pair x seconds per image-forward

- **Forward-equivalents per pair**: from a short ``falsify run 6.1`` on ``--n-pairs`` pairs of
  the data with dlib-resnet (the default methods, the ceiling included), counting the images its
  backbone sees after the set-up with ``profile_6_1.py``'s counter, forward images + 3 x
  forward+backward images (``method_cost.py``'s rule; the set-up, calibration and the prior, is
  not counted: it does not grow with the pairs). ``--fe-per-pair N`` skips that run. The count is
  taken as the same for every model: it is set by the methods and the test, except where steps
  adapt to the model (IG's and geodesic IG's integration, the ceiling's search), which this
  projection leaves out.
- **Seconds per image-forward**: one inference forward of a ``--batch`` of random images, timed
  at 1 torch thread ("per core") and at torch's default (one per core: "this machine"), the
  fastest of ``--rounds`` rounds (load from other processes only ever slows a round), both
  thread counts in each round. Checkpoint architectures run
  with PyTorch's default initialisation (the weights do not change the cost).

Timings on a machine shared with other work are slowed by it: the script prints the load.

    python benchmarks/projection.py --fe-per-pair 2003            # ~3 min on 2 cores
    python benchmarks/projection.py --n-pairs 2                   # + a 2-pair 6.1 run to count passes
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_6_1 import DEFAULT_DATA, PassCounter  # noqa: E402

MODELS = "dlib-resnet,sface,iresnet50,iresnet100,facenet,adaface-ir101"


def forward_equivalents(data: str, n_pairs: int) -> float:
    """Forward-equivalents per pair of a default 6.1 run with dlib-resnet: every image its backbone
    sees after the set-up (the rows, the ceiling's search, the pairs' own embeddings)."""
    from falsify.experiments import RunConfig, runner_for
    from falsify.experiments import runner as runner_module

    counter = PassCounter()
    counter.bucket = "rows"
    orig_load, orig_setup = runner_module.load_run_model, runner_module.Runner._setup

    def load(config):
        model = orig_load(config)
        counter.attach(model)
        return model

    def setup(self):
        counter.bucket = "set-up"
        try:
            orig_setup(self)
        finally:
            counter.bucket = "rows"

    runner_module.load_run_model, runner_module.Runner._setup = load, setup
    try:
        out = tempfile.mkdtemp(prefix="falsify-projection-")
        config = RunConfig.resolve(experiment="6.1", data=data, n_pairs=n_pairs, out=out)
        runner_for(config, progress=False, log=lambda *_: None).run()
    finally:
        runner_module.load_run_model, runner_module.Runner._setup = orig_load, orig_setup
    return (counter.fwd["rows"] + 3 * counter.grad["rows"]) / n_pairs


def build(name: str):
    """A built-in model, or a checkpoint architecture with PyTorch's default initialisation."""
    from falsify.models import ARCHITECTURES, FaceEmbedder, load_model

    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
        return FaceEmbedder(arch.build(), input_size=arch.input_size, mean=arch.mean, std=arch.std,
                            channel_order=arch.channel_order, name=name).eval()
    return load_model(name, device="cpu")


def seconds_per_image(model, batch: int, rounds: int, counts: list[int]) -> dict:
    x = torch.rand(batch, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    times: dict = collections.defaultdict(list)
    for r in range(rounds + 1):  # round 0 warms up
        for n in counts:
            torch.set_num_threads(n)
            t = time.perf_counter()
            with torch.inference_mode():
                model(x)
            if r:
                times[n].append((time.perf_counter() - t) / batch)
    torch.set_num_threads(counts[-1])
    return {n: min(v) for n, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=MODELS, help="built-in models and architectures (default: %(default)s)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n-pairs", type=int, default=2, help="pairs of the run that counts the passes")
    ap.add_argument("--fe-per-pair", type=float, default=None, help="forward-equivalents per pair (skips the run)")
    ap.add_argument("--pairs", type=int, default=200, help="pairs of the projected run (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import falsify

    threads = torch.get_num_threads()
    counts = list(dict.fromkeys([1, threads]))
    load0 = os.getloadavg()[0]
    if args.fe_per_pair is None:
        fe, how = forward_equivalents(args.data, args.n_pairs), f"counted on a {args.n_pairs}-pair run with dlib-resnet"
    else:
        fe, how = args.fe_per_pair, "given (--fe-per-pair)"
    print(f"### A full 6.1 ({args.pairs} pairs), projected\n")
    print(f"falsify {falsify.__version__} from `{Path(falsify.__file__).parent}`; torch {torch.__version__}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} torch thread(s) by default; load average at start "
          f"{load0:.2f}; command `python benchmarks/projection.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"forward-equivalents per pair: **{fe:.0f}** ({how}); batch {args.batch}, the fastest of {args.rounds} rounds\n")
    print(f"| model | ms / image-forward, 1 thread | ms / image-forward, {threads} threads | "
          f"{args.pairs} pairs, 1 core | {args.pairs} pairs, this machine ({threads} threads) |")
    print("|---|---|---|---|---|")

    def hours(s: float) -> str:
        h = s / 3600
        return f"{h:.1f} h" if h >= 1 else f"{s / 60:.0f} min"

    for name in args.models.split(","):
        t = seconds_per_image(build(name), args.batch, args.rounds, counts)
        total = {n: args.pairs * fe * t[n] for n in counts}
        print(f"| {name} | {t[1] * 1e3:.1f} | {t[threads] * 1e3:.1f} | {hours(total[1])} | {hours(total[threads])} |",
              flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}. The set-up (calibration on 600 pairs, the prior's "
          "occlusion maps) comes on top, once per run.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
