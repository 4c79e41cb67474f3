"""The ``falsify`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
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
