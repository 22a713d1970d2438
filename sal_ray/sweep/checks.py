"""The checks a sweep's inputs pass before Ray starts: each refuses bad input with
a ConfigError naming the option and what is allowed.

Optuna and Ray load here only when the caller hands in one of their objects (a
sampler, a scheduler): a plain name is checked without them, so a dry run of an
ordinary sweep loads no engine.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..distributed import check_layout

SAMPLERS = ("tpe", "random", "grid", "nsga2")
# Objectives: per-epoch metrics of the trainer, or parameter counts of the net.
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "samples_per_s",
                 "epoch_time_s", "wall_time_s")
COUNT_METRICS = ("params_active", "params_total", "params_router", "params_fixed")
ASHA_SETTINGS = ("grace_period", "reduction_factor", "brackets")
# A sweep's name is a folder under the storage path, an MLflow tag value inside
# filter strings and part of every run key: letters, digits, '.', '_' and '-',
# starting with a letter or digit (never '.' or '..'), at most NAME_MAX long.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 100
# An experiment name may also hold spaces and '/' (MLflow workspace paths).
EXPERIMENT_PATTERN = re.compile(r"[A-Za-z0-9/][A-Za-z0-9 ._/-]*")
EXPERIMENT_MAX = 200


def names(value, allowed: tuple, option: str) -> list[str]:
    """A non-empty list of distinct names out of `allowed`."""
    items = [value] if isinstance(value, str) else list(value or [])
    if not items:
        raise ConfigError(option, f"give at least one of {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise ConfigError(option, f"unknown {option[:-1]} {item!r}; known: {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise ConfigError(option, f"listed twice: {items}")
    return items


def sweep_name(value, option: str = "name") -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) \
            or len(value) > NAME_MAX:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else \
            f"{value[:40]!r}... ({len(value)} characters)"
        raise ConfigError(option, "must be 1 to 100 of letters, digits, '.', '_' and '-', "
                          f"starting with a letter or digit; got {shown}")
    return value


def experiment_name(value) -> str:
    if not isinstance(value, str) or not EXPERIMENT_PATTERN.fullmatch(value) \
            or len(value) > EXPERIMENT_MAX or value != value.strip():
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else \
            f"{value[:40]!r}... ({len(value)} characters)"
        raise ConfigError("experiment", "must be 1 to 200 of letters, digits, spaces, '.', "
                          "'_', '-' and '/', starting with a letter, digit or '/'; got " + shown)
    return value


def inside(folder: str, name: str) -> Path:
    """`folder/name`, refused unless it resolves (symbolic links followed) to a
    place inside `folder`."""
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise ConfigError("name", f"sweep folder {base / name} resolves to {target}, outside "
                          f"the storage path {base}")
    return target


def objectives(metric, mode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    metrics = (metric,) if isinstance(metric, str) else tuple(metric or ())
    modes = (mode,) if isinstance(mode, str) else tuple(mode or ())
    if not metrics:
        raise ConfigError("metric", "give at least one metric to optimise")
    if len(modes) != len(metrics):
        raise ConfigError("mode", f"one mode per metric: {len(metrics)} metric(s), {len(modes)} mode(s)")
    for m in metrics:
        if m not in EPOCH_METRICS + COUNT_METRICS:
            raise ConfigError("metric", f"unknown metric {m!r}; known: "
                              f"{', '.join(EPOCH_METRICS + COUNT_METRICS)}")
    for m in modes:
        if m not in ("max", "min"):
            raise ConfigError("mode", f"must be 'max' or 'min'; got {m!r}")
    if len(set(metrics)) != len(metrics):
        raise ConfigError("metric", f"listed twice: {list(metrics)}")
    return metrics, modes


def positive_int(option: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(option, f"must be a positive integer; got {value!r}")


def count(option: str, value) -> None:
    """An integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(option, f"must be an integer >= 0; got {value!r}")


def seconds(option: str, value, allow_none: bool = True, high: float | None = None) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise ConfigError(option, f"must be a number >= 0 (seconds); got {value!r}")
    if high is not None and value > high:
        raise ConfigError(option, f"must be at most {high:g} seconds; got {value!r}")


