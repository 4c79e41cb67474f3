"""The ``falsify`` command line: the only module that parses arguments.

Heavy packages (torch, captum, matplotlib) are imported inside the commands, so ``falsify
--help`` and ``--version`` answer at once. Every user error becomes one line on stderr and exit
status 2 (``FALSIFY_DEBUG=1`` shows the traceback); see ``main``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .choices import (ALIGN_CHOICES, CRITERIA, DEFAULT_METHODS, EXECUTORS, EXPERIMENTS, FILLS, GRANULARITIES, METHODS,
                      PRECISIONS, PRESET_NAMES, STRATIFY_CHOICES, TARGETS, THRESHOLD_METHODS, TRUTH_CONSTRUCTIONS, TRUTH_PARTS)
from .paths import OutOfSpaceError, check_writable, is_out_of_space, space_guard

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

def models_table() -> str:
    """The built-in models, as ``falsify models`` prints them."""
    from .choices import RANDOM_SUFFIX
    from .models import MODELS

    lines = []
    for info in MODELS.values():
        h, w = info.input_size
        lines += [
            f"{info.name}",
            f"  {info.description}",
            f"  input        {h}x{w} RGB; alignment {info.align} (--align auto)",
            f"  embedding    {info.embedding_dim}-d, L2-normalised",
            f"  source       {info.source}",
            f"  licence      {info.licence}",
            "  measured on the shared LFW sample (falsify verify, 3 folds; docs/results.md):",
        ]
        for align in sorted(set(info.thresholds) | set(info.accuracy), key=lambda a: a != info.align):
            acc = info.accuracy.get(align)
            th = info.thresholds.get(align)
            lines.append(f"    --align {align:<12} accuracy {'n/a' if acc is None else f'{acc:.2%}'}, "
                         f"threshold cos >= {'n/a' if th is None else f'{th:.4f}'}"
                         + ("  (default)" if align == info.align else ""))
        lines.append(f"  {info.name}{RANDOM_SUFFIX}: the same network with every weight redrawn (seed 0), a control")
        lines.append("")
    lines += architectures_table()
    lines.append("Any other model: a path to an .onnx, a dlib .dat, or a .pt/.pth (--trust-pickle); see --help.")
    return "\n".join(lines)


def architectures_table() -> list[str]:
    """The architectures of ``--model ARCH:CHECKPOINT``, one block per family."""
    from .models.checkpoints import ARCHITECTURES, FAMILIES

    import textwrap

    lines = [
        "Your own checkpoints: --model ARCH:CHECKPOINT (e.g. iresnet50:/path/backbone.pth). The file is read with",
        "torch.load(weights_only=True): tensors and plain values only, nothing unpickled as code, every key and shape",
        "checked. There is no published threshold for your weights: falsify run and falsify test calibrate one on",
        "the data, falsify verify prints the best one on its pairs. ARCH:CHECKPOINT:random is the randomised control.",
        "",
    ]

    def field(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, 112, initial_indent=f"  {label:<13}", subsequent_indent=" " * 15,
                             break_on_hyphens=False, break_long_words=False)

    for family, title in FAMILIES.items():
        archs = [a for a in ARCHITECTURES.values() if a.family == family]
        a = archs[0]
        h, w = a.input_size
        cams = " / ".join(dict.fromkeys(x.cam_layer for x in archs))
        lines += [", ".join(x.name for x in archs), f"  {title}"]
        if a.blocks:
            lines += field("blocks", "; ".join(f"{x.name} {'-'.join(map(str, x.blocks))}" for x in archs))
        lines += [
            *field("input", f"{h}x{w}; alignment {a.align} (--align auto): {a.alignment_note}"),
            *field("normalised", a.normalisation),
            *field("embedding", f"{a.embedding_dim}-d, L2-normalised"),
            *field("checkpoint", a.checkpoint),
            *field("CAM layer", f"{cams}: {a.cam_note}"),
            *field("key names", a.source),
            "",
        ]
    return lines


def methods_table() -> str:
    """What ``--methods`` takes, as ``falsify methods`` prints it."""
    import textwrap

    from .attribution import available_methods, method_options
    from .choices import CONTROLS

    avail = available_methods()
    wrap = lambda text: textwrap.wrap(text, 110, initial_indent="  ", subsequent_indent="  ",  # noqa: E731
                                      break_on_hyphens=False)
    lines = ["Built-in methods (--methods NAME; options as --option NAME.KEY=VALUE):"]
    for m in avail["builtin"]:
        opts = ", ".join(method_options(m))
        lines.append(f"  {m:<18} {'control; ' if m in CONTROLS else ''}options: {opts or '-'}")
    lines += ["", "Registered in this process (falsify.attribution.register_method):"]
    lines += [f"  {m}" for m in avail["registered"]] or ["  (none)"]
    lines += ["", "captum's attributions by name (--methods captum:NAME; the same similarity target; layer methods "
              "take --layer or --option captum:NAME.layer=..., default the model's CAM layer):"]
    lines += wrap(", ".join(avail["captum"]))
    lines += ["", "Your own method: --methods module.path:callable, a function method(model, images, references) -> "
              "maps", "  ((N,3,H,W) in [0,1], (N,D) -> (N,H,W)) or an Explainer class; the module is imported "
              "because you named it", "  (put its folder on PYTHONPATH). See README.md, 'Your own method'."]
    return "\n".join(lines)


def cmd_methods(args: argparse.Namespace) -> int:
    if args.json:
        from .attribution import available_methods

        print(json.dumps(available_methods(), indent=2))
    else:
        print(methods_table())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.json:
        import dataclasses

        from .models import ARCHITECTURES, MODELS

        print(json.dumps([{"kind": "model", **dataclasses.asdict(i)} for i in MODELS.values()]
                         + [{"kind": "architecture", **dataclasses.asdict(a)} for a in ARCHITECTURES.values()],
                         indent=2))
    else:
        print(models_table())
    return 0


# --- explain -------------------------------------------------------------------------------------

CAM_METHODS = ("gradcam", "gradcam++", "biometric-gradcam")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
EXPLAIN_METHODS = "gradcam,gradcam++,biometric-gradcam,ig,saliency"



def _without_threshold(model, args: argparse.Namespace, methods: list[str], options: dict, default: bool) -> list[str]:
    """``methods`` for a model without a decision threshold (a user's checkpoint, ``NAME:random``):
    biometric-gradcam and xssab need one. Left out of the default methods with a note; asked for by
    name, each needs ``--option METHOD.threshold=T`` (or biometric-gradcam's ``confidence=false``)."""
    for m in THRESHOLD_METHODS:
        opts = options.get(m, {})
        if m not in methods or getattr(model, "threshold", None) is not None or "threshold" in opts \
                or opts.get("confidence") is False:
            continue
        how = (f"--option {m}.threshold=T (falsify verify --model {args.model} prints the best one on your pairs)")
        if default:
            print(f"falsify {args.command}: note: {m} left out: {model.name} has no decision threshold of its own; "
                  f"give one with {how}", file=sys.stderr)
            methods = [x for x in methods if x != m]
            continue
        raise ValueError(f"{m} needs {model.name}'s decision threshold, and the model has none of its own: give one "
                         f"with {how}")
    return methods


def _say_no_face(args: argparse.Namespace, model, paths: Sequence[str]) -> None:
    """``falsify verify``'s line, on stderr, when the model's aligner found no face in some of
    ``paths`` (just loaded with ``load_image``); nothing for a model without alignment."""
    from .models.alignment import no_face_line

    aligner = getattr(model, "aligner", None)
    if aligner is None:
        return
    names = list(dict.fromkeys(str(Path(p)) for p in paths))
    missed = [n for n in names if n in aligner.stats.not_found]
    line = no_face_line(len(missed), len(names), missed)
    if line:
        print(f"falsify {args.command}: warning: {line}", file=sys.stderr)


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
    methods = _without_threshold(model, args, methods, options, default=args.methods == EXPLAIN_METHODS)
    from .attribution import get_explainer

    for m in methods:  # bad options fail here, before any map is computed
        get_explainer(m, model, **options.get(m, {}))
    a, b = (load_image(p, model.input_size, model.aligner) for p in (args.image_a, args.image_b))
    _say_no_face(args, model, (args.image_a, args.image_b))
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

    for key, value in apply_preset(args.preset, args.fill, args.q, args.criterion, args.delta).items():
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


def cmd_test(args: argparse.Namespace) -> int:
    import torch

    from .data import load_image
    from .falsification import falsification_test
    from .falsification.calibration import calibrate, calibration_pairs, spread_warning
    from .falsification.criteria import CRITERION_CLASSES
    from .models.base import model_device

    config = _test_config(args)  # bad options fail before anything is loaded
    options = _parse_options(args.option, default_method=args.method)
    others = sorted(set(options) - {args.method})
    if others:
        raise ValueError(f"--option names method(s) {', '.join(others)}, but --method is {args.method}")
    options = options.get(args.method, {})
    if args.layer:
        options.setdefault("layer", args.layer)
    if args.figure:
        check_writable(args.figure, "--figure", folder=False)
    model = _load_model(args)
    criterion = CRITERION_CLASSES[config.criterion]  # what the test needs, asked of the criterion
    needs_prior = criterion.needs_prior or args.method == "centre"
    # biometric-gradcam or xssab on a model without a threshold of its own takes the one calibrated below
    calibrated_threshold = (args.method in THRESHOLD_METHODS and getattr(model, "threshold", None) is None
                            and "threshold" not in options and options.get("confidence") is not False)
    if calibrated_threshold and config.tau_high is not None:
        raise ValueError(f"{args.method} needs {model.name}'s decision threshold, and the model has none of its "
                         "own: give one with --option threshold=T (falsify verify prints the best one on your pairs), "
                         "or leave --tau-high/--tau-low/--epsilon out so that the test calibrates it")
    if args.method != "centre":  # bad options fail here, before the calibration
        placeholder = {"threshold": 0.0} if calibrated_threshold else {}  # replaced once calibrated
        explainer = _get_explainer(args.method, model, **options, **placeholder)
    a = load_image(args.image_a, model.input_size, model.aligner)
    b = load_image(args.image_b, model.input_size, model.aligner)
    _say_no_face(args, model, (args.image_a, args.image_b))
    calibration = prior_map = None
    pool = None
    if config.tau_high is None or needs_prior:
        data, pairs = (args.calibrate_on, None) if args.calibrate_on else (args.data, args.pairs)
        pool = calibration_pairs(data, pairs, n_pairs=args.calibration_pairs, seed=args.seed)
    if config.tau_high is None:
        calibration = calibrate(model, pool, batch_size=args.batch_size, progress=not (args.quiet or args.json))
        config = calibration.apply(config)
        if spread_warning(calibration):
            print(f"falsify test: warning: {spread_warning(calibration)}", file=sys.stderr)
    if calibrated_threshold:
        explainer = _get_explainer(args.method, model, **options, threshold=calibration.threshold_cos)
    if needs_prior:
        from .falsification.prior import calibrate_delta, occlusion_prior, prior_image_batch

        prior_imgs, prior_refs = prior_image_batch(model, pool, {Path(args.image_a), Path(args.image_b)},
                                                   args.prior_images, batch_size=args.batch_size)
        prior_map = occlusion_prior(model, prior_imgs, batch_size=args.batch_size).map()
        if criterion.prior_calibrated and args.calibrate_delta:
            delta = calibrate_delta(model, prior_imgs, prior_map, config, seed=args.seed, references=prior_refs)
            config = config.replace(**{criterion.prior_calibrated: delta["delta"]})
        if args.method == "centre":
            explainer = _get_explainer("centre", model, prior=prior_map, **options)

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
    names = [(args.image_a, args.image_b), (args.image_b, args.image_a)][: len(results)]
    model_name = getattr(model, "name", args.model)
    if args.json:
        out = {
            "method": args.method,
            "model": model_name,
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
        if calibrated_threshold:
            print(f"{args.method}'s decision threshold: cos >= {calibration.threshold_cos:.4f}, the calibrated "
                  f"one ({model_name} has none of its own)")
        for (x, y), r in zip(names, results):
            print(f"\n{Path(x).name} explained against {Path(y).name} ({args.method}, {model_name})")
            if r.pair_angle is not None:
                print(f"pair      angle {r.pair_angle:.4f} rad (cos {math.cos(r.pair_angle):.4f})")
            print(r.format())
    if args.figure:
        from .report.falsification_figure import falsification_figure
        from .report.labels import quiet

        fig = falsification_figure(images, results, [Path(x).stem for x, _ in names], method=args.method)
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        with quiet():  # matplotlib's warnings are logged, not printed
            fig.savefig(args.figure, dpi=110)
        if not args.json:
            print(f"\nfigure: {args.figure}")
    return 0


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --- run and report ------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import RunConfig, runner_for
    from .experiments.executor import make_executor

    overrides = {
        "experiment": args.experiment, "data": args.data, "pairs": args.pairs, "model": args.model,
        "input_size": list(args.input_size) if args.input_size else None,
        "mean": _one_or_three(args.mean), "std": _one_or_three(args.std), "trust_pickle": args.trust_pickle,
        "align": args.align, "methods": _methods(args.methods) if args.methods else None, "n_pairs": args.n_pairs,
        "K": args.K, "seed": args.seed, "out": args.out, "fill": args.fill,
        "granularity": args.granularity, "q": args.q, "tau_high": args.tau_high,
        "tau_low": args.tau_low, "epsilon": args.epsilon, "batch_pairs": args.batch_pairs,
        "device": args.device, "precision": args.precision, "method_options": _parse_options(args.option) or None,
        "preset": args.preset, "criterion": args.criterion, "delta": args.delta, "target": args.target, "sanity": args.sanity or None,
        "other_reference": args.other_reference or None, "deletion": args.deletion or None,
        "labels": args.labels, "stratify": args.stratify, "models": getattr(args, "models", None),
        "executor": args.executor, "ray_address": args.ray_address, "workers": args.workers,
        "calibrate_on": args.calibrate_on, "truth": args.truth, "truth_parts": args.truth_parts,
        "truth_min_effect": args.truth_min_effect, "ceiling": False if args.no_ceiling else None,
    }
    config = RunConfig.resolve(config_file=args.config, **overrides)
    executor = make_executor(config, verbose=args.verbose)  # no ray: one line naming the fix, before any work
    runner = runner_for(config, progress=not args.quiet, retry_errors=args.retry_errors, executor=executor)
    try:
        summary = runner.run()
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the runner has cleaned up; say what is left
        _say(f"falsify run: {stopped_line(exc, runner.out)}")
        return _stopped_status(exc)
    from .experiments.registry import experiments_in, get

    texts = [e.text(summary) for e in experiments_in(summary)]
    print("\n\n".join(t for t in texts if t))
    print(get(config.experiment).outputs(runner.out))
    if summary.get("n_rows") and summary.get("n_errors") == summary["n_rows"]:
        first = summary["errors"][0]["error"] if summary["errors"] else "?"
        print(f"falsify run: every one of the {summary['n_rows']} rows is an error (e.g. {first}); fix the "
              "cause and rerun with --retry-errors", file=sys.stderr)
        return 1
    return 0


def stopped_line(exc: BaseException, out: Path | None) -> str:
    """What ``falsify run`` says when it is stopped (Ctrl-C, SIGTERM, SIGHUP): what is kept of
    ``out`` and how to go on. The runner has already cleaned up: a run stopped before its store
    existed removed its lock and the folder the lock made; the rows of one stopped later stay."""
    how = f"stopped by {_signal_name(exc)}"
    if out is None:
        return f"{how} before anything was written; rerun the same command to start it"
    out = Path(out)
    if (out / "results.sqlite").is_file():
        return f"{how}; the rows already stored in {out} are kept: rerun the same command to resume"
    return (f"{how} before any row was stored; {out} is left as it was before the run: rerun the same command to "
            "start again")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that the clean-up Ctrl-C runs runs
    (``timeout``, ``docker stop`` and batch schedulers send SIGTERM; a closed terminal SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signum).name if isinstance(exc, Stopped) else "SIGINT (Ctrl-C)"


def _stopped_status(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)


#: The signals handled as Ctrl-C is (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Stopped` (a ``KeyboardInterrupt``)
    in the main thread, so every clean-up that Ctrl-C runs (a run's lock and folder, its store,
    the Ray executor) runs for them too; the handlers in place before are restored after. A
    second one (the first one's clean-up hangs) ends the process at once, as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum, _frame):
        if seen:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        seen.append(signum)
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _say(line: str) -> None:
    """A line on stderr; a terminal already closed (SIGHUP) is not an error."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr)


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
    p.add_argument("--criterion", choices=CRITERIA,
                   help="absolute (the thresholds) or beyond-prior (the margin must beat the model's prior map's "
                   "margin on this image by more than --delta; default: the preset's)")
    p.add_argument("--delta", type=_delta, help="radians, or 'calibrated' (the 95th percentile of the excess of maps "
                   "that know only the prior); default 0")
    p.add_argument("--target", choices=TARGETS, default="embedding",
                   help="embedding (how far f(A) moves) or pair (how far the pair's angle moves; default %(default)s)")
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
    p.add_argument("--criterion", choices=CRITERIA,
                   help="absolute: d_high > tau_high, d_low < tau_low, margin >= epsilon; beyond-prior: the "
                   "margin must beat the model's prior map's margin on the same image by more than delta (default: "
                   "the preset's; see docs/method.md)")
    p.add_argument("--delta", type=_delta, help="radians, >= 0, or 'calibrated': the beyond-prior excess (default 0)")
    p.add_argument("--target", choices=TARGETS,
                   help="what the distances measure: embedding (how far f(A) moves; default) or pair (how far "
                   "the pair's angle to f(B) moves: a pair-aware test)")
    p.add_argument("--sanity", action="store_true",
                   help="add a row METHOD@random-model per method: its maps on a randomised copy of the model, "
                   "tested on the real model (a control every method must beat)")
    p.add_argument("--other-reference", action="store_true",
                   help="add a row METHOD@other-reference per method: maps made against the face of another "
                   "pair, tested as the true ones (is the explanation about this pair?)")
    p.add_argument("--deletion", action="store_true",
                   help="also a deletion curve per (method, genuine pair the model accepts): cells blurred in the "
                   "map's order until the decision flips (threshold-free; docs/method.md)")
    p.add_argument("--no-ceiling", action="store_true",
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
                   help="known-truth: how a composite is made from an impostor pair (A, B): B's parts blended into "
                   "the average face of untested images (average, default) or into A (swap)")
    p.add_argument("--truth-parts", choices=TRUTH_PARTS,
                   help="known-truth: the parts of B blended in (inner: eyes, nose and mouth, default; eyes+nose; eyes)")
    p.add_argument("--truth-min-effect", type=_number, metavar="RAD",
                   help="known-truth: leave out composites that move the pair's angle to B by less than this "
                   "(radians, >= 0; default 0: every composite that moved the pair closer to B is kept)")
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


def _message(exc: BaseException) -> str:
    """One line for a user error; OSError names the file it failed on."""
    if is_out_of_space(exc) and not isinstance(exc, OutOfSpaceError):  # a write outside a run's folder
        where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"no space left on the device{where}: free some space there, or write elsewhere"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


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
        print(f"falsify {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
