"""The ``falsify`` command line: the only module that parses arguments.

Heavy packages (torch, captum, matplotlib) are imported inside the commands, so ``falsify
--help`` and ``--version`` answer at once. Every user error becomes one line on stderr and exit
status 2 (``FALSIFY_DEBUG=1`` shows the traceback); see ``main``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .choices import (ALIGN_CHOICES, CRITERIA, DEFAULT_METHODS, EXECUTORS, EXPERIMENTS, FILLS, GRANULARITIES, METHODS,
                      PRECISIONS, PRESET_NAMES, STRATIFY_CHOICES, TARGETS, TRUTH_CONSTRUCTIONS, TRUTH_PARTS)
from .commands import calibrate_test, error_line, print_run, print_test, say_no_face, without_threshold
from .paths import check_writable, is_out_of_space, space_guard
from .stopping import say as _say, signal_name as _signal_name, stop_behind, stop_signals_as_interrupts, \
    stopped_line, stopped_status as _stopped_status

#: Errors that mean "the input or the environment is wrong": printed as one line, exit status 2,
#: no traceback. OSError covers unwritable or read-only outputs, folders given as files, ...
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, TypeError, ImportError, OSError)


# --- argument types: a bad value is refused by the parser, before anything runs ------------------

def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _delta(text: str) -> float | str:
    if text == "calibrated":
        return text
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 radians or 'calibrated', got {text}")
    return value


# --- shared argument groups ----------------------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser, default: str | None = "dlib-resnet") -> None:
    p.add_argument(
        "--model",
        default=default,
        metavar="NAME_OR_PATH",
        help="face model: 'dlib-resnet' (default), 'sface' (OpenCV Zoo's SFace), ARCH:CHECKPOINT (your own "
        "weights, a state dict read without unpickling, at the top level or one key down, in one of iresnet18/34/50/100/200 (insightface "
        "arcface_torch), facenet (facenet-pytorch), adaface-ir18/34/50/101: e.g. iresnet50:/path/backbone.pth), "
        "NAME:random (the same architecture with random weights: a control), a dlib .dat, an .onnx (insightface "
        "packs: RGB, mean=std=0.5) or a .pt/.pth holding a whole pickled nn.Module (needs --trust-pickle); "
        "`falsify models` lists the built-in models and architectures. A model file must be a face embedder: RGB "
        "input of 32 to 1024 pixels a side, one vector of >= 16 numbers out per image (else it is refused)",
    )
    p.add_argument("--align", choices=ALIGN_CHOICES, default=None,
                   help="face alignment before the model: auto (default: the model's own choice, see "
                   "`falsify models`; a dlib .dat as dlib-resnet; ARCH:CHECKPOINT as ARCH; none for .onnx/.pt "
                   "files), none (a plain "
                   "resize), or a template (five YuNet landmarks mapped onto it by a similarity transform)")
    p.add_argument("--input-size", type=_whole(1), nargs=2, metavar=("H", "W"),
                   help="model input size (ONNX with a dynamic size, .pt); not for dlib")
    p.add_argument("--mean", type=_number, nargs="+", metavar="M",
                   help="per-channel mean in [0,1] units (1 or 3 values; .onnx/.pt only)")
    p.add_argument("--std", type=_number, nargs="+", metavar="S",
                   help="per-channel std in [0,1] units (1 or 3 values, > 0; .onnx/.pt only)")
    p.add_argument("--trust-pickle", action="store_true", default=None,
                   help="allow a .pt/.pth model file to be unpickled: unpickling runs any code the file "
                   "holds, so only for files you made or trust (default: refused)")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="what the network runs in: fp32 (default), bf16 (CUDA, or a CPU with bfloat16 units: AMX or "
                   "AVX512-BF16), fp16 (CUDA); refused in one line where the machine cannot run it. Only the network: "
                   "embeddings, distances and statistics stay float32/float64")


def _one_or_three(v):
    return None if v is None else (v[0] if len(v) == 1 else list(v))


def _load_model(args: argparse.Namespace):
    from .models import load_model

    return load_model(
        args.model,
        input_size=tuple(args.input_size) if args.input_size else None,
        mean=_one_or_three(args.mean),
        std=_one_or_three(args.std),
        device=args.device,
        trust_pickle=bool(args.trust_pickle),
        align=args.align or "auto",
        precision=args.precision or "fp32",
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


def _add_calibrate_on(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibrate-on", metavar="DATA",
                   help="calibrate the thresholds, the model's prior and delta on the pairs of this data (a folder "
                   "or CSV, as --data) instead of --data's: for a data set too small to spare untested images, "
                   "e.g. a few pairs of your own calibrated on an LFW folder")


def _parse_options(items: Sequence[str] | None, default_method: str | None = None) -> dict[str, dict]:
    """``--option gradcam.layer=layer4.2.conv2 --option ig.steps=128`` -> {method: {key: value}}.

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    With ``default_method``, a plain ``KEY=VALUE`` belongs to that method.
    """
    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, opt = key.rpartition(".")  # the last dot: mylab.maps:f.normalise is (mylab.maps:f, normalise)
        if not dot and default_method:
            method, opt = default_method, key
        if not sep or not method.strip() or not opt.strip():
            form = "KEY=VALUE or METHOD.KEY=VALUE" if default_method else "METHOD.KEY=VALUE"
            raise ValueError(f"--option takes {form} (e.g. ig.steps=128), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a plain string, e.g. a layer name
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ValueError(f"--option {key}: expected a finite number, got {value!r}")
        out.setdefault(method.strip(), {})[opt.strip()] = parsed
    return out


def _methods(text: str) -> list[str]:
    """``--methods``: built-in names, ``captum:NAME`` and ``module.path:callable`` (checked, and the
    named module imported, by ``falsify.attribution`` before any work)."""
    if text.strip() == "all":
        return list(METHODS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS and ":" not in m]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(METHODS)}, "
                         "captum:NAME or module.path:callable (`falsify methods` lists them)")
    return list(dict.fromkeys(names))


def _is_layer_method(name: str) -> bool:
    """The methods ``--layer`` applies to: the CAM methods and captum's layer methods."""
    return name in CAM_METHODS or name.startswith(("captum:Layer", "captum:GuidedGradCam", "captum:InternalInfluence"))