def resources(value) -> dict[str, float]:
    """Per-trial resources: cpu > 0, gpu >= 0 (whole above 1), workers a whole
    number >= 1; with workers, cpu and gpu are per worker and gpu is 0 or 1."""
    res = {"cpu": 1.0, "gpu": 0.0, **(value or {})}
    for k, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError("resources", f"{k} must be a number >= 0; got {v!r}")
    if res["cpu"] <= 0:
        raise ConfigError("resources", f"cpu must be > 0; got {res['cpu']}")
    if res["gpu"] > 1 and res["gpu"] != int(res["gpu"]):
        raise ConfigError("resources", f"gpu above 1 must be whole; got {res['gpu']}")
    workers = res.get("workers", 1)
    if workers != int(workers) or workers < 1:
        raise ConfigError("resources", f"workers must be a whole number >= 1; got {workers!r}")
    if workers > 1 and res["gpu"] not in (0, 1):
        # Ray Train places whole GPUs per worker: a share would ask for 1 at run time
        raise ConfigError("resources", "with workers, gpu is per worker: 0 or 1; got "
                          f"{res['gpu']}")
    return res


def sampler(value) -> Any:
    if isinstance(value, str):
        if value.lower() not in SAMPLERS:
            raise ConfigError("sampler", f"unknown sampler {value!r}; known: {', '.join(SAMPLERS)}"
                              " (or pass an optuna sampler)")
        return value.lower()
    try:
        import optuna  # only for a sampler object the caller made with it
    except ImportError as e:
        raise ConfigError("sampler", f"optuna is not installed: {e}") from None
    if isinstance(value, optuna.samplers.BaseSampler) or callable(value):
        return value
    raise ConfigError("sampler", f"must be one of {', '.join(SAMPLERS)}, an optuna sampler "
                      f"or a function returning one; got {value!r}")


def scheduler(value) -> Any:
    """None (FIFO), {"name": "asha", ...settings}, or a Ray TrialScheduler."""
    if value is None or value in ("fifo", "none"):
        return None
    if value == "asha":
        return {"name": "asha"}
    if isinstance(value, dict):
        if value.get("name", "asha") != "asha":
            raise ConfigError("scheduler", f"unknown scheduler {value.get('name')!r}; "
                              "use 'asha', a dict of ASHA settings, or a Ray TrialScheduler")
        unknown = set(value) - {"name", *ASHA_SETTINGS}
        if unknown:
            raise ConfigError("scheduler", f"unknown ASHA setting(s) {sorted(unknown)}; "
                              f"known: {', '.join(ASHA_SETTINGS)}")
        for key in ("grace_period", "brackets"):
            v = value.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError("scheduler", f"ASHA {key} must be a positive integer; got {v!r}")
        v = value.get("reduction_factor", 2)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 1:
            raise ConfigError("scheduler", f"ASHA reduction_factor must be a number > 1; got {v!r}")
        return {"name": "asha", **value}
    if isinstance(value, str):
        raise ConfigError("scheduler", f"unknown scheduler {value!r}; use 'asha' or None")
    from ray.tune.schedulers import TrialScheduler  # only for a scheduler object given
    if isinstance(value, TrialScheduler):
        return value
    raise ConfigError("scheduler", f"must be None, 'asha', a dict of ASHA settings or a Ray "
                      f"TrialScheduler; got {value!r}")


def layouts(studies, workers: int, layout) -> dict[str, str]:
    """`layout` as method -> layout ("data" | "layer"), checked for every study's
    fixed configuration before anything starts (with resources['workers'])."""
    methods = list(dict.fromkeys(s.method for s in studies))
    if isinstance(layout, dict):
        unknown = set(layout) - set(methods)
        if unknown:
            raise ConfigError("layout", f"names methods this sweep does not run: "
                              f"{', '.join(sorted(unknown))}; it runs {', '.join(methods)}")
        chosen = {m: layout.get(m, "data") for m in methods}
    else:
        chosen = {m: layout for m in methods}
    for study in studies:
        check_layout(Config.from_flat(study.fixed), chosen[study.method],
                     workers if workers > 1 else None)
    return chosen
