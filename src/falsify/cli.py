"""The ``falsify`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__

#: Errors that mean "the input is wrong": printed as one line, exit status 2, no traceback
#: (set FALSIFY_DEBUG=1 to see it).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, TypeError, ImportError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="dlib-resnet",
        metavar="NAME_OR_PATH",
        help="face model: 'dlib-resnet' (default), a dlib .dat, an .onnx (insightface packs: RGB, "
        "mean=std=0.5) or a .pt/.pth holding a whole nn.Module",
    )
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="model input size (ONNX with a dynamic size, .pt)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean in [0,1] units (1 or 3 values)")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std in [0,1] units (1 or 3 values)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _load_model(args: argparse.Namespace):
    from .models import load_model

    def one_or_three(v):
        return None if v is None else (v[0] if len(v) == 1 else v)

    return load_model(
        args.model,
        input_size=tuple(args.input_size) if args.input_size else None,
        mean=one_or_three(args.mean),
        std=one_or_three(args.std),
        device=args.device,
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="DIR",
        help="face images: an LFW-layout folder (<Name>/<Name>_NNNN.jpg, with pairs.txt), a folder "
        "of identity folders, or a CSV a,b,same. Default: LFW via scikit-learn's cache "
        "(downloads once; SCIKIT_LEARN_DATA sets where)",
    )
    p.add_argument("--pairs", metavar="FILE", help="pairs file: LFW pairs.txt or CSV a,b,same (default: DIR/pairs.txt)")


def cmd_verify(args: argparse.Namespace) -> int:
    from .data import load_pairs
    from .verification import verify

    pairs = load_pairs(args.data, args.pairs, n_pairs=args.n_pairs, seed=args.seed)
    model = _load_model(args)
    result = verify(model, pairs, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return 0


def _parse_options(items: Sequence[str] | None, default_method: str | None = None) -> dict[str, dict]:
    """``--option gradcam.layer=layer4.2.conv2 --option ig.steps=128`` -> {method: {key: value}}.

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    With ``default_method``, a plain ``KEY=VALUE`` belongs to that method.
    """
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, opt = key.partition(".")
        if not dot and default_method:
            method, opt = default_method, key
        if not sep or not method or not opt:
            form = "KEY=VALUE or METHOD.KEY=VALUE" if default_method else "METHOD.KEY=VALUE"
            raise ValueError(f"--option takes {form} (e.g. ig.steps=128), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a plain string, e.g. a layer name
        out.setdefault(method, {})[opt] = parsed
    return out


def _methods(text: str) -> list[str]:
    from .attribution import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    if text.strip() == "all":
        return list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(METHODS)}")
    return names


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import load_image
    from .report.explain import explain_pair, explanation_figure

    methods = _methods(args.methods)
    options = _parse_options(args.option)
    for m in options:
        if m not in methods:
            raise ValueError(f"--option names method {m!r}, which is not in --methods {','.join(methods)}")
    if args.layer:
        for m in methods:
            if m in ("gradcam", "gradcam++", "biometric-gradcam"):
                options.setdefault(m, {}).setdefault("layer", args.layer)
    model = _load_model(args)
    a, b = (load_image(p, model.input_size) for p in (args.image_a, args.image_b))
    with tqdm(total=len(methods), desc="explaining", unit="method", disable=args.quiet) as bar:
        expl = explain_pair(model, a, b, methods, options, progress=bar)
    print(f"cosine similarity {expl.cosine:.4f}, angle {expl.angle:.4f} rad")
    if args.out:
        fig = explanation_figure(expl, labels=(Path(args.image_a).stem, Path(args.image_b).stem))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=args.dpi)
        print(f"figure: {args.out}")
    if args.save_maps:
        expl.save_npz(args.save_maps)
        print(f"maps: {args.save_maps}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import RunConfig, Runner

    overrides = {
        "experiment": args.experiment, "data": args.data, "pairs": args.pairs, "model": args.model,
        "methods": _methods(args.methods) if args.methods else None, "n_pairs": args.n_pairs,
        "K": args.K, "seed": args.seed, "out": args.out, "fill": args.fill,
        "granularity": args.granularity, "q": args.q, "tau_high": args.tau_high,
        "tau_low": args.tau_low, "epsilon": args.epsilon, "batch_pairs": args.batch_pairs,
        "device": args.device, "method_options": _parse_options(args.option) or None,
    }
    if args.config:
        config = RunConfig.from_toml(args.config, **overrides)
    else:
        config = RunConfig(**{k: v for k, v in overrides.items() if v is not None})
    runner = Runner(config, progress=not args.quiet)
    summary = runner.run()
    print(_run_table(summary))
    print(f"results: {runner.out}/results.sqlite\nreport:  {runner.out}/report.html")
    return 0


def _run_table(summary: dict) -> str:
    def pct(x):
        return "  n/a" if x is None else f"{100 * x:5.1f}"

    lines = [f"experiment {summary['experiment']} on {summary['data']['n_pairs']} pairs, model {summary['model']}",
             f"{'method':18s} {'pass':>5s} {'fals':>5s} {'untest':>6s} {'err':>4s}   FR%  [95% CI]      d_high  d_low  s/pair"]
    for m in summary["methods"]:
        dh = "  n/a" if m["mean_d_high"] is None else f"{m['mean_d_high']:.3f}"
        dl = "  n/a" if m["mean_d_low"] is None else f"{m['mean_d_low']:.3f}"
        sp = "" if m["seconds_per_pair"] is None else f"{m['seconds_per_pair']:.2f}"
        lines.append(f"{m['method']:18s} {m['n_passed']:5d} {m['n_falsified']:5d} {m['n_untestable']:6d} "
                     f"{m['n_error']:4d}  {pct(m['fr'])} [{pct(m['ci_low'])},{pct(m['ci_high'])}]   {dh}  {dl}  {sp}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falsify",
        description="Attribution maps for face verification, and falsification tests of them.",
    )
    parser.add_argument("--version", action="version", version=f"falsify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "verify",
        help="verification accuracy of a face model on pairs (LFW protocol)",
        description="LFW protocol: for each fold the cosine-similarity threshold is chosen on the "
        "other folds and accuracy measured on it; prints mean and std over folds, ROC AUC over all "
        "pairs, and how many pairs were skipped (missing or unreadable images).",
    )
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--n-pairs", type=int, metavar="N", help="use a seeded balanced sample of N pairs")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling pairs (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    from .attribution import METHODS

    p = sub.add_parser(
        "explain",
        help="attribution maps of a face pair, as a figure and/or arrays",
        description="Explains A against B's embedding and B against A's: the target is the cosine "
        "similarity of the two L2-normalised embeddings. One figure row per method: face, heatmap "
        "(colour bar) and overlay, for A and for B; the title gives the pair's cosine and angle.",
    )
    p.add_argument("image_a", help="first face image (any JPEG/PNG; resized to the model's input size)")
    p.add_argument("image_b", help="second face image")
    p.add_argument("--methods", default="gradcam,gradcam++,biometric-gradcam,ig,saliency",
                   help=f"comma-separated, or 'all' ({', '.join(METHODS)}); default %(default)s")
    p.add_argument("--layer", help="layer for CAM methods (default: the last Conv2d)")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. ig.steps=128 or occlusion.window=20 (repeatable)")
    _add_model_args(p)
    p.add_argument("--out", metavar="FIG", help="write the figure (PNG, PDF or SVG by suffix)")
    p.add_argument("--dpi", type=int, default=110, help="figure resolution (default 110)")
    p.add_argument("--save-maps", metavar="NPZ", help="write maps and raw attributions to an .npz")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)

    from .falsification.command import add_test_command

    add_test_command(sub)

    from .report.html import add_report_command

    add_report_command(sub)

    p = sub.add_parser(
        "run",
        help="run an experiment (6.1: falsification rates per method; 6.2: by verification margin)",
        description="Runs every (method, pair) falsification test into OUT/results.sqlite, one row "
        "committed as each is computed: running the same command again resumes, and an interrupted "
        "run loses at most the rows in flight. Then writes OUT/summary.json, OUT/tables/*.tex, "
        "OUT/figures/*.png|pdf and OUT/report.html. 6.2 reads the same rows as 6.1 (computing any "
        "missing) and adds the analysis by margin. Thresholds tau_high, tau_low, epsilon are "
        "calibrated on the model's genuine/impostor angles unless all three are given.",
    )
    p.add_argument("experiment", nargs="?", default=None, choices=["6.1", "6.2"], help="default 6.1")
    _add_data_args(p)
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="face model (default dlib-resnet)")
    p.add_argument("--methods", help="comma-separated methods, or 'all' (default)")
    p.add_argument("--n-pairs", type=int, help="seeded balanced sample of N pairs (default 200)")
    p.add_argument("-K", "--counterfactuals", dest="K", type=int,
                   help="counterfactuals per region for stochastic fills (default 16; deterministic fills use 1)")
    p.add_argument("--seed", type=int, help="seed for the pair sample, ties and fills (default 0)")
    p.add_argument("--out", help="run directory (default runs/<experiment>-<timestamp>, or the newest "
                   "one made with the same settings, which is resumed)")
    p.add_argument("--config", metavar="FILE", help="TOML file with the same keys (flags override it)")
    p.add_argument("--fill", help="counterfactual fill: blur (default), mean, zero, noise, optimised")
    p.add_argument("--granularity", help="regions: grid (default, 14x14), pixel, superpixel")
    p.add_argument("--q", type=float, help="fraction of features in S_high and in S_low (default 0.2)")
    p.add_argument("--tau-high", type=float, help="radians; with --tau-low and --epsilon skips calibration")
    p.add_argument("--tau-low", type=float, help="radians")
    p.add_argument("--epsilon", type=float, help="radians")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. ig.steps=128 (repeatable)")
    p.add_argument("--batch-pairs", type=int, help="pairs explained together (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        print("falsify: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if os.environ.get("FALSIFY_DEBUG"):
            raise
        print(f"falsify {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
