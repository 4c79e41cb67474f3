"""SFace's speed against dlib's, and the limit its size sets (issue 22, part 1).

Prints, from one run in one process, at 1 torch thread and at torch's default (one per core;
``--threads N`` another count), the same threads for both models:

- the SFace / dlib forward throughput ratio (images/s, inference, batch ``--batch``);
- the SFace / dlib forward+backward ratio (gradient w.r.t. the input, as the attribution
  methods take it, same batch);
- the FLOP limit: dlib's FLOPs per image / SFace's (``torch.utils.flop_counter``), the
  images/s ratio SFace would reach at dlib's FLOP rate.

Each round times dlib, then SFace, on the same random batch; a ratio is the median over the
rounds of the per-round ratios, so background load on a shared machine slows both sides of
each ratio alike. ``--variants`` also times the steps of ``SFaceNet``'s fast path one by one
(each row adds one technique to the row above), onnxruntime on the shipped graph, and with
``--compile`` ``torch.compile`` of the module path.

Each round times both thread counts, one after the other. The SFace / dlib ratio at the default
threads should be no lower than at 1 thread (issue 30): ``SFaceNet`` runs its slices side by side,
one thread each, when it may use several.

    python benchmarks/sface_speed.py                      # ~3 min on 2 cores
    python benchmarks/sface_speed.py --variants           # ~10 min (variants at the default threads)
    python benchmarks/sface_speed.py --threads 2 --batch 16
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def flops_per_image(model) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, *model.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def time_forward(fn, x) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return x.shape[0] / (time.perf_counter() - t)


def time_backward(fn, x) -> float:
    x = x.clone().requires_grad_(True)
    t = time.perf_counter()
    out = fn(x)
    torch.autograd.grad(out.sum(), x)
    return x.shape[0] / (time.perf_counter() - t)


# -- the variants: SFace's fast path built up one technique at a time ----------------------------


def _plain(net, x):
    """The module path as before this work: every module as itself, NCHW."""
    return nn.Sequential.forward(net, x)


def _plain_cl(net, x):
    return nn.Sequential.forward(net, x.contiguous(memory_format=torch.channels_last))


def _folded(net, x, sub: int | None, direct: bool, node: bool):
    from falsify.models import sface

    grad = torch.is_grad_enabled()
    blocks, head_w, head_b = net._folded()
    x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for part in x.split(sub) if sub else (x,):
        for (w, b, a), (_, _, _, k, stride, groups) in zip(blocks, sface._CONVS):
            if grad and node:
                part = sface._ConvPReLU.apply(part, w, b, a, stride, k // 2, groups)
            elif direct:
                part = F.prelu(sface._conv(part, w, b, stride, k // 2, groups), a)
            else:
                part = F.prelu(F.conv2d(part, w, b, stride, k // 2, 1, groups), a)
        outs.append(F.linear(part.flatten(1), head_w, head_b))
    return torch.cat(outs)


def forward_variants(net, compile_: bool) -> dict:
    v = {
        "module path, NCHW (before)": lambda x: _plain(net, x),
        "+ channels_last": lambda x: _plain_cl(net, x),
        "+ BatchNorm folded": lambda x: _folded(net, x, None, False, False),
        "+ slices of 8 images": lambda x: _folded(net, x, 8, False, False),
        "+ oneDNN called directly": lambda x: _folded(net, x, 8, True, False),
        "+ slices side by side, one thread each (the fast path)": lambda x: net(x),
        "  the same, slices of 4": lambda x: _folded(net, x, 4, True, False),
        "  the same, slices of 16": lambda x: _folded(net, x, 16, True, False),
        "  the same, no slices": lambda x: _folded(net, x, None, True, False),
    }
    ort = _ort_runner()
    if ort is not None:
        v["onnxruntime, shipped int8 graph, 1 image a run"] = ort
    if compile_:
        compiled = torch.compile(lambda x: _plain_cl(net, x))
        v["torch.compile of the module path (channels_last)"] = compiled
    return v


def backward_variants(net) -> dict:
    return {
        "module path, NCHW (before)": lambda x: _plain(net, x),
        "+ channels_last": lambda x: _plain_cl(net, x),
        "+ BatchNorm folded, oneDNN directly": lambda x: _folded(net, x, None, True, False),
        "+ slices of 8 images": lambda x: _folded(net, x, 8, True, False),
        "+ conv+PReLU node (the fast path)": lambda x: net(x),
        "  the same, no slices": lambda x: _folded(net, x, None, True, True),
    }


def _ort_runner():
    """onnxruntime on the shipped graph (its fixed batch of 1), inputs cut to the image as in
    tests/test_sface.py; None if onnxruntime is not installed. Takes normalised input and undoes
    the normalisation (the graph does its own)."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    from falsify.models.sface import default_onnx_path

    model = onnx.load(str(default_onnx_path()))
    keep = [i for i in model.graph.input if i.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(x):
        # (x - 127.5) / 128 is what the graph computes from 0..255 pixels: invert it
        data = (x.numpy() * 128.0 + 127.5).astype(np.float32)
        return np.concatenate([session.run(None, {"data": d[None]})[0] for d in data])

    return run


def ratios(dlib_rate, variants: dict, x, timer, rounds: int) -> dict:
    out: dict = {k: [] for k in variants}
    rates: dict = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            d = dlib_rate()
            s = timer(fn, x)
            out[name].append(s / d)
            rates[name].append(s)
    return {k: (statistics.median(out[k]), statistics.median(rates[k]), out[k]) for k in variants}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both models besides 1 (default: torch's default, one per core)")
    ap.add_argument("--variants", action="store_true", help="time each technique of the fast path")
    ap.add_argument("--compile", action="store_true", help="with --variants: torch.compile too (minutes)")
    args = ap.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    import falsify
    from falsify.models import load_model

    dlib = load_model("dlib-resnet", device="cpu")
    sface = load_model("sface", device="cpu")
    net = sface.backbone
    b = args.batch
    xd = torch.rand(b, 3, *dlib.input_size)
    xs = torch.rand(b, 3, *sface.input_size)
    xn = sface.normalise_input(xs)  # the variants run the backbone: normalised input

    print(f"### SFace against dlib: batch {b}, {args.rounds} rounds, at 1 and {threads} thread(s)\n")
    print(f"falsify {falsify.__version__} from `{Path(falsify.__file__).parent}`; torch {torch.__version__}, "
          f"{threads} thread(s) by default; {platform.machine()}, {os.cpu_count()} CPUs; load average at "
          f"start {os.getloadavg()[0]:.2f}; command `python benchmarks/sface_speed.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n")

    fd, fs = flops_per_image(dlib), flops_per_image(sface)
    limit = fd / fs

    # 1 thread and the default, interleaved: each round times both thread counts, so load that
    # comes and goes on a shared machine falls on both
    counts = list(dict.fromkeys([1, threads]))
    for n in counts:  # warm-up (first calls allocate, fold the weights, pick kernels, start the slice threads)
        torch.set_num_threads(n)
        time_forward(dlib, xd), time_forward(sface, xs), time_backward(dlib, xd), time_backward(sface, xs)
    fwd = {n: [] for n in counts}
    bwd = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            torch.set_num_threads(n)
            fwd[n].append(ratios(lambda: time_forward(dlib, xd), {"s": sface}, xs, time_forward, 1)["s"])
            bwd[n].append(ratios(lambda: time_backward(dlib, xd), {"s": sface}, xs, time_backward, 1)["s"])
    torch.set_num_threads(threads)

    def med(rs):
        return statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), [r[0] for r in rs]

    print(f"GFLOP / image (forward): dlib {fd / 1e9:.3f}, SFace {fs / 1e9:.3f}; FLOP limit (dlib / SFace FLOPs) "
          f"**{limit:.3f}**\n")
    print("| threads | forward SFace img/s | forward SFace / dlib | forward+backward SFace img/s | "
          "forward+backward SFace / dlib | forward at % of the limit |")
    print("|---|---|---|---|---|---|")
    for n in counts:
        (fr, frate, _), (br, brate, _) = med(fwd[n]), med(bwd[n])
        print(f"| {n} | {frate:.1f} | **{fr:.3f}** | {brate:.1f} | **{br:.3f}** | {fr / limit:.0%} |")
    print()
    for n in counts:
        print(f"{n} thread(s): forward ratio {med(fwd[n])[0]:.3f} (rounds: {', '.join(f'{r:.3f}' for r in med(fwd[n])[2])}); "
              f"forward+backward ratio {med(bwd[n])[0]:.3f} (rounds: {', '.join(f'{r:.3f}' for r in med(bwd[n])[2])})")
    print(f"load average at the end {os.getloadavg()[0]:.2f} (a ratio is the median of per-round ratios, dlib and "
          "SFace timed back to back)")

    if args.variants:
        print("\n#### Forward, one technique at a time (SFace / dlib, same round)\n")
        print("| variant | SFace img/s | SFace / dlib | max abs diff to the module path |")
        print("|---|---|---|---|")
        variants = forward_variants(net, args.compile)
        with torch.inference_mode():
            ref = _plain(net, xn).numpy()
            diffs = {k: float(abs(torch.as_tensor(fn(xn)).numpy() - ref).max()) for k, fn in variants.items()}
        for name, (r, rate, _) in ratios(lambda: time_forward(dlib, xd), variants, xn, time_forward,
                                         args.rounds).items():
            print(f"| {name} | {rate:.1f} | {r:.3f} | {diffs[name]:.1e} |")
        print("\n#### Input gradient in float32 against float64 (8 random images, the same random target)\n")
        import copy

        x8 = xn[:8]
        v = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))

        def input_grad(fn, x):
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad((fn(x) * v.to(x.dtype)).sum(), x)
            return g.double()

        n64 = copy.deepcopy(net).double()
        g64 = input_grad(lambda t: _plain(n64, t), x8.double())
        rel = {"module path, float64 (the reference)": g64,
               "fast path, float64": input_grad(n64, x8.double()),
               "module path, float32": input_grad(lambda t: _plain(net, t), x8),
               "fast path, float32": input_grad(net, x8)}
        print("| gradient | relative L2 error against the float64 module path |")
        print("|---|---|")
        for name, g in rel.items():
            print(f"| {name} | {float((g - g64).norm() / g64.norm()):.1e} |")
        print("\n#### Forward+backward (input gradient), one technique at a time\n")
        print("| variant | SFace img/s | SFace / dlib |")
        print("|---|---|---|")
        for name, (r, rate, _) in ratios(lambda: time_backward(dlib, xd), backward_variants(net), xn, time_backward,
                                         args.rounds).items():
            print(f"| {name} | {rate:.1f} | {r:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
