"""What the commands of ``falsify`` do once ``falsify.cli`` has parsed their arguments (that
module alone parses them): the lines they print, ``falsify test``'s calibration, its output."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .choices import THRESHOLD_METHODS
from .paths import OutOfSpaceError, is_out_of_space

# torch and the packages that load it are imported in the functions: ``falsify --help`` loads none


def without_threshold(command: str, model_name: str, model, methods: list[str], options: dict,
                      default: bool) -> list[str]:
    """``methods`` for a model without a decision threshold (a user's checkpoint, ``NAME:random``):
    biometric-gradcam and xssab need one. Left out of the default methods with a note; asked for by
    name, each needs ``--option METHOD.threshold=T`` (or biometric-gradcam's ``confidence=false``)."""
    for m in THRESHOLD_METHODS:
        opts = options.get(m, {})
        if m not in methods or getattr(model, "threshold", None) is not None or "threshold" in opts \
                or opts.get("confidence") is False:
            continue
        how = (f"--option {m}.threshold=T (falsify verify --model {model_name} prints the best one on your pairs)")
        if default:
            print(f"falsify {command}: note: {m} left out: {model.name} has no decision threshold of its own; "
                  f"give one with {how}", file=sys.stderr)
            methods = [x for x in methods if x != m]
            continue
        raise ValueError(f"{m} needs {model.name}'s decision threshold, and the model has none of its own: give one "
                         f"with {how}")
    return methods


def say_no_face(command: str, model, paths: Sequence[str]) -> None:
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
        print(f"falsify {command}: warning: {line}", file=sys.stderr)


def calibrate_test(model, config, *, data, pairs, calibrate_on, calibration_pairs: int, seed: int, batch_size: int,
                   tested: Sequence[str], prior_images: int, calibrate_delta: bool, needs_prior: bool,
                   progress: bool):
    """``falsify test``'s thresholds, the model's prior and delta: the pieces ``falsify run`` uses
    (``falsification.calibration``, ``falsification.prior``) on the same seeded pairs. Returns
    ``(config, calibration | None, prior | None)``; a model without a decision threshold of its own
    takes the calibrated one (``adopt_threshold``)."""
    from .falsification.calibration import adopt_threshold, calibrate_thresholds, calibration_pool
    from .falsification.criteria import CRITERION_CLASSES
    from .falsification.prior import model_prior

    def warn(line: str) -> None:
        print(f"falsify test: warning: {line}", file=sys.stderr)

    calibration = prior = None
    if config.tau_high is None or needs_prior:
        pool = calibration_pool(data, pairs, calibrate_on=calibrate_on, n_pairs=calibration_pairs, seed=seed)
    if config.tau_high is None:
        calibration = calibrate_thresholds(model, pool, batch_size=batch_size, progress=progress, warn=warn)
        config = calibration.apply(config)
    adopt_threshold(model, calibration)
    if needs_prior:
        calibrated = CRITERION_CLASSES[config.criterion].prior_calibrated
        prior, delta = model_prior(model, pool, {Path(p) for p in tested}, config, n_images=prior_images,
                                   batch_size=batch_size, delta=bool(calibrated) and calibrate_delta, seed=seed,
                                   warn=warn)
        if delta is not None:
            config = config.replace(**{calibrated: delta["delta"]})
    return config, calibration, prior


def print_test(results, images, model, config, calibration, *, method: str, pair: tuple[str, str],
               calibrated_threshold: bool, as_json: bool, figure: str | None) -> None:
    """``falsify test``'s output: JSON, or the calibration and each result as text; the figure."""
    names = [pair, pair[::-1]][: len(results)]
    model_name = getattr(model, "name", None) or type(model).__name__
    if as_json:
        out = {
            "method": method,
            "model": model_name,
            "config": config.to_dict(),
            "calibration": calibration.to_dict() if calibration else None,
            "results": [{"image": x, "reference": y, **r.to_dict()} for (x, y), r in zip(names, results)],
        }
        print(json.dumps(out, indent=2, allow_nan=False, default=json_default))
    else:
        if calibration is not None:
            print(
                f"thresholds calibrated on {calibration.n_genuine + calibration.n_impostor} pairs: theta* = "
                f"{calibration.threshold_angle:.4f} rad; tau_high {config.tau_high:.4f}, tau_low "
                f"{config.tau_low:.4f}, epsilon {config.epsilon:.4f}"
            )
        if calibrated_threshold:
            print(f"{method}'s decision threshold: cos >= {calibration.threshold_cos:.4f}, the calibrated "
                  f"one ({model_name} has none of its own)")
        from .report.reading import target_words

        for (x, y), r in zip(names, results):
            print(f"\n{Path(x).name} explained against {Path(y).name} ({method}, {model_name})")
            if r.pair_angle is not None:
                print(f"pair      angle {r.pair_angle:.4f} rad (cos {math.cos(r.pair_angle):.4f})")
            if r.testable:
                print(f"target    {config.target}: d_high, d_low are the {target_words(config.target)}")
            print(r.format())
    if figure:
        from .report.falsification_figure import falsification_figure
        from .report.labels import quiet

        fig = falsification_figure(images, results, [Path(x).stem for x, _ in names], method=method)
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        with quiet():  # matplotlib's warnings are logged, not printed
            fig.savefig(figure, dpi=110)
        if not as_json:
            print(f"\nfigure: {figure}")


def json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_run(summary: dict, experiment: str, out) -> int:
    """What ``falsify run`` prints once its run has finished: each experiment's text and where its
    outputs are; the exit status (1 when every row is an error)."""
    from .experiments.registry import experiments_in, get

    texts = [e.text(summary) for e in experiments_in(summary)]
    print("\n\n".join(t for t in texts if t))
    print(get(experiment).outputs(out))
    if summary.get("n_rows") and summary.get("n_errors") == summary["n_rows"]:
        first = summary["errors"][0]["error"] if summary["errors"] else "?"
        print(f"falsify run: every one of the {summary['n_rows']} rows is an error (e.g. {first}); fix the "
              "cause and rerun with --retry-errors", file=sys.stderr)
        return 1
    return 0


def error_line(exc: BaseException) -> str:
    """One line for a user error; OSError names the file it failed on."""
    if is_out_of_space(exc) and not isinstance(exc, OutOfSpaceError):  # a write outside a run's folder
        where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"no space left on the device{where}: free some space there, or write elsewhere"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
