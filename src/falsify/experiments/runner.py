"""``falsify run``: the settings of a run and the resumable runner of 6.1's rows, one SQLite row
per (method, pair).

Experiment 6.1 explains the probe image A of each pair against its reference f(B) with every
method and runs the falsification test on the map. Experiments that analyse the same tests
(6.2: by the pair's verification margin) subclass ``Runner`` in their own module, so ``falsify
run 6.2`` computes whatever 6.1 rows are missing and then adds its analysis; all read one store.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..choices import (ALIGN_CHOICES, CONTROLS, DEFAULT_METHODS, EXECUTORS, EXPERIMENTS, METHOD_FAMILIES, METHODS,
                       OTHER_REFERENCE, RANDOM_MODEL, RANDOM_SUFFIX, STRATIFY_CHOICES, THRESHOLD_METHODS,
                       TRUTH_METHODS)
from ..data import load_pairs
from ..data.errors import DataError
from ..data.pairs import Pair, PairSet
from ..models.base import model_device
from ..paths import check_writable, space_guard
from .analysis import summarise
from .executor import RowContext, Rows61, executor_open, make_executor, row_explainers
from .rows import load_run_model  # noqa: F401 - re-exported: the model of a run
from .store import ResultsStore, inspect_store

#: The store's meta key of ``{method: sha256 of its file}`` for registered and imported methods.
METHOD_FINGERPRINTS = "method_fingerprints"

#: The experiment whose rows both 6.1 and 6.2 read.
ROWS_OF = "6.1"

#: How ig and geodesic-ig integrate, stored with the settings: their rows from an older falsify
#: ("doubling": Gauss-Legendre ig and midpoint geodesic-ig, refined by doubling the steps) are
#: not mixed with today's (the trapezoid rule with adaptive bisection) by resuming a store.
PATH_RULES = "adaptive-trapezoid"

_INT, _NUM, _STR, _BOOL = "a whole number", "a number", "a string", "true or false"
#: The type of every setting (TOML values and flags go through the same check).
_TYPES = {
    "experiment": _STR, "data": _STR, "pairs": _STR, "model": _STR, "n_pairs": _INT, "K": _INT,
    "seed": _INT, "out": _STR, "fill": _STR, "granularity": _STR, "grid": _INT, "q": _NUM,
    "tau_high": _NUM, "tau_low": _NUM, "epsilon": _NUM, "calibration_pairs": _INT,
    "batch_pairs": _INT, "batch_size": _INT, "grid_pairs": _INT, "device": _STR, "trust_pickle": _BOOL,
    "criterion": _STR, "prior_images": _INT, "preset": _STR, "prior_grid": _INT, "sanity": _BOOL,
    "other_reference": _BOOL, "target": _STR, "deletion": _BOOL, "align": _STR, "labels": _STR, "stratify": _STR,
    "executor": _STR, "ray_address": _STR, "workers": _INT, "calibrate_on": _STR, "ceiling": _BOOL,
}


def _type_error(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``key`` (None when it is)."""
    if value is None:
        return None
    want = _TYPES.get(key)
    if want == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want == _NUM:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif want == _STR:
        ok = isinstance(value, str)
    elif want == _BOOL:
        ok = isinstance(value, bool)
    elif key in ("methods", "models"):
        ok, want = isinstance(value, str) or (isinstance(value, list) and all(isinstance(m, str) for m in value)), \
            f"a list of {key[:-1]} names"
    elif key == "delta":
        ok, want = (value == "calibrated" or isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)), 'a number of radians or "calibrated"'
    elif key == "input_size":
        ok, want = (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)), \
            "two whole numbers >= 1 [height, width]"
    elif key in ("mean", "std"):
        vals = value if isinstance(value, (list, tuple)) else [value]
        ok, want = (len(vals) in (1, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in vals)), "a number or a list of three"
    elif key == "method_options":
        ok, want = isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()), \
            "a table of method tables, e.g. [method_options.ig] steps = 128"
    else:
        return None
    return None if ok else f"{key} must be {want}, got {value!r}"


