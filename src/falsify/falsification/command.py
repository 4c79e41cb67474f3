"""``falsify test A.jpg B.jpg --method NAME``: the falsification test of one pair's map.

Wire it into the CLI with ``add_test_command(subparsers)``.

``python -m falsify.falsification.command --data DIR [--study N]`` calibrates the thresholds for a
model on pairs and, with ``--study``, reruns the measurements behind the defaults
(docs/method.md (falsification test)).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..models.base import model_device
from .core import FalsificationConfig, FalsificationResult, falsification_test
from .counterfactuals import FILLS
from .regions import GRANULARITIES


def _get_explainer(name: str, model, **options):
    from ..attribution import get_explainer

    return get_explainer(name, model, **options)


def _parse_options(items: Sequence[str] | None, method: str) -> dict:
    """``KEY=VALUE`` (or ``METHOD.KEY=VALUE``) -> {key: value} for ``method``."""
    from ..cli import _parse_options as parse

    options = parse(items, default_method=method)
    others = sorted(set(options) - {method})
    if others:
        raise ValueError(f"--option names method(s) {', '.join(others)}, but --method is {method}")
    return options.get(method, {})


def add_test_command(subparsers) -> argparse.ArgumentParser:
    """Register ``falsify test`` on the CLI's subparsers; returns its parser."""
    from ..cli import _add_data_args, _add_model_args

    p = subparsers.add_parser(
        "test",
        help="falsification test of one pair's attribution map",
        description="Explains A against B's embedding with --method, then hides the features the map "
        "ranks highest (S_high) and lowest (S_low) and measures how far A's embedding moves (geodesic "
        "distance, radians). The map passes when d_high > tau_high, d_low < tau_low and d_high - d_low "
        ">= epsilon; otherwise it is falsified; a map with no prediction (constant) is untestable. "
        "Thresholds come from --tau-high/--tau-low/--epsilon, or are calibrated for the model on "
        "pairs (--data, --calibration-pairs).",
    )
    p.add_argument("image_a", help="the face to explain (any JPEG/PNG; resized to the model's input size)")
    p.add_argument("image_b", help="the other face of the pair: the reference embedding")
    p.add_argument("--method", required=True, help="attribution method (e.g. gradcam, ig, occlusion)")
    p.add_argument("--layer", help="layer for CAM methods (default: the method's default)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option, e.g. steps=64 (repeatable)")
    _add_model_args(p)
    d = FalsificationConfig()
    p.add_argument("--fill", choices=FILLS, default=d.fill, help="what replaces hidden pixels (default %(default)s)")
    p.add_argument("-K", type=int, default=d.K, help="samples per region for stochastic fills (noise, optimised; default %(default)s)")
    p.add_argument("--q", type=float, default=d.q, help="fraction of pixels in S_high and in S_low (default %(default)s)")
    p.add_argument("--granularity", choices=GRANULARITIES, default=d.granularity, help="features (default %(default)s)")
    p.add_argument("--grid", type=int, default=d.grid, help="cells per side for --granularity grid (default %(default)s)")
    p.add_argument("--n-segments", type=int, default=d.n_segments, help="SLIC superpixels (default %(default)s)")
    p.add_argument("--theta-high", type=float, help="absolute-threshold regions: S_high = map >= THETA_HIGH (with --theta-low)")
    p.add_argument("--theta-low", type=float, help="absolute-threshold regions: S_low = map <= THETA_LOW")
    p.add_argument("--tau-high", type=float, help="criterion in radians (all three of tau-high, tau-low, epsilon, or none: calibrate)")
    p.add_argument("--tau-low", type=float)
    p.add_argument("--epsilon", type=float)
    _add_data_args(p)
    p.add_argument("--calibration-pairs", type=int, default=600, metavar="N",
                   help="pairs to calibrate the thresholds on when they are not given (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of ties and stochastic fills (default 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per forward pass (default %(default)s)")
    p.add_argument("--both", action="store_true", help="also explain and test B against A")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--figure", metavar="OUT.png", help="write x, S_high, S_low and a counterfactual of each")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_test)
    return p


def _config_from_args(args: argparse.Namespace) -> FalsificationConfig:
    taus = (args.tau_high, args.tau_low, args.epsilon)
    if any(t is not None for t in taus) and any(t is None for t in taus):
        raise ValueError("give all three of --tau-high, --tau-low and --epsilon, or none (then they are calibrated)")
    if (args.theta_high is None) != (args.theta_low is None):
        raise ValueError("threshold regions need both --theta-high and --theta-low")
    region = "threshold" if args.theta_high is not None else "quantile"
    return FalsificationConfig(
        granularity=args.granularity,
        grid=args.grid,
        n_segments=args.n_segments,
        region=region,
        q=args.q,
        theta_high=args.theta_high,
        theta_low=args.theta_low,
        fill=args.fill,
        K=args.K,
        tau_high=args.tau_high,
        tau_low=args.tau_low,
        epsilon=args.epsilon,
        seed=args.seed,
        batch_size=args.batch_size,
    )


