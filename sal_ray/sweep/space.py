"""Search-space entries: what a sweep may draw for one trainer option.

    {"lr": loguniform(1e-4, 1e-1), "n_areas": [1, 4, 16], "depth": 4}

A plain list (or `choice`) is a categorical choice, a number or string a fixed
value. Every entry is normalised (`parse_entry`) against the trainer's option
types before anything runs; `candidates` gives the values that stand for it in
validation. Optuna's distributions are made from these in `searcher`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, coerce, option_type


@dataclass(frozen=True)
class Float:
    """A real option drawn from [low, high], log-uniform when `log`."""
    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"{'loguniform' if self.log else 'uniform'}({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Int:
    """An integer option drawn from [low, high] (both included)."""
    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        return f"randint({self.low}, {self.high}{', log' if self.log else ''})"


@dataclass(frozen=True)
class Choice:
    """One of `values` (a plain list or tuple in a space means the same)."""
    values: tuple

    def describe(self) -> str:
        return "choice(" + ", ".join(map(str, self.values)) + ")"


def loguniform(low: float, high: float) -> Float:
    return Float(low, high, log=True)


def uniform(low: float, high: float) -> Float:
    return Float(low, high)


def randint(low: int, high: int, log: bool = False) -> Int:
    return Int(low, high, log)


def choice(*values) -> Choice:
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    return Choice(tuple(values))


Spec = Float | Int | Choice

# The default search: areas, learning rate over five decades around the paper's
# 1e-4, depth, width. Options not named keep the trainer's defaults.
DEFAULT_SPACE: dict[str, Spec] = {
    "n_areas": Choice((1, 2, 4, 8, 16)),
    "lr": Float(1e-6, 1e-1, log=True),
    "depth": Choice((2, 4, 16, 64, 128)),
    "width": Choice((64, 128, 256, 512, 1024)),
}


def parse_entry(name: str, value: Any) -> Spec | None:
    """Normalise one entry of a space; None means a fixed value."""
    if isinstance(value, (list, tuple)):
        value = Choice(tuple(value))
    if isinstance(value, Choice):
        if not value.values:
            raise ConfigError(name, "empty choice: give at least one value")
        values = tuple(coerce(name, v) for v in value.values)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(name, f"repeated values in choice {list(value.values)}")
        return Choice(values)
    if isinstance(value, (Float, Int)):
        kind = "float" if isinstance(value, Float) else "int"
        try:
            low, high = coerce(name, value.low), coerce(name, value.high)
        except ConfigError:
            raise ConfigError(name, f"{value.describe()}: {name} is not a {kind} option "
                              "(use a list of values)") from None
        if isinstance(value, Int) and option_type(name) != "int":
            raise ConfigError(name, f"{value.describe()}: {name} is a {option_type(name)} "
                              "option (use uniform/loguniform or a list)")
        if isinstance(value, Float) and option_type(name) != "float":
            raise ConfigError(name, f"{value.describe()}: {name} is not a float option "
                              "(use randint or a list of values)")
        if not low < high:
            raise ConfigError(name, f"{value.describe()}: needs low < high")
        if value.log and low <= 0:
            raise ConfigError(name, f"{value.describe()}: a log scale needs low > 0")
        return type(value)(low, high, value.log)
    if isinstance(value, (dict, set)) or callable(value):
        raise ConfigError(name, f"cannot read {value!r} as a search space entry: use a fixed "
                          "value, a list of values, or sal_ray.sweep.loguniform/uniform/randint")
    return None


def candidates(spec: Spec) -> list:
    """The values that stand for a spec in validation: all choices, or both ends."""
    return list(spec.values) if isinstance(spec, Choice) else [spec.low, spec.high]