# --- verify --------------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    from .data import load_pairs
    from .verification import verify

    pairs = load_pairs(args.data, args.pairs, n_pairs=args.n_pairs, seed=args.seed)
    if pairs.shortfall():  # --n-pairs above what the data holds: every pair is used, and one line says so
        print(f"falsify verify: note: {pairs.shortfall()}", file=sys.stderr)
    model = _load_model(args)
    result = verify(model, pairs, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    for warning in result.warnings():
        print(f"falsify verify: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(result.format())
    if getattr(model, "threshold", None) is None:
        print(f"falsify verify: note: {model.name} comes with no decision threshold (none is known for its weights); "
              f"the threshold above is the best one on these pairs. falsify run and falsify test calibrate theirs on "
              f"their data; biometric-gradcam takes one as --option biometric-gradcam.threshold={result.threshold:.4f}",
              file=sys.stderr)
    return 0


# --- models --------------------------------------------------------------------------------------

def cmd_methods(args: argparse.Namespace) -> int:
    from .attribution.listing import methods_json, methods_table

    print(methods_json() if args.json else methods_table())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.listing import models_json, models_table

    print(models_json() if args.json else models_table())
    return 0


# --- explain -------------------------------------------------------------------------------------

CAM_METHODS = ("gradcam", "gradcam++", "biometric-gradcam")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
EXPLAIN_METHODS = "gradcam,gradcam++,biometric-gradcam,ig,saliency"
TARGET_HELP = ("what the distances measure: embedding (how far f(A) moves), pair (how far the pair's angle to f(B) "
               "moves), signed-pair (only how far that angle grows: hiding evidence of B must lower the similarity) or "
               "signed-angle (the signed change of that angle: a move towards B is negative); default: the preset's "
               "(signed-angle; plain: embedding)")
CRITERION_HELP = ("absolute (d_high > tau_high, d_low < tau_low, margin >= epsilon), beyond-prior (the margin must beat "
                  "the prior map's on the same image by more than delta) or beyond-mirror (the margin of its own sets "
                  "reflected left-right); default: the preset's, see docs/method.md")


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import load_image
    from .report.explain import explain_pair, explanation_figure
    from .report.labels import quiet

    methods = _methods(args.methods)
    options = _parse_options(args.option)
    for m in options:
        if m not in methods:
            raise ValueError(f"--option names method {m!r}, which is not in --methods {','.join(methods)}")
    if args.layer:
        if not any(_is_layer_method(m) for m in methods):
            raise ValueError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}) and captum's layer methods "
                             "(captum:Layer*), none of which is in --methods")
        for m in methods:
            if _is_layer_method(m):
                options.setdefault(m, {}).setdefault("layer", args.layer)
    if args.out:
        if Path(args.out).suffix.lower() not in FIGURE_SUFFIXES:
            raise ValueError(f"--out {args.out}: the figure is written by suffix; use one of {', '.join(FIGURE_SUFFIXES)}")
        check_writable(args.out, "--out", folder=False)
    if args.save_maps:
        check_writable(args.save_maps, "--save-maps", folder=False)
    model = _load_model(args)
    methods = without_threshold(args.command, args.model, model, methods, options,
                                default=args.methods == EXPLAIN_METHODS)
    from .attribution import get_explainer

    for m in methods:  # bad options fail here, before any map is computed
        get_explainer(m, model, **options.get(m, {}))
    a, b = (load_image(p, model.input_size, model.aligner) for p in (args.image_a, args.image_b))
    say_no_face(args.command, model, (args.image_a, args.image_b))
    with tqdm(total=len(methods), desc="explaining", unit="method", disable=args.quiet) as bar:
        expl = explain_pair(model, a, b, methods, options, progress=bar)
    print(f"cosine similarity {expl.cosine:.4f}, angle {expl.angle:.4f} rad")
    if args.save_maps:  # the arrays first: a failing figure must not lose them
        written = expl.save_npz(args.save_maps)
        print(f"maps: {written}")
    if args.out:
        fig = explanation_figure(expl, labels=(Path(args.image_a).stem, Path(args.image_b).stem))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with quiet():  # matplotlib's warnings are logged, not printed
            fig.savefig(args.out, dpi=args.dpi)
        print(f"figure: {args.out}")
    return 0


