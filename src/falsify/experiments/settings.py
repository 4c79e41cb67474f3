"""The schema of a run's settings: each setting declared once, where :class:`~.config.RunConfig`
declares its field.

A field made with :func:`setting` carries its constraint (type, range or choices), which
experiments use it, whether it must match to resume a store (a *result* setting), whether a
resumed run keeps it from the last invocation (a *kept* setting), its value for stores made by
an older falsify (*legacy*) and its ``falsify run`` flag. Values from every source are checked by
:func:`check_values` against it, and a refusal names the key and the source: a TOML file
(``run.toml: truth_min_effect must be a number, got 'abc'``), a flag (``--workers: ...``), the
store of ``--out`` or a library call (``RunConfig: ...``). The model is scikit-learn's
``_parameter_constraints``, checked in one place (``sklearn.utils._param_validation``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: "no value declared" (a setting without a legacy value; a field without a default)
NOT_GIVEN: Any = _NotGiven()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- constraints: what a valid value is -----------------------------------------------------------

@dataclass(frozen=True)
class Constraint:
    """A value's type (``text``: "KEY must be TEXT"), and an optional further test."""

    text: str = ""

    def accepts_type(self, value) -> bool:  # pragma: no cover - every constraint below defines it
        raise NotImplementedError

    def problem(self, key: str, value) -> str | None:
        """Why ``value`` is not a valid ``key`` (None when it is)."""
        if not self.accepts_type(value):
            return f"{key} must be {self.text}, got {value!r}"
        return self.out_of_range(key, value)

    def out_of_range(self, key: str, value) -> str | None:
        return None


@dataclass(frozen=True)
class Whole(Constraint):
    """A whole number (never a bool), at least ``minimum`` when given."""

    text: str = "a whole number"
    minimum: int | None = None

    def accepts_type(self, value) -> bool:
        return _is_int(value)

    def out_of_range(self, key, value):
        if self.minimum is not None and value < self.minimum:
            return f"{key} must be >= {self.minimum}, got {value}"
        return None


@dataclass(frozen=True)
class Number(Constraint):
    """A finite number, at least ``minimum`` (in ``unit``) when given."""

    text: str = "a number"
    minimum: float | None = None
    unit: str = ""

    def accepts_type(self, value) -> bool:
        return _is_number(value)

    def out_of_range(self, key, value):
        if self.minimum is not None and value < self.minimum:
            unit = f" {self.unit}" if self.unit else ""
            return f"{key} must be >= {self.minimum:g}{unit}, got {value}"
        return None


@dataclass(frozen=True)
class Text(Constraint):
    """A string; one of ``choices`` when given. ``unknown``: the refusal reads "unknown KEY 'x';
    choose from ..." (the experiment, the preset, the test's names) instead of "KEY must be one of"."""

    text: str = "a string"
    choices: tuple[str, ...] | None = None
    unknown: bool = False

    def accepts_type(self, value) -> bool:
        return isinstance(value, str)

    def out_of_range(self, key, value):
        if self.choices is None or value in self.choices:
            return None
        if self.unknown:
            return f"unknown {key} {value!r}; choose from {', '.join(self.choices)}"
        return f"{key} must be one of {', '.join(self.choices)}, got {value!r}"


@dataclass(frozen=True)
class Flag(Constraint):
    text: str = "true or false"

    def accepts_type(self, value) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Names(Constraint):
    """A list of names, or one comma-separated string of them."""

    text: str = "a list of names"

    def accepts_type(self, value) -> bool:
        return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(m, str) for m in value))


@dataclass(frozen=True)
class Delta(Constraint):
    """The beyond-prior margin: radians >= 0, or ``"calibrated"``."""

    text: str = 'a number of radians or "calibrated"'

    def accepts_type(self, value) -> bool:
        return value == "calibrated" or _is_number(value)

    def out_of_range(self, key, value):
        if value != "calibrated" and value < 0:
            return f'{key} must be >= 0 radians (or "calibrated"), got {value}'
        return None


