"""The settings of a run (:class:`RunConfig`): each one declared once, on its field (its type or
constraint, default, the experiments that use it, whether it must match on resume, whether a
resumed run keeps it, its legacy value, its flag: ``settings.setting``), and the one validation
path that flags, TOML files, the store of ``--out`` and library callers go through."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..choices import (ALIGN_CHOICES, CONTROLS, CRITERIA, DEFAULT_METHODS, EXECUTORS, FILLS, GRANULARITIES, METHODS,
                       OTHER_REFERENCE, PRECISIONS, PRESET_NAMES, RANDOM_MODEL, STRATIFY_CHOICES, TARGETS,
                       TRUTH_CONSTRUCTIONS, TRUTH_PARTS)
from .recheck import DEFAULT_RECHECK_BAND
from .settings import (NOT_GIVEN, Delta, Flag, Names, Number, PerChannel, Setting, Size, Tables, Text, Whole,
                       check_experiment, check_values, schema, setting)
from .store import inspect_store


#: How results are computed where an older falsify computed them otherwise, stored with the
#: settings so a store's rows are never mixed with rows computed another way by resuming it:
#: ig and geodesic-ig integrate by the trapezoid rule with adaptive bisection from 16 intervals
#: (an older falsify: "doubling", Gauss-Legendre / midpoint rules refined by doubling), occlusion's
#: windows tile the image, kernelshap and lime fit 128 coalitions, the ceiling stops early.
PATH_RULES = "adaptive-trapezoid-16; occlusion-tiled; superpixel-128; ceiling-early-stop"


@dataclass
class RunConfig:
    """Every setting of a run. TOML files use the same keys; command-line flags override them.

    Each field declares its setting (``settings.setting``: constraint, result/kept/legacy, the
    experiments that use it, its flag); :data:`SETTINGS` is that schema. Every value is checked
    by it, the one validation path for flags, TOML, the store and library callers: a bad value
    raises ``ValueError`` naming the key and its source before anything is loaded or written.
    What one experiment asks of its settings beyond the schema (its default methods, its own
    refusals) is the experiment's (``Experiment.configure``, ``Experiment.check``), applied by
    whoever composes the run (``registry.configure``); nothing here compares an experiment's name.
    """

    # the experiment (registry.get refuses a name neither built in nor registered, naming the choices)
    experiment: str = setting("6.1", Text(), flag="EXPERIMENT")
    data: str | None = setting(None, result=True)
    pairs: str | None = setting(None, result=True)
    model: str = setting("dlib-resnet", result=True)
    input_size: list[int] | None = setting(None, Size(), result=True)  # .onnx with a dynamic size, .pt
    mean: float | list[float] | None = setting(None, PerChannel(), result=True)
    std: float | list[float] | None = setting(None, PerChannel(), result=True)
    trust_pickle: bool = setting(False, Flag())  # allow a .pt model to be unpickled (runs the file's code)
    # face alignment: auto (the model's own), none, or a template; stored resolved
    align: str = setting("auto", Text(choices=ALIGN_CHOICES), result=True, legacy="none")
    # empty: the experiment's default methods ('all': every one)
    methods: list[str] = setting(factory=list, check=Names("a list of method names"), kept=True)
    n_pairs: int = setting(200, Whole(minimum=1), result=True)
    K: int = setting(16, Whole(minimum=1), result=True, flag="--counterfactuals", aliases=("counterfactuals",))
    seed: int = setting(0, Whole(), result=True)
    out: str | None = setting(None)
    # fill, q, criterion, delta and target not given come from it (PRESETS)
    preset: str = setting("beyond-prior", Text(choices=PRESET_NAMES, unknown=True))
    fill: str | None = setting(None, Text(choices=FILLS, unknown=True), result=True)
    granularity: str = setting("grid", Text(choices=GRANULARITIES, unknown=True), result=True)
    grid: int = setting(14, Whole(minimum=1), result=True, flag=None)
    q: float | None = setting(None, Number(), result=True)
    tau_high: float | None = setting(None, Number(minimum=0, unit="radians"), result=True)
    tau_low: float | None = setting(None, Number(minimum=0, unit="radians"), result=True)
    epsilon: float | None = setting(None, Number(minimum=0, unit="radians"), result=True)
    calibration_pairs: int = setting(600, Whole(minimum=4), result=True, flag=None)
    # data whose pairs calibrate the thresholds, the prior and delta (default: data)
    calibrate_on: str | None = setting(None, result=True, legacy=None)
    batch_pairs: int = setting(8, Whole(minimum=1), kept=True)
    batch_size: int = setting(64, Whole(minimum=1), kept=True, flag=None)
    method_options: dict[str, dict] = setting(factory=dict, check=Tables(), result=True, flag="--option")
    grid_pairs: int = setting(4, Whole(minimum=0), kept=True, flag=None)  # pairs in the saliency-grid figure
    # absolute, or beyond-prior: the margin must beat the model's prior map's
    criterion: str | None = setting(None, Text(choices=CRITERIA, unknown=True), result=True)
    delta: float | str | None = setting(None, Delta(), result=True)  # beyond-prior margin (radians), or "calibrated"
    # what the distances measure (choices.TARGETS); default the preset's (signed-angle; plain: embedding)
    target: str | None = setting(None, Text(choices=TARGETS, unknown=True), result=True, legacy="embedding")
    # images (not tested) whose mean occlusion map is the model's prior, and the cells per side of their maps
    prior_images: int = setting(40, Whole(minimum=1), result=True, flag=None)
    prior_grid: int = setting(10, Whole(minimum=2), result=True, flag=None)
    # add METHOD@random-model rows: maps of a randomised model, tested on the real one
    sanity: bool = setting(False, Flag(), kept=True)
    # add METHOD@other-reference rows: maps made against another pair's face
    other_reference: bool = setting(False, Flag(), kept=True)
    # a deletion curve per (method, genuine pair the model accepts), in the row's detail
    deletion: bool = setting(False, Flag(), result=True)
    # 6.1: search the test's ceiling on each pair (falsify.falsification.ceiling)
    ceiling: bool = setting(True, Flag(), flag="--no-ceiling")
    # demographic labels folder (falsify.data.labels): 6.3's and 6.6's groups, --stratify
    labels: str | None = setting(None, result=True, kept=True)
    # "gender": sample pairs balanced by the gender of image A (needs labels)
    stratify: str | None = setting(None, Text(choices=STRATIFY_CHOICES), result=True)
    # experiment 6.4: the models compared (default exp_6_4.DEFAULT_MODELS)
    models: list[str] | None = setting(None, Names("a list of model names"), result=True, legacy=None,
                                       experiments=("6.4",))
    device: str | None = setting(None)
    # what the network runs in (falsify.models.precision): fp32, bf16, fp16; refused where the machine cannot
    precision: str = setting("fp32", Text(choices=PRECISIONS), result=True, legacy="fp32")
    # under bf16/fp16, 6.1's rows within this many radians of their verdict's boundary are computed again in
    # float32 (falsify.experiments.recheck); 0: none; None: recheck.DEFAULT_RECHECK_BAND, or nothing for fp32
    recheck_band: float | None = setting(None, Number(minimum=0, unit="radians"), result=True, legacy=None)
    # who computes the rows: in-process, or ray (falsify.experiments.executor)
    executor: str = setting("in-process", Text(choices=EXECUTORS))
    # --executor ray: the cluster to join (ADDRESS or auto; default: start one here), and its workers
    ray_address: str | None = setting(None)
    workers: int | None = setting(None, Whole(minimum=1))
    # known-truth: the composites' construction (lateral, parts, swap, average; default lateral), the donor's parts
    # (eyes, eyes+nose, inner; default inner), and the least effect of a composite kept (rad)
    truth: str | None = setting(None, Text(choices=TRUTH_CONSTRUCTIONS), result=True, legacy=None,
                                experiments=("known-truth",))
    truth_parts: str | None = setting(None, Text(choices=TRUTH_PARTS), result=True, legacy=None,
                                      experiments=("known-truth",))
    truth_min_effect: float = setting(0.0, Number(), experiments=("known-truth",))

    def __post_init__(self) -> None:
        # each value against its setting's constraint; values from a TOML file, a flag or a store were
        # checked (naming their source) by resolve, so a refusal here is of a library call
        check_values(SETTINGS, self.to_dict(), "RunConfig")
        check_experiment(SETTINGS.values(), self.to_dict(), self.experiment, EXPERIMENT_LABELS)
        if self.precision != "fp32":  # one this machine cannot run: refused before anything is written
            from ..models import resolve_device
            from ..models.precision import check_precision

            check_precision(self.precision, resolve_device(self.device))
            if self.recheck_band is None:
                self.recheck_band = DEFAULT_RECHECK_BAND
        else:  # a float32 run has nothing to re-check (a resumed low-precision store's band then conflicts)
            self.recheck_band = None
        from ..falsification.core import apply_preset

        for key, value in apply_preset(self.preset, self.fill, self.q, self.criterion, self.delta,
                                       self.target).items():
            setattr(self, key, value)
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods or self.methods == ["all"]:
            # the default methods ('all': every one); an experiment's own defaults are given to it as
            # its methods (Experiment.default_methods, registry.configure)
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
        given = [v is not None for v in (self.tau_high, self.tau_low, self.epsilon)]
        if any(given) and not all(given):
            raise ValueError("give all of tau_high, tau_low and epsilon, or none (then they are calibrated)")
        unknown_opts = [m for m in self.method_options if m not in METHODS and m not in self.methods]
        if unknown_opts:
            raise ValueError(f"method_options names unknown method(s) {', '.join(unknown_opts)}")
        unused = [m for m in self.method_options if m not in self.methods]
        if unused:
            raise ValueError(f"options are given for {', '.join(unused)}, which is not among the methods run "
                             f"({', '.join(self.methods)}); add it to methods or drop its options")
        if self.stratify is not None and self.labels is None:
            raise ValueError(f"stratify {self.stratify} samples pairs by the {self.stratify} of image A: give the "
                             "labels folder too (--labels DIR, e.g. ../shared/data/lfw-labels)")
        if self.labels is not None:
            from ..data.labels import check_folder

            check_folder(self.labels)
        self._check_executor()
        self.falsification_config()  # fill, granularity, q, ... checked by the test's own config
        if isinstance(self.input_size, tuple):
            self.input_size = list(self.input_size)

    def _check_executor(self) -> None:
        """``executor`` and its settings (they never change results, so a run can be resumed with
        another executor)."""
        if self.executor != "ray":
            for key in ("ray_address", "workers"):
                if getattr(self, key) is not None:
                    flag = SETTINGS[key].flag
                    raise ValueError(f"{key} ({flag}) is a setting of the Ray executor: add --executor ray, or drop "
                                     f"{flag}")

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
        names = {alias: name for name, st in SETTINGS.items() for alias in (name, *st.aliases)}
        canonical: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for key, value in values.items():
            name = names.get(key.replace("-", "_"), key.replace("-", "_"))
            if name in canonical:
                raise ValueError(f"{path}: {spelled[name]} and {key} are the same setting; keep one")
            canonical[name], spelled[name] = value, key
        values = canonical
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(SETTINGS))}")
        check_values(SETTINGS, values, str(path))
        return values

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "RunConfig":
        values = cls.read_toml(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, *, flags: dict | None = None,
                **overrides: Any) -> "RunConfig":
        """Settings from, in increasing precedence: the defaults, the store of an existing ``out``
        (its result settings and its last run's kept settings), ``config_file``, ``flags`` (the
        command line's, by key), ``overrides`` (None meaning "not given" in both). So ``falsify run
        6.2 --out DIR`` continues DIR's run as it was made. Each source's values are checked on
        their own, and a refusal names the source: the file, the flag, the store.
        ``registry.configure`` adds the experiment's own defaults and checks."""
        return cls(**cls.resolve_values(config_file, flags=flags, **overrides))

    @classmethod
    def resolve_values(cls, config_file: str | Path | None = None, *, flags: dict | None = None,
                       **overrides: Any) -> dict:
        """The values :meth:`resolve` builds its config of (each checked, naming its source)."""
        values = cls.read_toml(config_file) if config_file else {}
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        check_values(SETTINGS, flags, lambda st: st.flag or st.name)
        values.update(flags)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("out"):
            store = Path(values["out"]) / "results.sqlite"
            stored = inspect_store(store)
            if stored and stored["meta"].get("settings"):
                base = {k: v for k, v in {**LEGACY, **stored["meta"]["settings"]}.items() if k in RESULT_KEYS}
                if stored["runs"]:
                    base.update({k: stored["runs"][-1][k] for k in KEPT_KEYS if k in stored["runs"][-1]})
                check_values(SETTINGS, base, str(store))
                values = {**base, **values}
        return values

    @property
    def model_spec(self):
        """``model`` and ``align``, parsed (``falsify.models.ModelSpec``)."""
        from ..models import ModelSpec

        return ModelSpec.parse(self.model, self.align)

    @property
    def needs_prior(self) -> bool:
        """The model's prior map is needed: for the ``centre`` control or a criterion that needs it
        (``Criterion.needs_prior``: beyond-prior); an experiment may need it whatever its settings
        (``Experiment.needs_prior``: the validity study)."""
        return "centre" in self.methods or self.criterion_class.needs_prior

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

        out = {k: getattr(self, k) for k in RESULT_KEYS}
        # what auto meant for this model (Experiment.result_settings: 6.4 runs several models, whose
        # own stores record theirs)
        out["align"] = resolve_align(self.model_spec) or "none"
        if self.stratify is None:  # the labels decide which pairs are run only through --stratify
            out["labels"] = None
        out["path_rules"] = PATH_RULES
        for key in ("data", "pairs", "labels", "calibrate_on"):
            if out[key] is not None:
                out[key] = str(Path(out[key]).expanduser().resolve())
        return json.loads(json.dumps(out, default=str))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Every setting of a run, by name (``settings.Setting``: its constraint, default, experiments, ...).
SETTINGS: dict[str, Setting] = schema(RunConfig)
#: settings that change results: a store made with other values is not resumed
RESULT_KEYS: tuple[str, ...] = tuple(k for k, st in SETTINGS.items() if st.result)
#: settings of the last invocation that a resumed run keeps unless they are given again
KEPT_KEYS: tuple[str, ...] = tuple(k for k, st in SETTINGS.items() if st.kept)
#: the value a setting had before it existed, for stores made by an older falsify (``path_rules``:
#: how ig and geodesic-ig integrated, stored with the settings, not a setting itself)
LEGACY: dict[str, Any] = {**{k: st.legacy for k, st in SETTINGS.items() if st.legacy is not NOT_GIVEN},
                          "path_rules": "doubling"}
RunConfig.SETTINGS, RunConfig.RESULT_KEYS, RunConfig.KEPT_KEYS, RunConfig.LEGACY = (SETTINGS, RESULT_KEYS, KEPT_KEYS,
                                                                                   LEGACY)
#: how a refusal names an experiment whose settings are given to another ("experiment NAME" otherwise)
EXPERIMENT_LABELS = {"known-truth": "the known-truth benchmark"}