# --- test ----------------------------------------------------------------------------------------

def _get_explainer(name: str, model, **options):
    from .attribution import get_explainer

    return get_explainer(name, model, **options)


def _test_config(args: argparse.Namespace):
    from .falsification import FalsificationConfig
    from .falsification.core import apply_preset

    for key, value in apply_preset(args.preset, args.fill, args.q, args.criterion, args.delta, args.target).items():
        setattr(args, key, value)
    calibrated_delta = args.calibrate_delta = args.delta == "calibrated"

    taus = (args.tau_high, args.tau_low, args.epsilon)
    if any(t is not None for t in taus) and any(t is None for t in taus):
        raise ValueError("give all three of --tau-high, --tau-low and --epsilon, or none (then they are calibrated)")
    if (args.theta_high is None) != (args.theta_low is None):
        raise ValueError("threshold regions need both --theta-high and --theta-low")
    return FalsificationConfig(
        granularity=args.granularity, grid=args.grid, n_segments=args.n_segments,
        region="threshold" if args.theta_high is not None else "quantile", q=args.q,
        theta_high=args.theta_high, theta_low=args.theta_low, fill=args.fill, K=args.K,
        tau_high=args.tau_high, tau_low=args.tau_low, epsilon=args.epsilon, seed=args.seed,
        batch_size=args.batch_size, criterion=args.criterion, delta=None if calibrated_delta else args.delta,
        target=args.target,
    )


def _test_options(args: argparse.Namespace) -> dict:
    """``falsify test``'s options of ``--method`` (``--option``, ``--layer``)."""
    options = _parse_options(args.option, default_method=args.method)
    others = sorted(set(options) - {args.method})
    if others:
        raise ValueError(f"--option names method(s) {', '.join(others)}, but --method is {args.method}")
    options = options.get(args.method, {})
    if args.layer:
        options.setdefault("layer", args.layer)
    return options