@dataclass
class RunConfig:
    """Every setting of a run. TOML files use the same keys; command-line flags override them.

    Every value is checked here, the one validation path for flags, TOML and library callers:
    a bad value raises ``ValueError`` naming the key before anything is loaded or written.
    """

    experiment: str = "6.1"
    data: str | None = None
    pairs: str | None = None
    model: str = "dlib-resnet"
    input_size: list[int] | None = None  # .onnx with a dynamic size, .pt
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    trust_pickle: bool = False  # allow a .pt model to be unpickled (runs the file's code)
    align: str = "auto"  # face alignment: auto (the model's own), none, or a template; stored resolved
    methods: list[str] = field(default_factory=list)  # empty: every method
    n_pairs: int = 200
    K: int = 16
    seed: int = 0
    out: str | None = None
    preset: str = "beyond-prior"  # fill, q, criterion and delta not given come from it (PRESETS)
    fill: str | None = None
    granularity: str = "grid"
    grid: int = 14
    q: float | None = None
    tau_high: float | None = None
    tau_low: float | None = None
    epsilon: float | None = None
    calibration_pairs: int = 600
    calibrate_on: str | None = None  # data whose pairs calibrate the thresholds, the prior and delta (default: data)
    batch_pairs: int = 8
    batch_size: int = 64
    method_options: dict[str, dict] = field(default_factory=dict)
    grid_pairs: int = 4  # pairs in the saliency-grid figure
    criterion: str | None = None  # absolute, or beyond-prior: the margin must beat the model's prior map's
    delta: float | str | None = None  # beyond-prior margin (radians), or "calibrated"
    target: str = "embedding"  # or "pair": distances are the change of the pair's angle
    prior_images: int = 40  # images (not tested) whose mean occlusion map is the model's prior
    prior_grid: int = 10  # cells per side of those occlusion maps
    sanity: bool = False  # add METHOD@random-model rows: maps of a randomised model, tested on the real one
    other_reference: bool = False  # add METHOD@other-reference rows: maps made against another pair's face
    deletion: bool = False  # a deletion curve per (method, genuine pair the model accepts), in the row's detail
    ceiling: bool = True  # 6.1: search the test's ceiling on each pair (falsify.falsification.ceiling)
    labels: str | None = None  # demographic labels folder (falsify.data.labels): 6.6's fairness, --stratify
    stratify: str | None = None  # "gender": sample pairs balanced by the gender of image A (needs labels)
    models: list[str] | None = None  # experiment 6.4: the models compared (default exp_6_4.DEFAULT_MODELS)
    device: str | None = None
    executor: str = "in-process"  # who computes the rows: in-process, or ray (falsify.experiments.executor)
    ray_address: str | None = None  # --executor ray: the cluster to join (ADDRESS or auto; default: start one here)
    workers: int | None = None  # --executor ray: Ray workers (default: one per CPU Ray has)
    truth: str | None = None  # known-truth: the composites' construction (swap, average; default average)
    truth_parts: str | None = None  # known-truth: the donor's parts (eyes, eyes+nose, inner; default inner)
    truth_min_effect: float = 0.0  # known-truth: composites moving the pair less than this (rad) are left out

    #: settings that change results: a store made with other values is not resumed
    RESULT_KEYS = (
        "data", "pairs", "model", "input_size", "mean", "std", "n_pairs", "K", "seed", "fill",
        "granularity", "grid", "q", "tau_high", "tau_low", "epsilon", "calibration_pairs", "method_options",
        "criterion", "delta", "prior_images", "prior_grid", "target", "deletion", "align", "stratify", "labels",
        "models", "calibrate_on", "truth", "truth_parts",
    )
    #: the value a setting had before it existed, for stores made by an older falsify
    LEGACY = {"align": "none", "models": None, "path_rules": "doubling", "calibrate_on": None, "truth": None,
              "truth_parts": None}
    #: settings of the last invocation that a resumed run keeps unless they are given again
    KEPT_KEYS = ("methods", "batch_pairs", "batch_size", "grid_pairs", "sanity", "other_reference", "labels")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = _type_error(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(problem)
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {self.experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        if self.align not in ALIGN_CHOICES:
            raise ValueError(f"align must be one of {', '.join(ALIGN_CHOICES)}, got {self.align!r}")
        from ..falsification.core import apply_preset

        for key, value in apply_preset(self.preset, self.fill, self.q, self.criterion, self.delta).items():
            setattr(self, key, value)
        if isinstance(self.delta, (int, float)) and self.delta < 0:
            raise ValueError(f"delta must be >= 0 radians (or \"calibrated\"), got {self.delta}")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods or self.methods == ["all"]:
            # 6.6 compares the paired families; other experiments run the default methods ('all': every one)
            if self.experiment == "6.6" and not self.methods:
                self.methods = [m for f in METHOD_FAMILIES for m in f]
            elif self.experiment == "known-truth" and not self.methods:
                self.methods = list(TRUTH_METHODS)
            else:
                self.methods = list(METHODS if self.methods else DEFAULT_METHODS)
        self.methods = list(dict.fromkeys(self.methods))
        from ..attribution import check_method, is_known_method

        unknown = [m for m in self.methods if ":" not in m and not is_known_method(m)]  # built-in or registered
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}, captum:NAME "
                             "or module.path:callable (`falsify methods` lists them)")
        for m in self.methods:  # captum:NAME, module.path:callable: resolved (imported) now, one line if not
            if m not in METHODS:
                check_method(m)
        for name, minimum in (("n_pairs", 1), ("K", 1), ("grid", 1), ("calibration_pairs", 4), ("batch_pairs", 1),
                              ("batch_size", 1), ("grid_pairs", 0), ("prior_images", 1), ("prior_grid", 2)):
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        given = [v is not None for v in (self.tau_high, self.tau_low, self.epsilon)]
        if any(given) and not all(given):
            raise ValueError("give all of tau_high, tau_low and epsilon, or none (then they are calibrated)")
        if any(given) and self.experiment == "validity":
            raise ValueError("the validity study calibrates its thresholds on the data: drop tau_high, tau_low, epsilon")
        for name in ("tau_high", "tau_low", "epsilon"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 radians, got {getattr(self, name)}")
        unknown_opts = [m for m in self.method_options if m not in METHODS and m not in self.methods]
        if unknown_opts:
            raise ValueError(f"method_options names unknown method(s) {', '.join(unknown_opts)}")
        unused = [m for m in self.method_options if m not in self.methods]
        if unused:
            raise ValueError(f"options are given for {', '.join(unused)}, which is not among the methods run "
                             f"({', '.join(self.methods)}); add it to methods or drop its options")
        if self.stratify is not None and self.stratify not in STRATIFY_CHOICES:
            raise ValueError(f"stratify must be one of {', '.join(STRATIFY_CHOICES)}, got {self.stratify!r}")
        if self.stratify is not None and self.labels is None:
            raise ValueError(f"stratify {self.stratify} samples pairs by the {self.stratify} of image A: give the "
                             "labels folder too (--labels DIR, e.g. ../shared/data/lfw-labels)")
        if self.labels is not None:
            from ..data.labels import check_folder

            check_folder(self.labels)
        self._check_models()
        self._check_truth()
        self._check_executor()
        self.falsification_config()  # fill, granularity, q, ... checked by the test's own config
        if isinstance(self.input_size, tuple):
            self.input_size = list(self.input_size)

    def _check_executor(self) -> None:
        """``executor`` and its settings (they never change results, so a run can be resumed with
        another executor)."""
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.executor != "ray":
            for key in ("ray_address", "workers"):
                if getattr(self, key) is not None:
                    flag = "--" + key.replace("_", "-")
                    raise ValueError(f"{key} ({flag}) is a setting of the Ray executor: add --executor ray, or drop "
                                     f"{flag}")
            return
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def _check_truth(self) -> None:
        """``truth``, ``truth_parts``, ``truth_min_effect``: settings of ``known-truth`` only."""
        from ..choices import TRUTH_CONSTRUCTIONS, TRUTH_PARTS

        if self.experiment != "known-truth":
            for key, default in (("truth", None), ("truth_parts", None), ("truth_min_effect", 0.0)):
                if getattr(self, key) != default:
                    flag = "--" + key.replace("_", "-")
                    raise ValueError(f"{key} ({flag}) is a setting of the known-truth benchmark; drop it, or run "
                                     f"known-truth (got experiment {self.experiment})")
            return
        self.truth = self.truth or "average"
        self.truth_parts = self.truth_parts or "inner"
        if self.truth not in TRUTH_CONSTRUCTIONS:
            raise ValueError(f"truth must be one of {', '.join(TRUTH_CONSTRUCTIONS)}, got {self.truth!r}")
        if self.truth_parts not in TRUTH_PARTS:
            raise ValueError(f"truth_parts must be one of {', '.join(TRUTH_PARTS)}, got {self.truth_parts!r}")
        if not math.isfinite(self.truth_min_effect):
            raise ValueError(f"truth_min_effect must be a number of radians, got {self.truth_min_effect}")
        if self.truth_min_effect < 0:  # it would keep composites that moved the pair away from B: no evidence of B
            raise ValueError(f"truth_min_effect (--truth-min-effect) must be >= 0 radians, got {self.truth_min_effect}: "
                             "a composite that moves the pair away from B holds no evidence of B (0 keeps every "
                             "composite that moved it closer)")
        if self.criterion not in ("beyond-prior", "absolute"):
            raise ValueError(f"the known-truth benchmark judges the criteria absolute and beyond-prior, not {self.criterion}")

    def _check_models(self) -> None:
        """``models``: only for 6.4 (default: two real models and a randomised control); each a
        built-in name, ``NAME:random`` or an existing model file."""
        if self.experiment != "6.4":
            if self.models is not None:
                raise ValueError(f"models is a setting of experiment 6.4; drop it, or run 6.4 (got experiment "
                                 f"{self.experiment})")
            return
        from ..models import MODELS, builtin_name
        from .exp_6_4 import DEFAULT_MODELS

        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        self.models = list(dict.fromkeys(self.models or DEFAULT_MODELS))
        from ..choices import unknown_architecture

        for m in self.models:
            base = m[: -len(RANDOM_SUFFIX)] if m.endswith(RANDOM_SUFFIX) else m
            typo = unknown_architecture(base)
            if typo is not None:
                raise ValueError(f"models: {typo}")
            if builtin_name(base) is None and not Path(base).expanduser().is_file():
                raise ValueError(f"unknown model {m!r} in models; use built-in names ({', '.join(sorted(MODELS))}), "
                                 f"NAME{RANDOM_SUFFIX} or a model file (see 'falsify models')")
        if len(self.models) < 2:
            raise ValueError(f"experiment 6.4 compares models: give at least two in models, got {self.models}")

    def falsification_config(self, calibration=None):
        """The ``FalsificationConfig`` of this run (thresholds from ``calibration`` when given)."""
        from ..falsification import FalsificationConfig

        fc = FalsificationConfig(
            fill=self.fill, granularity=self.granularity, grid=self.grid, q=self.q, K=self.K, seed=self.seed,
            batch_size=self.batch_size, tau_high=self.tau_high, tau_low=self.tau_low, epsilon=self.epsilon,
            criterion=self.criterion, delta=None if self.delta == "calibrated" else self.delta, target=self.target,
        )
        return calibration.apply(fc) if calibration is not None else fc

    @staticmethod
    def read_toml(path: str | Path) -> dict:
        """The settings in a TOML file (keys as in ``RunConfig``; ``-`` may stand for ``_``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a UTF-8 text file (TOML)") from None
        known = {f.name for f in dataclasses.fields(RunConfig)}
        canonical: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            name = "K" if name == "counterfactuals" else name
            if name in canonical:
                raise ValueError(f"{path}: {spelled[name]} and {key} are the same setting; keep one")
            canonical[name], spelled[name] = value, key
        values = canonical
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        for key, value in values.items():
            problem = _type_error(key, value)
            if problem:
                raise ValueError(f"{path}: {problem}")
        return values

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "RunConfig":
        values = cls.read_toml(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, **overrides: Any) -> "RunConfig":
        """Settings from, in increasing precedence: the defaults, the store of an existing ``out``
        (its result settings and its last run's methods), ``config_file``, ``overrides`` (None
        meaning "not given"). So ``falsify run 6.2 --out DIR`` continues DIR's run as it was made."""
        values = cls.read_toml(config_file) if config_file else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("out"):
            stored = inspect_store(Path(values["out"]) / "results.sqlite")
            if stored and stored["meta"].get("settings"):
                base = {k: v for k, v in {**cls.LEGACY, **stored["meta"]["settings"]}.items() if k in cls.RESULT_KEYS}
                if stored["runs"]:
                    base.update({k: stored["runs"][-1][k] for k in cls.KEPT_KEYS if k in stored["runs"][-1]})
                values = {**base, **values}
        return cls(**values)

    @property
    def needs_prior(self) -> bool:
        """The model's prior map is needed: for the ``centre`` control or a criterion that needs it
        (``Criterion.needs_prior``: beyond-prior)."""
        return "centre" in self.methods or self.criterion_class.needs_prior or self.experiment == "validity"

    @property
    def criterion_class(self):
        """The class of the run's criterion (``falsify.falsification.criteria``): what the run
        asks about it (the prior, the threshold calibrated on it), never its name."""
        from ..falsification.criteria import CRITERION_CLASSES

        return CRITERION_CLASSES[self.criterion]

    def row_methods(self) -> list[str]:
        """The rows of each pair: every method, then its control rows (``--sanity``: maps of a
        randomised model; ``--other-reference``: maps made against another pair's face). The
        controls ``random``, ``centre`` and ``edge`` get no such rows (they ignore the model)."""
        real = [m for m in self.methods if m not in CONTROLS]
        rows = list(self.methods)
        if self.sanity:
            rows += [m + RANDOM_MODEL for m in real]
        if self.other_reference:
            rows += [m + OTHER_REFERENCE for m in real]
        return rows

    def result_settings(self) -> dict:
        """The settings that decide results, with data paths resolved (``DIR`` and ``DIR/`` are one)."""
        from ..models import resolve_align

        out = {k: getattr(self, k) for k in self.RESULT_KEYS}
        # what auto meant for this model; 6.4 runs several models, whose own stores record theirs
        out["align"] = self.align if self.experiment == "6.4" else resolve_align(self.model, self.align) or "none"
        if self.stratify is None:  # the labels decide which pairs are run only through --stratify
            out["labels"] = None
        out["path_rules"] = PATH_RULES
        for key in ("data", "pairs", "labels", "calibrate_on"):
            if out[key] is not None:
                out[key] = str(Path(out[key]).expanduser().resolve())
        return json.loads(json.dumps(out, default=str))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: What a run that ran out of space keeps (``falsify.paths.space_guard``).
RESUMES = "the rows already stored are kept, and rerunning the same command resumes"

#: Key of the data fingerprint in the stored settings.
FINGERPRINT = "pairs_fingerprint"
#: Key of the models' fingerprints in the stored settings: {model as given: sha256 of its file}
#: (``falsify.models.model_sha256``; 6.4 records every model it compares).
MODEL_FINGERPRINT = "model_sha256"
#: How a model file replaced at the same path is named among the settings that differ.
_MODEL_CHANGED = "the model file of "


def model_fingerprints(models) -> dict:
    """{model: the sha256 of the file its weights come from (None: no file)} for a run's settings,
    each file hashed once per process (``falsify.fingerprints``)."""
    from ..models import model_sha256

    return {m: model_sha256(m) for m in models}


def model_changes(have: dict, want: dict) -> list[str]:
    """The models whose file's sha256 differs between a stored run's settings (``have``) and this
    run's (``want``), one item each; a store made before falsify recorded them differs as a whole."""
    if MODEL_FINGERPRINT not in want:
        return []
    if MODEL_FINGERPRINT not in have:
        return ["the model file's sha256 (not recorded by the older falsify that made the store)"]
    old, new = have[MODEL_FINGERPRINT] or {}, want[MODEL_FINGERPRINT] or {}
    short = lambda h: "none" if h is None else h[:12]  # noqa: E731
    return [f"{_MODEL_CHANGED}{m} (sha256 {short(old[m])} when the store was made, {short(new[m])} now)"
            for m in new if m in old and old[m] != new[m]]


def conflict_message(out, diff: list[str]) -> str:
    """The one line refusing to resume ``out`` whose settings differ on ``diff``: a model file
    replaced at the same path is said as such, with how to start a new folder."""
    if diff and all(d.startswith(_MODEL_CHANGED) for d in diff):
        return (f"{out} holds rows of other weights: {'; '.join(d[len('the '):] for d in diff)}, so the file at that "
                "path was replaced; nothing was changed there. Start a new folder for these weights (--out NEW), "
                "or put the old file back to resume")
    return (f"{out} holds results made with other settings ({', '.join(diff)} differ); nothing was changed there. "
            "Use another --out, or the same settings to resume")


def data_changes(have: dict | None, want: dict) -> tuple[bool, list[str]]:
    """How this run's data fingerprint ``want`` differs from a stored one ``have``: (whether the
    pairs themselves - ids, labels, folds - differ, the image keys whose bytes changed)."""
    have = have or {}
    if have.get("sha256") == want.get("sha256"):
        return False, []
    if "pairs_sha256" not in have or have.get("pairs_sha256") != want.get("pairs_sha256"):
        return True, []
    old, new = have.get("images", {}), want.get("images", {})
    return False, sorted(k for k in new if old.get(k) != new[k])


def _changed_settings(have: dict, want: dict) -> list[str]:
    """The settings other than the data on which ``have`` and ``want`` differ."""
    legacy = {**RunConfig.LEGACY, **have}
    keys = (set(legacy) | set(want)) - {"data", "pairs", FINGERPRINT, MODEL_FINGERPRINT}
    return sorted(k for k in keys if legacy.get(k) != want.get(k)) + model_changes(have, want)


def settings_conflicts(have: dict, want: dict) -> list[str]:
    """The settings on which a stored run (``have``) and this one (``want``) differ. The data is
    compared by its fingerprint (pair ids, labels, folds and image contents), so the same data
    reached through another spelling of its path is the same run and other data behind the
    same path is not; a store without a fingerprint (made by an older falsify) never matches.
    The model's file is compared by its sha256 as well (``MODEL_FINGERPRINT``), so other weights
    behind the same path are another run; a store without it never matches either."""
    diff = _changed_settings(have, want)
    pairs_changed, images = data_changes(have.get(FINGERPRINT), want[FINGERPRINT])
    if pairs_changed:
        diff.append("data (the pairs or their images)")
    elif images:
        diff.append(f"data ({len(images)} image{'s' * (len(images) != 1)} changed, e.g. {images[0]})")
    return diff


def environment(device: torch.device) -> dict:
    import captum
    import cv2
    import numpy
    import PIL

    return {
        "falsify": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "captum": captum.__version__,
        "opencv": cv2.__version__,  # the face detector: its landmarks decide the aligned crops
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out(config: RunConfig, settings: dict | None = None, runs_dir: Path = Path("runs")) -> Path:
    """``runs/<experiment>-<timestamp>``, or the newest such folder made with the same result
    settings (``settings``: ``result_settings()`` plus the data fingerprint), so that running the
    same command again resumes it."""
    wanted = settings or config.result_settings()
    if runs_dir.is_dir():
        for d in sorted(runs_dir.glob("*-*"), reverse=True):
            try:
                stored = inspect_store(d / "results.sqlite")
            except ValueError:
                continue
            have = stored["meta"].get("settings") if stored else None
            if have is not None and not settings_conflicts(have, wanted):
                return d
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_dir / f"{config.experiment}-{stamp}"


class RunLock:
    """One run per output folder: an exclusive ``flock`` on ``OUT/run.lock``, released by the
    operating system when the process ends, however it ends (SIGKILL included). The file holds
    the pid of the run that holds the lock.

    :meth:`release` with ``clean=True`` (a run refused before it wrote anything) removes what
    :meth:`acquire` created: the lock file, and the folders it made if they are still empty, so
    that a refused run leaves no folder behind. A lock is taken only on the file that the path
    names when it is taken (a file removed meanwhile by such a release is made again)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "run.lock"
        self._fh = None
        self._made: list[Path] = []  # what acquire() created: the file, then the folders, deepest first

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (documented)
            return self
        while True:
            made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(self.path, "x+", encoding="utf-8")
                made.insert(0, self.path)
            except FileExistsError:
                try:
                    fh = open(self.path, "r+", encoding="utf-8")
                except FileNotFoundError:  # removed by a refused run's release since: again
                    continue
            except FileNotFoundError:  # its folder removed by a refused run's release since: again
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "pid unknown"
                fh.close()
                raise ValueError(f"{self.path.parent} is in use by another falsify run ({holder}); wait for it to "
                                 "finish, or use another --out") from None
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()  # locked a file that a refused run removed meanwhile: lock the one there now
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {_now()}\n")
        fh.flush()
        self._fh, self._made = fh, made
        return self

    def release(self, clean: bool = False) -> None:
        """Unlock; ``clean``: first remove the lock file and the folders :meth:`acquire` created
        (those still empty), as for a run that wrote nothing."""
        if self._fh is None:
            return
        import fcntl

        if clean:
            for p in self._made:
                try:
                    p.unlink() if p == self.path else p.rmdir()
                except OSError:  # not empty (another run's files), or gone: leave it
                    break
        self._made = []
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None


def load_run_pairs(config: RunConfig, log=None) -> PairSet:
    """The pairs of a run: ``n_pairs`` sampled from ``data`` with ``seed`` (balanced by the gender
    of image A with ``stratify``; impostor pairs only for known-truth). ``n_pairs`` above what the
    data holds uses every pair, and ``log`` (when given) gets one line saying so
    (``PairSet.shortfall``)."""
    c = config
    what, why = "pairs", ""
    if c.experiment == "known-truth":  # composites need a donor of another identity: impostor pairs
        every = load_pairs(c.data, c.pairs)
        impostors = PairSet([p for p in every if not p.same], list(every.skipped), every.source, every.n_folds)
        if not impostors.pairs:
            raise DataError(f"no impostor pairs in {every.source}: the known-truth benchmark blends a part of B "
                            "into a face, so B must be another person")
        pairs = impostors.sample(c.n_pairs, c.seed)
        what, why = "impostor pairs", "known-truth uses impostor pairs only"
    elif c.stratify == "gender":
        from ..data.labels import load_labels, stratified_sample

        pairs = stratified_sample(load_pairs(c.data, c.pairs), load_labels(c.labels), c.n_pairs, c.seed)
        what = "pairs whose image A has a gender label"
    else:
        pairs = load_pairs(c.data, c.pairs, n_pairs=c.n_pairs, seed=c.seed)
    note = pairs.shortfall(what, why)
    if note and log is not None:
        log(note)
    return pairs


@dataclass
class RunSession:
    """What an experiment's rows and analysis get from a run (``Experiment.extend``), all fixed
    before the first row: the settings, the pairs, the model, the calibrated test, the prior, the
    explainers, the labels; and :meth:`compute_rows`, the one driver of every row kind."""

    config: RunConfig
    out: Path
    pairs: PairSet
    model: Any
    fconfig: Any  # the calibrated FalsificationConfig
    threshold: float | None  # the model's decision threshold (cosine): calibrated, else the model's own
    calibration: Any = None
    prior: Any = None  # falsification.prior.Prior, when the run needs it
    explainers: dict = field(default_factory=dict)  # row method -> (explainer, kind)
    random_model: Any = None
    labels: Any = None  # falsify.data.labels.Labels, when --labels is given
    executor: Any = None
    log: Any = print
    progress: bool = True
    grid_ids: frozenset = frozenset()  # pairs whose maps are saved for the saliency grid
    #: ``save_map(method, pair, map)``: where the grid pairs' maps go
    save_map: Any = None
    _embeddings: tuple | None = field(default=None, repr=False)
    #: the sha256 of the model's file, as the run's settings record it (RowContext.model_sha256)
    model_sha256: str | None = None

    @property
    def prior_map(self) -> torch.Tensor | None:
        return self.prior.map() if self.prior is not None else None

    def embeddings(self) -> tuple[dict, dict]:
        """``(emb, failed)``: the embedding of every image of the run (computed once), and why each
        unreadable one could not be read. Every image of the sample, not only the pending ones:
        batch composition then never depends on where an earlier run stopped, so resumed rows
        equal fresh ones."""
        if self._embeddings is None:
            from ..verification import embed_paths

            self._embeddings = embed_paths(self.model, [q for p in self.pairs for q in (p.a, p.b)],
                                           self.config.batch_size, progress=False)
        return self._embeddings

    def other_refs(self) -> dict:
        """Another pair's reference for ``@other-reference`` rows: B of the next pair in the sample."""
        pairs = self.pairs
        return {p.id: pairs[(k + 1) % len(pairs)].b for k, p in enumerate(pairs)}

    def context(self, rows_of: str) -> RowContext:
        """What computing rows under ``rows_of`` needs besides the model (:class:`RowContext`)."""
        emb, failed = self.embeddings()
        return RowContext(self.config, rows_of, self.model.name, self.fconfig, self.prior_map, self.threshold, emb,
                          failed, self.other_refs(), frozenset(self.grid_ids), self.model_sha256)

    def compute_rows(self, store: ResultsStore, kind) -> int:
        """The rows of ``kind`` (``executor.RowKind``) that ``store`` lacks, computed by the run's
        executor in units of ``batch_pairs`` pairs x one group of keys and written here, the one
        writer, as each unit comes back (a unit computed twice after a worker died is written
        once); a progress bar counts them. Returns how many were computed."""
        c, model, pairs = self.config, self.model, self.pairs
        keys = kind.keys()
        done = store.done(kind.rows_of, model.name)
        todo = [p for p in pairs if any((k, p.id) not in done for k in keys)]
        n_todo = sum((k, p.id) not in done for p in pairs for k in keys)
        if n_todo:
            line = kind.describe(n_todo, len(todo), len(pairs), len(keys))
            if line:
                self.log(line)
            chunks = [todo[start : start + c.batch_pairs] for start in range(0, len(todo), c.batch_pairs)]
            units = [(chunk, group) for chunk in chunks for group in kind.groups(keys)
                     if any((k, p.id) not in done for k in group for p in chunk)]
            computer = None if getattr(self.executor, "name", "") == "ray" else kind.computer(
                model, self.explainers, self.random_model)
            bar = tqdm(total=n_todo, desc=f"experiment {kind.rows_of}", unit=kind.unit_name,
                       disable=not self.progress)
            written = set(done)

            def write(rows: list, maps: list) -> None:
                """The one writer of the store: a unit's rows, less any already stored (a unit
                computed twice after a worker died), and the grid pairs' maps."""
                rows = [r for r in rows if (r["method"], r["pair"]) not in written]
                if self.save_map is not None:
                    for method, pair, m in maps:
                        self.save_map(method, pair, m)
                store.add_rows(rows)
                written.update((r["method"], r["pair"]) for r in rows)
                bar.update(len(rows))

            try:
                self.executor.run(kind, computer, units, done, write, log=self._log_above())
            finally:
                bar.close()
        else:
            self.log(kind.describe_done(len(pairs) * len(keys)))
        ids = {p.id for p in pairs}
        stored = {(k, p) for k, p in store.done(kind.rows_of, model.name) if p in ids and k in set(keys)}
        if len(stored) != len(pairs) * len(keys):
            raise RuntimeError(f"{self.out}: {len(stored)} rows of experiment {kind.rows_of} stored for {len(pairs)} "
                               f"pairs x {len(keys)} keys; please report this")
        return n_todo

    def _log_above(self):
        """``log`` that clears and redraws the progress bar around what it prints."""
        def log(*args) -> None:
            with tqdm.external_write_mode(nolock=True):
                self.log(*args)

        return log if self.progress else self.log
def write_outputs(out, summary: dict, explanations=None) -> list[Path]:
    """summary.json, tables, figures and report.html in ``out`` (``registry.write_outputs``: the
    report is wired there, from the summary in memory)."""
    from .registry import write_outputs as write

    return write(out, summary, explanations)


def runner_for(config: RunConfig, **kw) -> "Runner":
    """The runner of ``config.experiment``, from its module (``falsify.experiments.registry``)."""
    from .registry import get

    return get(config.experiment).runner(config, **kw)


class Runner:
    """Runs one experiment into ``out``; ``run()`` returns the summary dict.

    Everything that can be wrong with the input (data, model, method options, output folder,
    settings of an existing store) is checked before the first write. Then, before any work, the
    executor is connected (Ray: a cluster that cannot be reached is a one-line error in seconds)
    and ``OUT/run.lock`` is taken (a second run into ``OUT`` is refused before it calibrates). The
    calibration and the prior are computed before the store is created, and a run that stops
    before its store exists removes the lock file and the folders the lock made, so a run that
    fails there leaves nothing behind.
    ``retry_errors`` deletes the error rows of the store so that they are computed again.
    ``executor`` computes 6.1's rows (``falsify.experiments.executor``; default: the one
    ``config.executor`` names); this runner stays the only writer of the store either way.
    """

    def __init__(self, config: RunConfig, progress: bool = True, log=print, retry_errors: bool = False,
                 executor=None) -> None:
        self.config = config
        self.progress = progress
        self.log = log
        self.retry_errors = retry_errors
        self.out = Path(config.out) if config.out else None
        #: who computes 6.1's rows (default: ``config.executor``'s, made when the run starts)
        self.executor = executor

    # -- set-up -----------------------------------------------------------------------------

    def _stored(self, settings: dict, pairs: PairSet) -> dict | None:
        """The existing store of ``out`` (read only), refused when its settings differ. Images that
        changed since the store was made are accepted only with ``retry_errors`` and only when
        every pair that uses them failed (an unreadable image, since fixed)."""
        stored = inspect_store(self.out / "results.sqlite")
        have = stored["meta"].get("settings") if stored else None
        if have is None:
            return stored
        if FINGERPRINT not in have:
            raise ValueError(f"{self.out} was made by an older falsify whose store has no data fingerprint, so "
                             "resuming it could mix data sets; nothing was changed there. Use another --out")
        if MODEL_FINGERPRINT not in have:
            raise ValueError(f"{self.out} was made by an older falsify that did not record the sha256 of the model's "
                             "file, so resuming it could mix the rows of two networks; nothing was changed there. Use "
                             "another --out ('falsify report' still reads it)")
        pairs_changed, images = data_changes(have.get(FINGERPRINT), settings[FINGERPRINT])
        if images and not pairs_changed and not _changed_settings(have, settings):
            changed = set(images)
            users = {p.id for p in pairs if changed & set(p.image_keys)}
            if not users & stored["pairs_with_results"]:
                if self.retry_errors:
                    self.log(f"{len(images)} image(s) changed since the run was made, used only by pairs that "
                             "failed: their rows are computed again")
                    return stored
                raise ValueError(
                    f"{self.out}: {len(images)} image(s) changed since the run was made (e.g. {images[0]}), "
                    "used only by pairs whose rows are errors; rerun with --retry-errors to compute them again"
                )
        diff = settings_conflicts(have, settings)
        if diff == ["path_rules"]:
            raise ValueError(f"{self.out} was made by an older falsify whose ig and geodesic-ig integrate "
                             "differently (before the adaptive trapezoid rule), so resuming it could mix rows; "
                             "nothing was changed there. Use another --out ('falsify report' still reads it)")
        if diff:
            raise ValueError(conflict_message(self.out, diff))
        return stored

    def _method_fingerprints(self, stored: dict | None) -> dict:
        """The sha256 of the file of every registered or imported method of the run, merged with
        the store's: a method whose file changed since its rows were made is refused (one line,
        nothing written), so old and new rows are never mixed."""
        from ..attribution import method_fingerprints

        have = dict((stored or {}).get("meta", {}).get(METHOD_FINGERPRINTS) or {})
        now = method_fingerprints(self.config.methods)
        changed = [m for m, sha in now.items() if have.get(m, sha) != sha]
        if changed:
            from ..attribution import method_source

            m = changed[0]
            raise ValueError(f"{self.out}: the file of method {m!r} ({method_source(m)}) changed since its rows were "
                             "made (its sha256 differs), so resuming would mix its old and new maps; nothing was "
                             "changed there. Restore the file, or use another --out")
        return {**have, **now}

    def _calibration_pool(self) -> PairSet:
        """The pairs the thresholds, the prior and delta are calibrated on: a seeded sample of
        ``calibrate_on``'s pairs when it is given, else of the run's own data."""
        from ..falsification.calibration import calibration_pairs

        c = self.config
        if getattr(self, "_pool", None) is None:
            data, pairs = (c.calibrate_on, None) if c.calibrate_on else (c.data, c.pairs)
            self._pool = calibration_pairs(data, pairs, n_pairs=c.calibration_pairs, seed=c.seed)
        return self._pool

    def _calibration(self, model, stored: dict | None):
        from ..falsification import Calibration, calibrate
        from ..falsification.calibration import spread_warning

        c = self.config
        if c.tau_high is not None:
            return None
        cached = stored["meta"].get("calibration") if stored else None
        if cached:
            return Calibration(**cached)
        pairs = self._calibration_pool()
        self.log(f"calibrating tau_high, tau_low, epsilon on {len(pairs)} pairs ...")
        cal = calibrate(model, pairs, batch_size=c.batch_size, progress=self.progress)
        warning = spread_warning(cal)
        if warning:
            self.log(f"warning: {warning}")
        return cal

    def falsification_config(self, calibration):
        return self.config.falsification_config(calibration)

    def _prior_image_batch(self, model, pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of the prior and of delta's calibration, and their partners' embeddings
        (``falsify.falsification.prior.prior_image_batch`` on the calibration pairs)."""
        from ..falsification.prior import prior_image_batch

        c = self.config
        tested = {q for p in pairs for q in (p.a, p.b)}
        images, refs = prior_image_batch(model, self._calibration_pool(), tested, c.prior_images,
                                         batch_size=c.batch_size)
        if images.shape[0] < c.prior_images:
            self.log(f"warning: the model's prior rests on {images.shape[0]} of the {c.prior_images} untested images "
                     "it is meant to average (--prior-images); add pairs of other photos, or --calibrate-on "
                     "another data set")
        return images, refs

    def _prior(self, model, stored: dict | None, pairs: PairSet, fconfig):
        """The model's prior map, and for the beyond-prior criterion without a given delta its
        calibrated delta: from the store, or computed on ``prior_images`` calibration images that
        no tested pair uses (the mean of their occlusion maps; the excess that maps knowing only
        the prior reach on them). Returns ``(Prior, delta_info | None)``."""
        from ..falsification.prior import Prior, calibrate_delta, occlusion_prior

        c = self.config
        want_delta = c.criterion_class.prior_calibrated == "delta" and c.delta == "calibrated"
        cached = stored["meta"].get("prior") if stored else None
        if cached and (cached.get("delta") or not want_delta):
            return Prior.from_dict(cached), cached.get("delta") if want_delta else None
        images, refs = self._prior_image_batch(model, pairs)
        if cached:
            prior = Prior.from_dict(cached)
        else:
            self.log(f"the model's prior map: mean occlusion map of {images.shape[0]} untested images ...")
            prior = occlusion_prior(model, images, grid=c.prior_grid, fill="blur", batch_size=c.batch_size)
        delta = None
        if want_delta:
            self.log("calibrating delta: the excess over the prior of maps that know only the prior ...")
            delta = calibrate_delta(model, images, prior.map(), fconfig, seed=c.seed, references=refs)
        return prior, delta

    # -- the loop ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Everything that reads or checks input, writing nothing: the pairs, the model, every
        method's options, the output folder and its store's settings, the calibration, the prior."""
        from ..attribution import get_explainer

        c = self.config
        self.labels = None
        if c.labels:  # 6.3's and 6.6's groups, --stratify: read (and checked) before anything is written
            from ..data.labels import load_labels

            self.labels = load_labels(c.labels)
        self.pairs = load_run_pairs(c, log=self.log)  # --n-pairs above what the data holds: one line
        self.model = model = load_run_model(c)
        self.model_name = model.name
        self.device = model_device(model)
        # every method's options checked now, before any work; a model without a decision threshold
        # of its own (a user's checkpoint, NAME:random) gets the calibrated one below
        placeholder = {"threshold": 0.0} if model.threshold is None and c.tau_high is None else {}
        for m in c.methods:
            if m != "centre":
                get_explainer(m, model, **{**(placeholder if m in THRESHOLD_METHODS else {}),
                                           **c.method_options.get(m, {})})
        # the model by its file's content (hashed once per process; the load above read the same file)
        self.settings = {**c.result_settings(), FINGERPRINT: self.pairs.fingerprint(),
                         MODEL_FINGERPRINT: model_fingerprints([c.model])}
        if self.out is None:
            self.out = default_out(c, self.settings)
        check_writable(self.out, "--out", folder=True)
        self.stored = self._stored(self.settings, self.pairs)
        self.method_fingerprints = self._method_fingerprints(self.stored)
        self._claim()  # the executor connected, OUT locked: from here on the run computes
        self.calibration = self._calibration(model, self.stored)
        #: the model's decision threshold (cosine): calibrated on the data, else the model's own
        self.threshold = self.calibration.threshold_cos if self.calibration is not None else model.threshold
        if model.threshold is None:
            model.threshold = self.threshold  # biometric-gradcam's and xssab's, here and on every Ray worker (RowContext)
        explainers = {m: get_explainer(m, model, **c.method_options.get(m, {})) for m in c.methods if m != "centre"}
        self.fconfig = self.falsification_config(self.calibration)
        self.prior, self.delta = self._prior(model, self.stored, self.pairs, self.fconfig) if c.needs_prior else (None, None)
        self.prior_map = self.prior.map() if self.prior is not None else None
        if self.delta is not None:
            self.fconfig = self.fconfig.replace(delta=self.delta["delta"])
        self.explainers, self.random_model = row_explainers(c, model, self.prior_map, explainers)
        self.grid_ids = {p.id for p in self._grid_pairs(self.pairs)}
        self.session = RunSession(c, self.out, self.pairs, model, self.fconfig, self.threshold, self.calibration,
                                  self.prior, self.explainers, self.random_model, self.labels, self.executor, self.log,
                                  self.progress, frozenset(self.grid_ids), self._save_map,
                                  model_sha256=self.settings[MODEL_FINGERPRINT][c.model])

    def _open(self, store: ResultsStore) -> None:
        """First writes: the settings (checked again under the lock), this invocation, the
        calibration and the prior."""
        c = self.config
        if store.get_meta("settings") != (self.stored or {}).get("meta", {}).get("settings"):
            raise ValueError(f"{self.out} was changed by another run since it was checked; nothing was changed there")
        store.set_meta("settings", self.settings)  # new, or the same with the fingerprint of fixed images
        env = environment(self.device)
        other = sorted({r["environment"].get("opencv") for r in store.runs()} - {None, env["opencv"]})
        if other:
            self.log(f"warning: rows of {self.out} were made with OpenCV {', '.join(other)}, and this run uses "
                     f"{env['opencv']}: another build of the face detector aligns faces slightly differently, so "
                     "a verdict near its threshold can differ (docs/results.md, 'Across machines')")
        store.add_run(_now(), c.experiment, c.to_dict(), env)
        if self.calibration is not None and store.get_meta("calibration") is None:
            store.set_meta("calibration", self.calibration.to_dict())
        if self.prior is not None and (store.get_meta("prior") is None or self.delta is not None):
            store.set_meta("prior", {**self.prior.to_dict(), "delta": self.delta})
        store.set_meta("falsification_config", self.fconfig.to_dict())
        if self.method_fingerprints:
            store.set_meta(METHOD_FINGERPRINTS, self.method_fingerprints)
        self.log(f"run directory: {self.out}")
        self.log(self.pairs.summary())
        if self.retry_errors:
            n = store.delete_errors(self.rows_of, self.model.name)
            self.log(f"retrying {n} error row{'s' * (n != 1)}")

    #: the experiment key of the rows this runner computes
    rows_of = ROWS_OF

    def _claim(self) -> None:
        """The last step of :meth:`_setup` before any work (the calibration, the prior, the rows):
        the executor connected and checked (Ray: the cluster reached and its CPUs counted, in
        seconds; nothing is written), then ``OUT/run.lock`` taken, so a second run into ``OUT``
        is refused before it computes anything. :meth:`run` undoes both at its end."""
        self._opened = executor_open(self.executor, self.log)
        self._lock = RunLock(self.out).acquire()

    def run(self) -> dict:
        started = _now()
        t0 = time.perf_counter()
        if self.executor is None:
            self.executor = make_executor(self.config)  # no ray: one line naming the fix, before any work
        self._opened, self._lock, store = False, None, None
        try:
            self._setup()  # checks, then the executor and the lock (_claim), then the calibration and the prior
            with space_guard(self.out, RESUMES):
                store = ResultsStore(self.out / "results.sqlite")
                try:
                    self._open(store)
                    summary = self._compute(store, started, t0)
                finally:
                    store.close()
                self._write(summary)
        finally:
            if self._opened:
                self.executor.close()
            if self._lock is not None:  # stopped before its store existed: the lock's file and folder go too
                self._lock.release(clean=store is None)
        return summary

    def _write(self, summary: dict) -> None:
        explanations = self._grid_explanations(self.model, self.pairs)
        write_outputs(self.out, summary, explanations)

    def _compute(self, store: ResultsStore, started: str, t0: float) -> dict:
        c, pairs, model, session = self.config, self.pairs, self.model, self.session
        session.compute_rows(store, Rows61(session.context(self.rows_of), self.rows_of))
        summary = summarise(store, c, pairs, model.name, self.threshold, elapsed_s=None, started=started)
        summary["alignment"] = self._alignment(pairs)
        from .truth_table import for_summary

        summary["test_validity"] = for_summary(summary)  # the known-truth benchmark's rates for this test
        from .registry import get

        get(c.experiment).extend(session, store, summary)  # 6.2, 6.5, ...: their analysis (and rows) on 6.1's
        summary["elapsed_s"] = time.perf_counter() - t0
        n_err = summary["n_errors"]
        if n_err:
            self.log(f"{n_err} error row{'s' * (n_err != 1)} (see the summary); after fixing the cause, rerun "
                     "with --retry-errors to compute them again")
        return summary

    def _alignment(self, pairs: PairSet) -> dict:
        """The alignment of the run's images: the template, and the photos in which no face was
        found (resized instead), from the landmark cache (detected only if never seen)."""
        aligner = self.model.aligner
        if aligner is None:
            return {"template": None}
        survey = aligner.survey(sorted({q for p in pairs for q in (p.a, p.b)}))
        if survey["no_face_found"]:
            self.log(f"alignment: no face found in {survey['no_face_found']} of {survey['images']} images; they "
                     f"were resized instead (e.g. {survey['no_face_examples'][0]})")
        return {"template": aligner.template, **survey}

    def _grid_pairs(self, pairs: PairSet) -> list[Pair]:
        """The pairs of the saliency-grid figure: the first genuine and impostor pairs, half each."""
        n = self.config.grid_pairs
        gen = [p for p in pairs if p.same][: (n + 1) // 2]
        imp = [p for p in pairs if not p.same][: max(0, n - len(gen))]
        return gen + imp

    def _save_map(self, method: str, pair: Pair, m: torch.Tensor) -> None:
        path = self.out / "maps" / f"{pair.index}" / f"{method}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        import numpy as np

        np.save(path, m.detach().cpu().numpy().astype(np.float16))

    def _grid_explanations(self, model, pairs: PairSet):
        """(pair, PairExplanation with the stored maps of A) for the saliency-grid figure."""
        import numpy as np

        from ..data import load_image
        from ..report.explain import PairExplanation

        out = []
        for p in self._grid_pairs(pairs):
            folder = self.out / "maps" / f"{p.index}"
            maps = {m: torch.from_numpy(np.load(folder / f"{m}.npy").astype(np.float32))
                    for m in self.config.methods if (folder / f"{m}.npy").is_file()}
            if len(maps) != len(self.config.methods):
                continue
            try:
                a, b = (load_image(q, model.input_size, model.aligner) for q in (p.a, p.b))
            except ValueError:
                continue
            with torch.inference_mode():
                e = model(torch.stack([a, b]).to(model_device(model))).cpu()
            from ..geometry import cosine_similarity, geodesic_distance

            out.append((p, PairExplanation(a, b, float(cosine_similarity(e[0], e[1])),
                                           float(geodesic_distance(e[0], e[1])), maps_a=maps)))
        return out or None
