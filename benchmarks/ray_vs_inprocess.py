"""The same small 6.1 run in-process and with the Ray executor: wall times, and the same rows.

    python benchmarks/ray_vs_inprocess.py                       # 8 pairs, gradcam,saliency,random,occlusion
    python benchmarks/ray_vs_inprocess.py --n-pairs 2 --methods gradcam,random   # a quick check
    python benchmarks/ray_vs_inprocess.py --methods all          # every method (benchmarks/scale.sh)

The in-process run uses torch's default number of threads (as ``falsify run``); the Ray run
starts a local Ray instance with ``--workers`` actors of one torch thread each (the start of Ray
and of its workers is part of its time). Both write into fresh temporary folders with fixed
thresholds (``--tau-high/--tau-low/--epsilon``, the ``plain`` preset), so no calibration is
timed; before either run the images are read once (their landmarks cached) and a one-pair run
of ``random`` imports what a run writes with (pandas, matplotlib, ...), untimed. Each time is
that of the whole ``Runner.run()``: set-up, rows, summary, tables, figures, report. Exits with
status 1 when the two stores' rows differ. Needs the ``ray`` extra and the shared LFW sample
(``../shared/data/lfw-sample``, or ``--data``). Plain Python: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lfw-sample"


def rows(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT method, pair, verdict, cosine, angle, d_high, d_low, sd_high, sd_low, margin, "
                         "d_prime, n_high, n_low FROM results ORDER BY method, pair").fetchall()


def same_rows(a: list[tuple], b: list[tuple], tol: float = 1e-6) -> bool:
    """Equal keys, verdicts and counts; floats within ``tol`` (float32 on another number of threads)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, float) and isinstance(v, float):
                if abs(u - v) > tol:
                    return False
            elif u != v:
                return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-pairs", type=int, default=8, help="pairs of the 6.1 run (default %(default)s)")
    ap.add_argument("--methods", default="gradcam,saliency,random,occlusion", help="default %(default)s")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LFW folder with pairs.txt (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers of one thread each (default %(default)s)")
    ap.add_argument("--batch-pairs", type=int, default=2, help="pairs per unit (default %(default)s)")
    ap.add_argument("--model", default="dlib-resnet", help="default %(default)s")
    args = ap.parse_args()

    from falsify.data import load_images
    from falsify.experiments import RunConfig, runner_for
    from falsify.experiments.ray_executor import RayExecutor
    from falsify.experiments.rows import load_run_model
    from falsify.experiments.session import load_run_pairs

    settings = dict(data=args.data, model=args.model, methods=args.methods, n_pairs=args.n_pairs,
                    batch_pairs=args.batch_pairs, tau_high=0.2, tau_low=0.1, epsilon=0.05, preset="plain")
    quiet = lambda *a: None  # noqa: E731
    warm = RunConfig(**settings)
    pairs, model = load_run_pairs(warm), load_run_model(warm)
    load_images(sorted({q for p in pairs for q in (p.a, p.b)}), model.input_size, align=model.aligner)
    del warm, model

    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm_up = {**settings, "methods": "random", "n_pairs": 1, "out": str(Path(tmp) / "warm-up")}
        runner_for(RunConfig(**warm_up), progress=False, log=quiet).run()
        outs = {"in-process": Path(tmp) / "in-process", "ray": Path(tmp) / "ray"}
        t = time.perf_counter()
        runner_for(RunConfig(**settings, out=str(outs["in-process"])), progress=False, log=quiet).run()
        times["in-process"] = time.perf_counter() - t
        t = time.perf_counter()
        config = RunConfig(**settings, out=str(outs["ray"]), executor="ray", workers=args.workers)
        runner_for(config, progress=False, log=quiet, executor=RayExecutor(workers=args.workers)).run()
        times["ray"] = time.perf_counter() - t
        a, b = rows(outs["in-process"]), rows(outs["ray"])
    equal = same_rows(a, b)

    n_methods = len(RunConfig(**settings).methods)
    print(f"6.1: {len(pairs)} pairs x {n_methods} methods ({len(a)} rows), {args.model}, "
          f"batch_pairs {args.batch_pairs}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}\n")
    print("| executor | workers x torch threads | wall time (s) |")
    print("|---|---|---|")
    print(f"| in-process | 1 x {torch.get_num_threads()} | {times['in-process']:.1f} |")
    print(f"| ray (local) | {args.workers} x 1 | {times['ray']:.1f} |")
    print(f"\nray / in-process: {times['ray'] / times['in-process']:.2f}")
    print(f"rows equal: {'yes' if equal else 'NO'}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