def cmd_test(args: argparse.Namespace) -> int:
    import torch

    from .data import load_image
    from .falsification import falsification_test
    from .falsification.calibration import threshold_placeholder
    from .falsification.criteria import CRITERION_CLASSES
    from .models.base import model_device

    config = _test_config(args)  # bad options fail before anything is loaded
    options = _test_options(args)
    if args.figure:
        check_writable(args.figure, "--figure", folder=False)
    model = _load_model(args)
    needs_prior = CRITERION_CLASSES[config.criterion].needs_prior or args.method == "centre"  # asked of the criterion
    # biometric-gradcam or xssab on a model without a threshold of its own takes the one calibrated below
    placeholder = threshold_placeholder(model, args.method, calibrating=True)
    calibrated_threshold = bool(placeholder) and "threshold" not in options and options.get("confidence") is not False
    if calibrated_threshold and config.tau_high is not None:
        raise ValueError(f"{args.method} needs {model.name}'s decision threshold, and the model has none of its "
                         "own: give one with --option threshold=T (falsify verify prints the best one on your pairs), "
                         "or leave --tau-high/--tau-low/--epsilon out so that the test calibrates it")
    if args.method != "centre":  # bad options fail here, before the calibration
        explainer = _get_explainer(args.method, model, **{**placeholder, **options})
    a = load_image(args.image_a, model.input_size, model.aligner)
    b = load_image(args.image_b, model.input_size, model.aligner)
    say_no_face(args.command, model, (args.image_a, args.image_b))
    config, calibration, prior = calibrate_test(
        model, config, data=args.data, pairs=args.pairs, calibrate_on=args.calibrate_on,
        calibration_pairs=args.calibration_pairs, seed=args.seed, batch_size=args.batch_size,
        tested=(args.image_a, args.image_b), prior_images=args.prior_images, calibrate_delta=args.calibrate_delta,
        needs_prior=needs_prior, progress=not (args.quiet or args.json))
    prior_map = prior.map() if prior is not None else None
    if calibrated_threshold or args.method == "centre":  # now with the calibrated threshold, or the prior
        explainer = _get_explainer(args.method, model, **options, **({"prior": prior_map} if prior else {}))

    images = torch.stack([a, b]) if args.both else a.unsqueeze(0)
    device = model_device(model)
    with torch.inference_mode():
        emb = model(torch.stack([a, b]).to(device)).float().cpu()
    references = torch.stack([emb[1], emb[0]]) if args.both else emb[1:2]
    maps = explainer(images.to(device), references.to(device))
    maps = torch.as_tensor(maps).detach().float().cpu()
    results = falsification_test(
        model, images, references, maps, config, keep_examples=bool(args.figure), progress=not (args.quiet or args.json),
        prior=prior_map,
    )
    print_test(results, images, model, config, calibration, method=args.method, pair=(args.image_a, args.image_b),
               calibrated_threshold=calibrated_threshold, as_json=args.json, figure=args.figure)
    return 0


# --- run and report ------------------------------------------------------------------------------