def cmd_test(args: argparse.Namespace) -> int:
    from ..cli import _load_model
    from ..data import load_image, load_pairs
    from .calibration import calibrate

    config = _config_from_args(args)  # bad options fail before anything is loaded
    model = _load_model(args)
    a = load_image(args.image_a, model.input_size)
    b = load_image(args.image_b, model.input_size)
    calibration = None
    if not config.has_criterion:
        pairs = load_pairs(args.data, args.pairs, n_pairs=args.calibration_pairs, seed=args.seed)
        calibration = calibrate(model, pairs, batch_size=args.batch_size, progress=not (args.quiet or args.json))
        config = calibration.apply(config)
    options = _parse_options(args.option, args.method)
    if args.layer:
        options.setdefault("layer", args.layer)
    explainer = _get_explainer(args.method, model, **options)

    images = torch.stack([a, b]) if args.both else a.unsqueeze(0)
    device = model_device(model)
    with torch.inference_mode():
        emb = model(torch.stack([a, b]).to(device)).float().cpu()
    references = torch.stack([emb[1], emb[0]]) if args.both else emb[1:2]
    maps = explainer(images.to(device), references.to(device))
    maps = torch.as_tensor(maps).detach().float().cpu()
    results = falsification_test(
        model, images, references, maps, config, keep_examples=bool(args.figure), progress=not (args.quiet or args.json)
    )
    names = [(args.image_a, args.image_b), (args.image_b, args.image_a)][: len(results)]

    if args.json:
        out = {
            "method": args.method,
            "model": getattr(model, "name", args.model),
            "config": config.to_dict(),
            "calibration": calibration.to_dict() if calibration else None,
            "results": [{"image": x, "reference": y, **r.to_dict()} for (x, y), r in zip(names, results)],
        }
        print(json.dumps(out, indent=2, allow_nan=False, default=_json_default))
    else:
        if calibration is not None:
            print(
                f"thresholds calibrated on {calibration.n_genuine + calibration.n_impostor} pairs: theta* = "
                f"{calibration.threshold_angle:.4f} rad; tau_high {config.tau_high:.4f}, tau_low "
                f"{config.tau_low:.4f}, epsilon {config.epsilon:.4f}"
            )
        for (x, y), r in zip(names, results):
            print(f"\n{Path(x).name} explained against {Path(y).name} ({args.method}, {getattr(model, 'name', args.model)})")
            if r.pair_angle is not None:
                print(f"pair      angle {r.pair_angle:.4f} rad (cos {math.cos(r.pair_angle):.4f})")
            print(r.format())
    if args.figure:
        fig = falsification_figure(images, results, [Path(x).stem for x, _ in names], method=args.method)
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110)
        if not args.json:
            print(f"\nfigure: {args.figure}")
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _overlay(img: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = img.copy()
    out[mask] = 0.35 * out[mask] + 0.65 * np.asarray(colour, dtype=np.float32)
    return out


def falsification_figure(images: torch.Tensor, results: Sequence[FalsificationResult], labels: Sequence[str], method: str = ""):
    """One row per tested image: x, S_high overlay, S_low overlay, a high and a low counterfactual.

    Needs results from ``falsification_test(..., keep_examples=True)``. Returns a matplotlib
    ``Figure`` (no pyplot, so no display backend is needed).
    """
    from matplotlib.figure import Figure

    from .core import COND_HIGH, COND_LOW, COND_MARGIN

    rows = len(results)
    fig = Figure(figsize=(13, 3.3 * rows + 0.4))
    axes = fig.subplots(rows, 5, squeeze=False)
    for row, (img, r, label) in enumerate(zip(images, results, labels)):
        x = img.permute(1, 2, 0).numpy()
        for ax in axes[row]:
            ax.axis("off")
        axes[row][0].imshow(np.clip(x, 0, 1))
        if r.verdict == "untestable" or r.high_mask is None:
            axes[row][0].set_title(f"{label}\nUNTESTABLE", fontsize=9)
            axes[row][1].text(0.0, 0.5, "\n".join(r.failed), fontsize=9, wrap=True, transform=axes[row][1].transAxes)
            continue

        def mark(cond: str) -> str:
            return "FAILED" if cond in r.failed else "ok"

        colour = {"passed": "darkgreen", "falsified": "firebrick"}.get(r.verdict, "black")
        axes[row][0].set_title(
            f"{label}\n{r.verdict.upper()}\nmargin {r.margin:.3f} >= eps {r.epsilon:.3f}: {mark(COND_MARGIN)}",
            fontsize=9,
            color=colour,
        )
        hm, lm = r.high_mask.numpy(), r.low_mask.numpy()
        panels = [
            (_overlay(x, hm, (1.0, 0.15, 0.1)), f"S_high ({r.n_high} px)"),
            (_overlay(x, lm, (0.1, 0.4, 1.0)), f"S_low ({r.n_low} px)"),
            (r.example_high.permute(1, 2, 0).numpy(),
             f"hide S_high: d={r.distances_high[0]:.3f} rad\nd_high {r.d_high:.3f} > tau_high {r.tau_high:.3f}: {mark(COND_HIGH)}"),
            (r.example_low.permute(1, 2, 0).numpy(),
             f"hide S_low: d={r.distances_low[0]:.3f} rad\nd_low {r.d_low:.3f} < tau_low {r.tau_low:.3f}: {mark(COND_LOW)}"),
        ]
        for ax, (im, title) in zip(axes[row][1:], panels):
            ax.imshow(np.clip(im, 0, 1))
            ax.set_title(title, fontsize=9)
    fig.suptitle(f"falsification test{': ' + method if method else ''} (fill {results[0].fill}, {results[0].granularity})")
    fig.tight_layout()
    return fig


def calibration_main(argv=None) -> int:
    """``python -m falsify.falsification.command``: calibrate a model, optionally rerun the study."""
    parser = argparse.ArgumentParser(
        prog="python -m falsify.falsification.command",
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
    from ..data import load_pairs
    from ..models import load_model
    from .calibration import calibrate, study

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
    sys.exit(calibration_main())
