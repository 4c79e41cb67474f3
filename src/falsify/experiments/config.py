"""The settings of a run (:class:`RunConfig`): every key, its type, its default, and the one
validation path that flags, TOML files and library callers go through."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import (ALIGN_CHOICES, CONTROLS, DEFAULT_METHODS, EXECUTORS, EXPERIMENTS, METHOD_FAMILIES, METHODS,
                       OTHER_REFERENCE, RANDOM_MODEL, RANDOM_SUFFIX, STRATIFY_CHOICES, TRUTH_METHODS)
from .store import inspect_store


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
    "batch_pairs": _INT, "batch_size": _INT, "grid_pairs": _INT, "device": _STR, "precision": _STR, "trust_pickle": _BOOL,
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
    precision: str = "fp32"  # what the network runs in (falsify.models.precision): fp32, bf16, fp16
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
        "models", "calibrate_on", "truth", "truth_parts", "precision",
    )
    #: the value a setting had before it existed, for stores made by an older falsify
    LEGACY = {"align": "none", "models": None, "path_rules": "doubling", "calibrate_on": None, "truth": None,
              "truth_parts": None, "precision": "fp32"}
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
        if self.precision != "fp32":  # one this machine cannot run: refused before anything is written
            from ..models import resolve_device
            from ..models.precision import check_precision

            check_precision(self.precision, resolve_device(self.device))
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