def _run_flags(args: argparse.Namespace) -> dict:
    """The settings given on ``falsify run``'s command line, by key (None: not given): each
    setting that declares a flag (``RunConfig.SETTINGS``) read from that flag's argument."""
    from .experiments.config import SETTINGS

    parsed = {
        "methods": lambda: _methods(args.methods) if args.methods else None,
        "method_options": lambda: _parse_options(args.option) or None,
        "input_size": lambda: list(args.input_size) if args.input_size else None,
        "mean": lambda: _one_or_three(args.mean), "std": lambda: _one_or_three(args.std),
    }
    return {k: parsed[k]() if k in parsed else getattr(args, k) for k, st in SETTINGS.items() if st.flag}


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.executor import make_executor
    from .experiments.registry import configure, runner_for

    config = configure(config_file=args.config, flags=_run_flags(args))  # the experiment's defaults and checks too
    executor = make_executor(config, verbose=args.verbose)  # no ray: one line naming the fix, before any work
    runner = runner_for(config, progress=not args.quiet, retry_errors=args.retry_errors, executor=executor)
    try:
        summary = runner.run()
    except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, SIGTERM, SIGHUP (or a library's error in its place)
        stop = stop_behind(exc)
        if stop is None:
            raise
        _say(f"falsify run: {stopped_line(stop, runner.out)}")  # the runner has cleaned up; say what is left
        return _stopped_status(stop)
    return print_run(summary, config.experiment, runner.out)


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.registry import rewrite

    # the experiment that wrote OUT checks its summary.json (one line, naming the file) before
    # anything is written; the report is then made from that summary in memory
    with space_guard(args.out, "the results store is not changed, and rerunning 'falsify report' writes the "
                               "tables, figures and report again"):
        print(rewrite(Path(args.out), figures=not args.no_figures))
    return 0


# --- the parser ----------------------------------------------------------------------------------

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
        "pairs, and how many pairs were skipped (missing or unreadable images, links leading out of the "
        "data folder), with examples as FILE:LINE. A warning says when there is one fold (the threshold is "
        "then chosen on the test pairs themselves) and when the accuracy is near chance (below 60%, or its "
        "Wilson 95% interval includes 50%).",
    )
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--n-pairs", type=_whole(1), metavar="N", help="use a seeded balanced sample of N pairs (more "
                   "than the data holds: every pair, and a line on stderr saying how many)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling pairs (default 0)")
    p.add_argument("--batch-size", type=_whole(1), default=64, help="images per forward pass (default 64)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (undefined values are null)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "explain",
        help="attribution maps of a face pair, as a figure and/or arrays",
        description="Explains A against B's embedding and B against A's: the target is the cosine "
        "similarity of the two L2-normalised embeddings. One figure row per method: face, heatmap "
        "(colour bar) and overlay, for A and for B; the title gives the pair's cosine and angle. A file name "
        "too long for its panel is shortened with an ellipsis; a character no installed font has is drawn "
        "as U+FFFD. Like verify, it says when no face was found in A or B.",
    )
    p.add_argument("image_a", help="first face image (any JPEG/PNG; resized to the model's input size)")
    p.add_argument("image_b", help="second face image")
    p.add_argument("--methods", default=EXPLAIN_METHODS,
                   help=f"comma-separated, or 'all' ({', '.join(METHODS)}); also captum:NAME and module.path:callable "
                   "(`falsify methods`); default %(default)s (without "
                   "biometric-gradcam for a model with no decision threshold of its own)")
    p.add_argument("--layer", help="layer for the CAM methods and captum:Layer* (default: the model's CAM layer, layer2.3 for "
                   "dlib-resnet; otherwise the last Conv2d with more than a 1x1 output)")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. ig.steps=128 or occlusion.window=20 (repeatable)")
    _add_model_args(p)
    p.add_argument("--out", metavar="FIG", help="write the figure (PNG, PDF or SVG by suffix)")
    p.add_argument("--dpi", type=_whole(20, 1200), default=110, help="figure resolution, 20-1200 (default 110)")
    p.add_argument("--save-maps", metavar="NPZ", help="write maps and raw attributions to an .npz (suffix added if missing)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "test",
        help="falsification test of one pair's attribution map",
        description="Explains A against B's embedding with --method, then hides the features the map "
        "ranks highest (S_high) and lowest (S_low) and measures how far A's embedding moves (geodesic "
        "distance, radians). By default (--preset beyond-prior) the map passes when its margin d_high - "
        "d_low exceeds the margin of the model's prior map (its mean occlusion map over untested "
        "calibration images) on the same image by more than delta; with --criterion absolute it passes "
        "when d_high > tau_high, d_low < tau_low and d_high - d_low >= epsilon. Otherwise it is "
        "falsified; a map with no prediction (constant) is untestable, and so is a test in which hiding "
        "either region moves the embedding by no more than float32 rounding (e.g. a flat-colour image). "
        "Like verify, it says when no face was found in A or B. Thresholds come from "
        "--tau-high/--tau-low/--epsilon, or are calibrated for the model on pairs (--data, "
        "--calibration-pairs), on the same seeded sample 'falsify run' calibrates on.",
    )
    p.add_argument("image_a", help="the face to explain (any JPEG/PNG; resized to the model's input size)")
    p.add_argument("image_b", help="the other face of the pair: the reference embedding")
    p.add_argument("--method", required=True, help=f"attribution method ({', '.join(METHODS)}; or captum:NAME, "
                   "module.path:callable: `falsify methods`)")
    p.add_argument("--layer", help="layer for CAM methods (default: the method's default)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option, e.g. steps=64 (repeatable)")
    _add_model_args(p)
    p.add_argument("--preset", choices=PRESET_NAMES, default="beyond-prior",
                   help="the test's configuration: beyond-prior (fill mean, q 0.1, criterion beyond-prior, delta 0: "
                   "the highest discriminative power in the validity study) or plain (fill blur, q 0.2, absolute "
                   "thresholds: the earlier default); --fill, --q, --criterion, --delta override it (default %(default)s)")
    p.add_argument("--fill", choices=FILLS, help="what replaces hidden pixels (default: the preset's)")
    p.add_argument("-K", type=_whole(1), default=16, help="samples per region for stochastic fills (noise, optimised; default %(default)s)")
    p.add_argument("--q", type=_number, help="fraction of pixels in S_high and in S_low, in (0, 0.5] (default: the preset's)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="grid", help="features (default %(default)s)")
    p.add_argument("--grid", type=_whole(1), default=14, help="cells per side for --granularity grid (default %(default)s)")
    p.add_argument("--n-segments", type=_whole(2), default=100, help="SLIC superpixels (default %(default)s)")
    p.add_argument("--theta-high", type=_number, help="absolute-threshold regions: S_high = map >= THETA_HIGH (with --theta-low)")
    p.add_argument("--theta-low", type=_number, help="absolute-threshold regions: S_low = map <= THETA_LOW")
    p.add_argument("--tau-high", type=_number, help="criterion in radians (all three of tau-high, tau-low, epsilon, or none: calibrate)")
    p.add_argument("--tau-low", type=_number)
    p.add_argument("--epsilon", type=_number)
    p.add_argument("--criterion", choices=CRITERIA, help=CRITERION_HELP)
    p.add_argument("--delta", type=_delta, help="radians, or 'calibrated' (the 95th percentile of the excess of maps "
                   "that know only the prior); default 0")
    p.add_argument("--target", choices=TARGETS, help=TARGET_HELP)
    p.add_argument("--prior-images", type=_whole(1), default=40, metavar="N",
                   help="calibration images whose mean occlusion map is the model's prior (beyond-prior, centre; "
                   "default %(default)s)")
    _add_data_args(p)
    p.add_argument("--calibration-pairs", type=_whole(4), default=600, metavar="N",
                   help="pairs to calibrate the thresholds on when they are not given (default %(default)s)")
    _add_calibrate_on(p)
    p.add_argument("--seed", type=int, default=0, help="seed of ties, stochastic fills and the calibration sample (default 0)")
    p.add_argument("--batch-size", type=_whole(1), default=64, help="images per forward pass (default %(default)s)")
    p.add_argument("--both", action="store_true", help="also explain and test B against A")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--figure", metavar="OUT.png", help="write x, S_high, S_low and a counterfactual of each")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser(
        "report",
        help="rewrite the tables, figures and HTML report of a run from its summary.json",
        description="Reads OUT/summary.json (written by 'falsify run') and rewrites OUT/tables/*.tex, the "
        "figures that need only the summary (OUT/figures/fig_6_1_fr, fig_6_2_fr_vs_margin; .png and "
        ".pdf) and OUT/report.html, a self-contained page. The saliency grid needs the attribution maps, "
        "so it is kept as it is when present and not made otherwise.",
    )
    p.add_argument("out", metavar="OUT", help="output folder of 'falsify run' (holds summary.json; of a run that "
                   "has not finished, it says how far it got and the command that finishes it)")
    p.add_argument("--no-figures", action="store_true", help="keep the figures as they are; only rewrite tables and HTML")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "models",
        help="list the built-in face models (input, alignment, threshold, source, licence, accuracy)",
        description="Lists every built-in model with its input size, the alignment --align auto picks, "
        "its embedding size, source file and licence, and the verification accuracy and threshold "
        "measured on the shared LFW sample for each alignment.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "methods",
        help="list the attribution methods --methods takes: built-in, registered, captum:NAME, module.path:callable",
        description="Lists falsify's own methods with their options, the methods registered in this process, "
        "the captum.attr classes falsify runs by name (captum:NAME), and the form of your own method "
        "(module.path:callable).",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "run",
        help="run an experiment (6.1: falsification rates per method; 6.2: by verification margin; 6.3: facial parts and attributes; "
        "6.4: across models; "
        "6.5: convergence of the optimised fill and sample size; 6.6: biometric vs standard methods, identity "
        "preservation of the counterfactuals and fairness by gender and race; validity: does the test falsify maps that "
        "cannot be right?; known-truth: does it pass maps that are right? composites whose evidence is known)",
        description="Runs every (method, pair) falsification test into OUT/results.sqlite, one row "
        "committed as each is computed: running the same command again resumes, and an interrupted "
        "run loses at most the rows in flight. Then writes OUT/summary.json, OUT/tables/*.tex, "
        "OUT/figures/*.png|pdf and OUT/report.html. 6.2 reads the same rows as 6.1 (computing any "
        "missing) and adds the analysis by margin. On an existing OUT, settings not given are taken "
        "from its store; given ones must match it. Thresholds tau_high, tau_low, epsilon are "
        "calibrated on the model's genuine/impostor angles unless all three are given. Every option "
        "is checked before anything is written; one run at a time may use an OUT. Ctrl-C, SIGTERM and SIGHUP "
        "stop a run cleanly: before its store exists it leaves no folder, after it the rows stay for the same "
        "command to resume; one line says which.",
    )
    p.add_argument("experiment", nargs="?", default=None, choices=list(EXPERIMENTS), help="default 6.1")
    _add_data_args(p)
    _add_model_args(p, default=None)
    p.add_argument("--methods", help="comma-separated methods, or 'all' (every built-in): built-in names, captum:NAME (a "
                   "captum.attr class) or module.path:callable (your own; its module is imported because you named "
                   f"it); `falsify methods` lists them. Default: {','.join(DEFAULT_METHODS)} (6.6: its paired families; "
                   "known-truth: the cheap gradient and CAM methods)")
    p.add_argument("--models", help="experiment 6.4: comma-separated models compared on the same pairs (default "
                   "dlib-resnet,sface,dlib-resnet:random; NAME:random is a randomised negative control)")
    p.add_argument("--n-pairs", type=_whole(1), help="seeded balanced sample of N pairs (default 200; more than the "
                   "data holds: every pair, and a line saying how many)")
    p.add_argument("-K", "--counterfactuals", dest="K", type=_whole(1),
                   help="counterfactuals per region for stochastic fills (default 16; deterministic fills use 1)")
    p.add_argument("--seed", type=int, help="seed for the pair sample, ties and fills (default 0)")
    p.add_argument("--out", help="run directory (default runs/<experiment>-<timestamp>, or the newest "
                   "one made with the same settings, which is resumed; the data and the model's file are "
                   "compared by their sha256, so other weights at the same path need a new --out)")
    p.add_argument("--config", metavar="FILE", help="TOML file with the same keys (flags override it)")
    p.add_argument("--preset", choices=PRESET_NAMES,
                   help="the test's configuration: beyond-prior (default: fill mean, q 0.1, criterion beyond-prior, "
                   "delta 0, chosen by the validity study) or plain (fill blur, q 0.2, absolute thresholds: the "
                   "earlier default); --fill, --q, --criterion, --delta override it")
    p.add_argument("--fill", choices=FILLS, help="counterfactual fill (default: the preset's)")
    p.add_argument("--granularity", choices=GRANULARITIES, help="regions (default grid, 14x14)")
    p.add_argument("--q", type=_number, help="fraction of features in S_high and in S_low, in (0, 0.5] (default: the preset's)")
    p.add_argument("--tau-high", type=_number, help="radians, >= 0; with --tau-low and --epsilon skips calibration")
    p.add_argument("--tau-low", type=_number, help="radians, >= 0")
    p.add_argument("--epsilon", type=_number, help="radians, >= 0")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. ig.steps=128 (repeatable; the method must be in --methods)")
    p.add_argument("--criterion", choices=CRITERIA, help=CRITERION_HELP)
    p.add_argument("--delta", type=_delta, help="radians, >= 0, or 'calibrated': the beyond-prior excess (default 0)")
    p.add_argument("--target", choices=TARGETS, help=TARGET_HELP)
    p.add_argument("--sanity", action="store_true", default=None,
                   help="add a row METHOD@random-model per method: its maps on a randomised copy of the model, "
                   "tested on the real model (a control every method must beat)")
    p.add_argument("--other-reference", action="store_true", default=None,
                   help="add a row METHOD@other-reference per method: maps made against the face of another "
                   "pair, tested as the true ones (is the explanation about this pair?)")
    p.add_argument("--deletion", action="store_true", default=None,
                   help="also a deletion curve per (method, genuine pair the model accepts): cells blurred in the "
                   "map's order until the decision flips (threshold-free; docs/method.md)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false", default=None,
                   help="6.1: skip the test's ceiling, a greedy search per pair for the best map the test allows "
                   "(about 350 forward passes per pair; docs/method.md)")
    p.add_argument("--labels", metavar="DIR",
                   help="demographic labels of the images (male_names.txt, female_names.txt, race_by_person.json; "
                   "e.g. ../shared/data/lfw-labels): experiments 6.3 and 6.6 then report the falsification rate by the "
                   "gender and race of each pair's image A")
    p.add_argument("--stratify", choices=STRATIFY_CHOICES,
                   help="sample the pairs balanced by this attribute of image A (half female, half male; needs "
                   "--labels; pairs whose A is unlabelled are not sampled)")
    p.add_argument("--truth", choices=TRUTH_CONSTRUCTIONS,
                   help="known-truth: how a composite is made from an impostor pair (A, B): lateral (default: B's left or "
                   "right half of the inner face, or one eye, drawn per composite, pasted on a sharp photo of the "
                   "other identity), parts (B's eyes, nose or mouth alone), average (B's parts on the average face "
                   "of untested images) or swap (B's parts into A)")
    p.add_argument("--truth-parts", choices=TRUTH_PARTS,
                   help="known-truth, average and swap: the parts of B blended in (inner: eyes, nose and mouth, default; "
                   "eyes+nose; eyes)")
    p.add_argument("--truth-min-effect", type=_number, metavar="RAD",
                   help="known-truth: leave out composites that move the pair's angle to B by less than this "
                   "(radians, >= 0; default 0: every composite that moved the pair closer to B is kept)")
    p.add_argument("--recheck-band", type=_number, metavar="RAD",
                   help="with --precision bf16/fp16: a 6.1 row whose verdict lies within RAD radians of its boundary "
                   "(excess - delta under beyond-prior) is computed again wholly in float32, and records it "
                   "(default 0.02; 0: none; docs/method.md, 'Precision')")
    _add_calibrate_on(p)
    p.add_argument("--batch-pairs", type=_whole(1), help="pairs explained together (default 8)")
    p.add_argument("--retry-errors", action="store_true",
                   help="compute the error rows of OUT again (e.g. after fixing an unreadable image)")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="who computes the rows (every experiment's): in-process (default) or ray (workers on this "
                   "machine or a Ray cluster; needs falsify[ray]); the rows are the same and this process alone "
                   "writes OUT")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="--executor ray: join this Ray cluster (HOST:6379, or auto: the one this node belongs to), "
                   "checked before anything is computed or written (one that does not answer is an error within "
                   "seconds); default: start Ray on this machine")
    p.add_argument("--workers", type=_whole(1), metavar="N",
                   help="--executor ray: worker processes of one torch thread each (default: one per CPU Ray has; "
                   "more than that is capped, with a line saying so)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="--executor ray: show Ray's own log lines (its warnings and the workers' output), which are "
                   "otherwise kept out of the terminal")
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
        with stop_signals_as_interrupts():  # SIGTERM, SIGHUP: as Ctrl-C, the same clean-up
            return func(args)
    except KeyboardInterrupt as exc:
        _say(f"falsify {args.command}: stopped by {_signal_name(exc)}")
        return _stopped_status(exc)
    except Exception as exc:
        if os.environ.get("FALSIFY_DEBUG") or not isinstance(exc, USER_ERRORS) and not is_out_of_space(exc):
            raise
        print(f"falsify {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