@dataclass(frozen=True)
class Size(Constraint):
    text: str = "two whole numbers >= 1 [height, width]"

    def accepts_type(self, value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)


@dataclass(frozen=True)
class PerChannel(Constraint):
    text: str = "a number or a list of three"

    def accepts_type(self, value) -> bool:
        vals = value if isinstance(value, (list, tuple)) else [value]
        return len(vals) in (1, 3) and all(_is_number(v) for v in vals)


@dataclass(frozen=True)
class Tables(Constraint):
    text: str = "a table of method tables, e.g. [method_options.ig] steps = 128"

    def accepts_type(self, value) -> bool:
        return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


# --- a setting --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One setting of a run, as declared by :func:`setting` on its ``RunConfig`` field."""

    name: str
    check: Constraint
    default: Any = None
    result: bool = False  # must match on resume: a store made with another value is not resumed
    kept: bool = False  # a resumed run keeps the last invocation's value unless it is given again
    legacy: Any = NOT_GIVEN  # its value in the stores of an older falsify that did not have it
    experiments: tuple[str, ...] | None = None  # the experiments that use it (None: every one)
    flag: str | None = None  # its ``falsify run`` flag (None: TOML and library only)
    aliases: tuple[str, ...] = ()  # other TOML spellings (besides ``-`` for ``_``)

    def problem(self, value) -> str | None:
        """Why ``value`` is not valid here (None when it is). ``None`` means "not given", valid
        for the settings whose default is None."""
        if value is None:
            return None if self.default is None else f"{self.name} must be {self.check.text}, got None"
        return self.check.problem(self.name, value)

    @property
    def label(self) -> str:
        """The key and its flag, as refusals name it: ``truth_min_effect (--truth-min-effect)``."""
        return f"{self.name} ({self.flag})" if self.flag and self.flag.startswith("--") else self.name


def setting(default: Any = NOT_GIVEN, check: Constraint = Text(), *, factory: Callable | None = None,
            result: bool = False, kept: bool = False, legacy: Any = NOT_GIVEN,
            experiments: tuple[str, ...] | None = None, flag: str | None = "", aliases: tuple[str, ...] = ()):
    """A ``RunConfig`` field declaring its setting. ``flag`` "" (default): ``--name-with-dashes``;
    None: no flag."""
    meta = {"setting": dict(check=check, result=result, kept=kept, legacy=legacy, experiments=experiments,
                            flag=flag, aliases=aliases)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is NOT_GIVEN:
        raise TypeError("a setting needs a default or a factory")
    return dataclasses.field(default=default, metadata=meta)


def schema(cls) -> dict[str, Setting]:
    """Every setting of the dataclass ``cls``, by name, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata["setting"])
        if meta["flag"] == "":
            meta["flag"] = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = Setting(f.name, default=default, **meta)
    return out


def check_values(settings: dict[str, Setting], values: dict, source: str | Callable[[Setting], str]) -> None:
    """Refuse the first value of ``values`` that its setting does not accept, in one line naming
    ``source`` (a file, ``RunConfig``; or, called with the setting, its flag) and the key."""
    for key, value in values.items():
        problem = settings[key].problem(value)
        if problem:
            where = source(settings[key]) if callable(source) else source
            raise ValueError(f"{where}: {problem}")


def check_experiment(settings: Iterable[Setting], values: dict, experiment: str, labels: dict[str, str]) -> None:
    """Refuse a setting of other experiments given a value other than its default. ``labels``:
    how a message names an experiment ("the known-truth benchmark"; default "experiment NAME")."""
    for s in settings:
        if s.experiments is None or experiment in s.experiments or values.get(s.name, s.default) == s.default:
            continue
        who = " or ".join(labels.get(e, f"experiment {e}") for e in s.experiments)
        raise ValueError(f"{s.label} is a setting of {who}; drop it, or run {' or '.join(s.experiments)} (got "
                         f"experiment {experiment})")
