"""Sweeps: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

    import sal_ray
    from sal_ray.sweep import loguniform
    res = sal_ray.tune(datasets=["digits"], methods=["sal", "bp", "moe"],
                       space={"lr": loguniform(1e-4, 1e-1), "n_areas": [1, 4, 16]},
                       fixed={"epochs": 10}, trials=20, seeds=3)
    print(res.table())          # best configuration per (dataset, method)
    res.trials                  # one row per trial (configuration), tidy

Design (the why; docs/sweeps.md has the how):
- One Tune run for the whole sweep, one Optuna study per (dataset, method). A
  single custom `Searcher` hands out the studies' trials round-robin, so every
  method gets the same budget, the pairs progress at the same pace, and the
  workers never idle at the tail of one pair while another waits. Ray starts
  once and trial actors are reused (a Ray actor costs seconds; a Digits run, one).
- A trial is one configuration; its seeds run inside it, one after another, each
  as its own MLflow child run (dashboards get mean ± std over seeds). Tune is
  told, after every epoch, the running mean over seeds, `mean_<metric>`: the
  finished seeds' final values and the current seed's current value. Every trial
  runs the seeds in the same order, so ASHA compares like with like at each rung,
  and the last report is the mean over seeds of the final values: what Optuna
  optimises.
- Optuna hears COMPLETE with that mean; PRUNED for a trial that ASHA stopped or
  that diverged (TPE ranks pruned trials below every complete one, without
  inventing a value); FAIL for a configuration the trainer rejected or a crash.
  The best configuration is chosen among completed trials only, so a partial
  value never wins (PITFALLS: Ray's OptunaSearch tells stopped trials COMPLETE).
- Everything that can be wrong with the input is checked before Ray starts:
  names, the space (every candidate value through the trainer's own validation),
  the data on disk (local runs), the tracking store.

This module and `tracking` are the only ones that import Ray, Optuna and MLflow,
and they do so inside functions: `import sal_ray.sweep` stays cheap and works
without them.
"""

from __future__ import annotations

import atexit
import copy
import datetime
import hashlib
import itertools
import json
import math
import os
import pickle
import shutil
import statistics
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .config import (DATASETS, DEFAULTS, METHODS, OPTION_SECTION, Config, ConfigError,
                     coerce, option_type, validate)

# ---- search spaces ---------------------------------------------------------------


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

# The default search: areas, learning rate over five decades around the
# paper's 1e-4, depth, width. Options not named keep the trainer's defaults.
DEFAULT_SPACE: dict[str, Spec] = {
    "n_areas": Choice((1, 2, 4, 8, 16)),
    "lr": Float(1e-6, 1e-1, log=True),
    "depth": Choice((2, 4, 16, 64, 128)),
    "width": Choice((64, 128, 256, 512, 1024)),
}
# Objectives: per-epoch metrics of the trainer, or parameter counts of the net.
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "samples_per_s",
                 "epoch_time_s", "wall_time_s")
COUNT_METRICS = ("params_active", "params_total", "params_router", "params_fixed")
SAMPLERS = ("tpe", "random", "grid", "nsga2")
DEFAULT_TRIALS = 20  # per (dataset, method)
# Options that do nothing for a method are not searched for it (they would burn
# its budget on no-ops): SAL's rule options for bp and MoE, MoE's balance loss for
# the others, and areas for bp (one area, no router: the trainer rejects others).
SAL_ONLY = tuple(name for name, section in OPTION_SECTION.items() if section == "sal")
NOT_FOR = {"bp": (*SAL_ONLY, "moe_balance", "n_areas"), "moe": SAL_ONLY, "sal": ("moe_balance",)}
# Set by the sweep itself, never searched or fixed by the caller.
RESERVED = ("dataset", "method", "seed")
RESERVED_HOW = {"dataset": "use datasets=", "method": "use methods=",
                "seed": "use seeds= (and fixed={'seed': first} to move the first)"}
# Final metrics summarised as mean ± std over seeds in the trials table.
FINAL_KEYS = ("val_acc", "val_loss", "train_acc", "train_loss", "wall_time_s", "samples_per_s")


def _spec(name: str, value: Any) -> Spec | None:
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


def _candidates(spec: Spec) -> list:
    """The values that stand for a spec in validation: all choices, or both ends."""
    return list(spec.values) if isinstance(spec, Choice) else [spec.low, spec.high]


def _distribution(spec: Spec):
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)
    if isinstance(spec, Choice):
        return CategoricalDistribution(spec.values)
    if isinstance(spec, Float):
        return FloatDistribution(spec.low, spec.high, log=spec.log)
    return IntDistribution(spec.low, spec.high, log=spec.log)


# ---- the plan: everything checked before Ray starts ---------------------------------

@dataclass
class Pair:
    """One (dataset, method) study: what it searches, what it fixes, its budget."""
    dataset: str
    method: str
    space: dict[str, Spec]
    fixed: dict[str, Any]
    budget: int
    grid: list[dict] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.method}"


@dataclass
class Plan:
    name: str
    pairs: list[Pair]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    sampler: Any
    scheduler: Any
    seeds: int
    base_seed: int
    resources: dict[str, float]
    experiment: str
    max_epochs: int

    @property
    def total_trials(self) -> int:
        return sum(p.budget for p in self.pairs)

    def describe(self) -> str:
        lines = [f"sweep {self.name}: {self.total_trials} trial(s) x {self.seeds} seed(s); "
                 f"objective {', '.join(f'{m} ({o})' for m, o in zip(self.metrics, self.modes))}"]
        for p in self.pairs:
            searched = ", ".join(f"{k}={v.describe()}" for k, v in p.space.items()) or "nothing"
            lines.append(f"  {p.key}: {p.budget} trial(s), searching {searched}")
            lines += [f"    note: {n}" for n in p.notes]
        return "\n".join(lines)


def _names(value, allowed: tuple, option: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    if not items:
        raise ConfigError(option, f"give at least one of {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise ConfigError(option, f"unknown {option[:-1]} {item!r}; known: {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise ConfigError(option, f"listed twice: {items}")
    return items


def _objectives(metric, mode) -> tuple[tuple[str, ...], tuple[str, ...]]:
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


def _check_positive_int(option: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(option, f"must be a positive integer; got {value!r}")


def _resources(resources) -> dict[str, float]:
    res = {"cpu": 1.0, "gpu": 0.0, **(resources or {})}
    for k, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError("resources", f"{k} must be a number >= 0; got {v!r}")
    if res["cpu"] <= 0:
        raise ConfigError("resources", f"cpu must be > 0; got {res['cpu']}")
    if res["gpu"] > 1 and res["gpu"] != int(res["gpu"]):
        raise ConfigError("resources", f"gpu above 1 must be whole; got {res['gpu']}")
    return res


def _sampler(sampler) -> Any:
    if isinstance(sampler, str):
        if sampler.lower() not in SAMPLERS:
            raise ConfigError("sampler", f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}"
                              " (or pass an optuna sampler)")
        return sampler.lower()
    try:
        import optuna
    except ImportError as e:
        raise ConfigError("sampler", f"optuna is not installed: {e}") from None
    if isinstance(sampler, optuna.samplers.BaseSampler) or callable(sampler):
        return sampler
    raise ConfigError("sampler", f"must be one of {', '.join(SAMPLERS)}, an optuna sampler "
                      f"or a function returning one; got {sampler!r}")


def _scheduler(scheduler) -> Any:
    if scheduler is None or scheduler in ("fifo", "none"):
        return None
    if scheduler == "asha":
        return {"name": "asha"}
    if isinstance(scheduler, dict):
        if scheduler.get("name", "asha") != "asha":
            raise ConfigError("scheduler", f"unknown scheduler {scheduler.get('name')!r}; "
                              "use 'asha', a dict of ASHA settings, or a Ray TrialScheduler")
        unknown = set(scheduler) - {"name", "grace_period", "reduction_factor", "brackets"}
        if unknown:
            raise ConfigError("scheduler", f"unknown ASHA setting(s) {sorted(unknown)}; "
                              "known: grace_period, reduction_factor, brackets")
        for key in ("grace_period", "brackets"):
            v = scheduler.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError("scheduler", f"ASHA {key} must be a positive integer; got {v!r}")
        v = scheduler.get("reduction_factor", 2)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 1:
            raise ConfigError("scheduler", f"ASHA reduction_factor must be a number > 1; got {v!r}")
        return {"name": "asha", **scheduler}
    if isinstance(scheduler, str):
        raise ConfigError("scheduler", f"unknown scheduler {scheduler!r}; use 'asha' or None")
    from ray.tune.schedulers import TrialScheduler
    if isinstance(scheduler, TrialScheduler):
        return scheduler
    raise ConfigError("scheduler", f"must be None, 'asha', a dict of ASHA settings or a Ray "
                      f"TrialScheduler; got {scheduler!r}")


def _fail(option: str, err: ConfigError, where: str) -> ConfigError:
    detail = str(err).split(": ", 1)[-1]
    return ConfigError(err.option or option, f"{detail} ({where})")


def _pair(dataset: str, method: str, space: dict[str, Spec], fixed: dict[str, Any],
          trials: int | None, grid: bool) -> Pair:
    notes = []
    space, fixed = dict(space), {**fixed, "dataset": dataset, "method": method}
    for name in NOT_FOR[method]:
        if name in space:
            del space[name]
            notes.append(f"{name} not searched for {method} (no effect or not allowed)")
    if method == "bp":  # one area, no router: the trainer refuses anything else
        if fixed.get("n_areas", 1) != 1:
            notes.append(f"n_areas fixed to 1 for bp (was {fixed['n_areas']})")
        fixed["n_areas"] = 1
    from .data import DATASETS_INFO
    n_classes = DATASETS_INFO[dataset].n_classes  # enables the router's d_f >= classes check
    try:
        base = validate(Config.from_flat(fixed), n_classes)
    except ConfigError as e:
        raise _fail("fixed", e, f"fixed options for {method} on {dataset}") from None
    for name, spec in space.items():
        for value in _candidates(spec):
            try:
                validate(base.replace(**{name: value}), n_classes)
            except ConfigError as e:
                raise _fail(name, e, f"search space value {value!r} for {method} on {dataset}") \
                    from None
    points = None
    if grid:
        bad = [k for k, s in space.items() if not isinstance(s, Choice)]
        if bad:
            raise ConfigError(bad[0], "a grid needs a list of values, not "
                              f"{space[bad[0]].describe()}")
        keys = list(space)
        points = [dict(zip(keys, combo)) for combo in
                  itertools.product(*(space[k].values for k in keys))]
        if trials is not None and trials < len(points):
            notes.append(f"first {trials} of {len(points)} grid points")
            points = points[:trials]
        budget = len(points)
    elif not space:
        budget = 1
        notes.append("nothing left to search: one configuration")
    else:
        budget = trials
    return Pair(dataset, method, space, fixed, budget, points, notes)


def plan(datasets: str | Sequence[str] = ("digits",), methods: str | Sequence[str] = METHODS,
         space: dict[str, Any] | None = None, *, fixed: dict[str, Any] | None = None,
         method_spaces: dict[str, dict[str, Any]] | None = None, trials: int | None = None,
         sampler: Any = "tpe", metric: str | Sequence[str] = "val_acc",
         mode: str | Sequence[str] = "max", scheduler: Any = None, seeds: int = 1,
         resources: dict[str, float] | None = None, experiment: str = "sal-ray",
         name: str | None = None, local: bool = True) -> Plan:
    """Validate a sweep and lay it out; raises ConfigError naming the bad option.
    Touches neither Ray nor MLflow (`tune(..., dry_run=True)` returns this)."""
    datasets = _names(datasets, DATASETS, "datasets")
    methods = _names(methods, METHODS, "methods")
    metrics, modes = _objectives(metric, mode)
    sampler = _sampler(sampler)
    grid = sampler == "grid"
    _check_positive_int("trials", trials, allow_none=True)
    if trials is None and not grid:
        trials = DEFAULT_TRIALS
    _check_positive_int("seeds", seeds)
    sched = _scheduler(scheduler)
    res = _resources(resources)
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError("experiment", f"must be a non-empty name; got {experiment!r}")
    if space is not None and not isinstance(space, dict):
        raise ConfigError("space", f"must be a dict of option -> values; got {type(space).__name__}")
    if not isinstance(fixed or {}, dict):
        raise ConfigError("fixed", f"must be a dict of option -> value; got {type(fixed).__name__}")
    fixed = dict(fixed or {})
    # an option fixed by the caller leaves the default space; an explicit space and
    # `fixed` must not name the same option (which one was meant?)
    space = {k: v for k, v in DEFAULT_SPACE.items() if k not in fixed} if space is None \
        else dict(space)
    for method, extra in (method_spaces or {}).items():
        _names([method], METHODS, "methods")
        if not isinstance(extra, dict):
            raise ConfigError("method_spaces", f"{method}: must be a dict of option -> values")
        for opt in sorted(set(extra) & set(NOT_FOR[method])):  # asked for by name
            spec = _spec(opt, extra[opt])
            if spec is not None and not (isinstance(spec, Choice) and len(spec.values) == 1):
                raise ConfigError(opt, f"cannot be searched for {method} (method_spaces): " + (
                    "bp has one area and no router" if opt == "n_areas" else
                    f"no effect on {method}"))
    # where and how a run executes, not what it learns: fixed, never searched
    unsearchable = {"data_root": "where the data is", "download": "whether to fetch data",
                    "device": "set by resources= (a GPU share sets cuda)"}
    # every name, searched or fixed, must be a trainer option the sweep does not own
    entries: dict[str, dict[str, Spec]] = {}
    base_fixed: dict[str, dict[str, Any]] = {}
    for method in methods:
        merged = {**space, **(method_spaces or {}).get(method, {})}
        searched, pinned = {}, dict(fixed)
        for opt, value in merged.items():
            if opt in RESERVED:
                raise ConfigError(opt, "set by the sweep, not searchable: " + RESERVED_HOW[opt])
            if opt not in OPTION_SECTION:
                Config.from_flat({opt: None})  # raises with the "did you mean" hint
            spec = _spec(opt, value)
            if spec is None or (isinstance(spec, Choice) and len(spec.values) == 1):
                pinned[opt] = spec.values[0] if spec is not None else coerce(opt, value)
            else:
                if opt in unsearchable:
                    raise ConfigError(opt, f"cannot be searched ({unsearchable[opt]}): give "
                                      "one value in fixed=")
                searched[opt] = spec
            if opt in fixed:
                raise ConfigError(opt, "both fixed and searched; keep one")
        for opt in fixed:
            if opt in ("dataset", "method"):
                raise ConfigError(opt, "set by the sweep, not fixable: " + RESERVED_HOW[opt])
            if opt not in OPTION_SECTION:
                Config.from_flat({opt: None})
        entries[method], base_fixed[method] = searched, pinned
    if not grid and not any(entries.values()):
        raise ConfigError("space", "empty search space: nothing to search (name options to "
                          "search, or use sampler='grid' to run fixed configurations)")
    if resources and res.get("gpu", 0) > 0:
        for m in methods:
            base_fixed[m].setdefault("device", "cuda")
    pairs = []
    for dataset in datasets:
        for method in methods:
            pin = dict(base_fixed[method])
            if pin.get("data_root") is not None and local:
                pin["data_root"] = str(Path(str(pin["data_root"])).expanduser().resolve())
            pairs.append(_pair(dataset, method, entries[method], pin, trials, grid))
    if local:
        _check_data(pairs)
    max_epochs = max(max(_candidates(p.space["epochs"])) if "epochs" in p.space
                     else Config.from_flat(p.fixed).optim.epochs for p in pairs)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = name or f"sweep-{stamp}-{uuid.uuid4().hex[:4]}"
    if not isinstance(name, str) or not name.strip() or "'" in name:
        raise ConfigError("name", f"must be a non-empty name without quotes; got {name!r}")
    seed0 = Config.from_flat(pairs[0].fixed).run.seed
    return Plan(name, pairs, metrics, modes, sampler, sched, seeds, seed0, res, experiment,
                max_epochs)


def _check_data(pairs: list[Pair]) -> None:
    """Local runs: the data must be on disk now, not discovered missing in every trial."""
    from .data import DataError
    from .data.loading import check_available
    seen = set()
    for p in pairs:
        key = (p.dataset, p.fixed.get("data_root"), p.fixed.get("download", False))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_available(*key)
        except DataError as e:
            raise ConfigError("datasets", f"{p.dataset}: {e}") from None


# ---- the searcher: one Optuna study per (dataset, method) -----------------------------

def _optuna_sampler(sampler, pair_index: int, budget: int, base_seed: int):
    import optuna
    seed = base_seed * 1000 + pair_index
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return copy.deepcopy(sampler)  # studies must not share a sampler's state
    if callable(sampler):
        return sampler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "tpe":
            # a third of the budget (3 to 10 trials) explores at random first;
            # constant_liar keeps parallel asks from proposing the same point
            return optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, budget // 3)),
                                              multivariate=True, constant_liar=True, seed=seed)
        if sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed,
                                                 population_size=max(4, min(50, budget // 2)))
        return optuna.samplers.RandomSampler(seed=seed)  # random; grid points are enqueued


def _make_searcher(plan: Plan):
    """A Ray `Searcher` over one Optuna study per pair (defined here: Ray loads lazily)."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        def __init__(self):
            super().__init__(metric=None, mode=None)
            directions = ["maximize" if m == "max" else "minimize" for m in plan.modes]
            self.pairs = plan.pairs
            self.dists = {p.key: {k: _distribution(s) for k, s in p.space.items()}
                          for p in plan.pairs}
            self.studies = {}
            for i, p in enumerate(plan.pairs):
                study = optuna.create_study(
                    directions=directions, study_name=f"{plan.name}/{p.key}",
                    sampler=_optuna_sampler(plan.sampler, i, p.budget, plan.base_seed))
                for point in p.grid or ():
                    study.enqueue_trial(point)
                self.studies[p.key] = study
            self.asked = {p.key: 0 for p in plan.pairs}
            self.live: dict[str, Any] = {}   # Tune trial id -> Optuna trial
            self.told: dict[str, str] = {}   # Tune trial id -> status told
            self.steps: dict[str, set] = {}  # Tune trial id -> steps reported to Optuna

        def set_search_properties(self, metric, mode, config, **spec):
            return True  # the space and objectives are ours already

        def suggest(self, trial_id):
            open_pairs = [p for p in self.pairs if self.asked[p.key] < p.budget]
            if not open_pairs:
                return Searcher.FINISHED
            pair = min(open_pairs, key=lambda p: self.asked[p.key])  # round-robin: equal pace
            trial = self.studies[pair.key].ask(self.dists[pair.key])
            trial.set_user_attr("tune_trial_id", trial_id)
            self.asked[pair.key] += 1
            self.live[trial_id] = trial
            return {"dataset": pair.dataset, "method": pair.method, **trial.params}

        def on_trial_result(self, trial_id, result):
            # intermediate values (single objective only, in Optuna) rank pruned trials
            if len(plan.metrics) > 1 or trial_id not in self.live or trial_id in self.told:
                return
            value = result.get(f"mean_{plan.metrics[0]}")
            step = result.get("training_iteration")
            if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
                # a trial restarted from a checkpoint repeats the steps after it
                seen = self.steps.setdefault(trial_id, set())
                if int(step) not in seen:
                    seen.add(int(step))
                    self.live[trial_id].report(float(value), int(step))

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id not in self.live or trial_id in self.told:
                return
            trial = self.live[trial_id]
            status = _trial_status(result, error)
            values = None
            if status == "completed":
                values = [result.get(f"mean_{m}") for m in plan.metrics]
                if any(not isinstance(v, (int, float)) or math.isnan(v) for v in values):
                    status, values = "crashed", None
            state = {"completed": TrialState.COMPLETE, "diverged": TrialState.PRUNED,
                     "stopped": TrialState.PRUNED}.get(status, TrialState.FAIL)
            trial.set_user_attr("status", status)
            trial.study.tell(trial, values, state=state)
            self.told[trial_id] = status

        def save(self, checkpoint_path):
            try:
                with open(checkpoint_path, "wb") as f:
                    pickle.dump(self.__dict__, f)
            except Exception as e:  # noqa: BLE001
                raise NotImplementedError(f"searcher state not picklable: {e}") from None

        def restore(self, checkpoint_path):
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))

    return StudySearcher()


def _trial_status(result: dict | None, error: bool = False) -> str:
    """completed | diverged | failed | stopped | crashed, from a trial's last result."""
    if error:
        return "crashed"
    status = (result or {}).get("trial_status")
    if status in ("completed", "diverged", "failed"):
        return status
    return "stopped" if result else "crashed"


# ---- inside a trial ---------------------------------------------------------------

@dataclass
class _Context:
    """What every trial needs from the driver (shipped once with tune.with_parameters)."""
    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    fixed: dict[str, dict]
    searched: dict[str, tuple]
    metrics: tuple
    modes: tuple
    seeds: int
    base_seed: int
    log_model: str
    flush_every_s: float
    checkpoint_every: int = 1
    workers: int = 1             # > 1: each seed trains on Ray Train workers
    layouts: dict = field(default_factory=dict)  # method -> parallel layout ("data")
    worker_cpu: float = 1.0
    worker_gpu: float = 0.0
    train_storage: str = ""      # where the Train runs of multi-worker trials live


@dataclass
class _SeedMeans:
    """What Tune hears from a multi-worker trial's epochs (applied on the workers):
    the same keys a one-process trial reports, running means over seeds included."""
    metrics: tuple
    prior: list
    common: dict
    seed_index: int

    def __call__(self, m: dict) -> dict:
        out = {**_report_keys(m), **self.common, "seed_index": self.seed_index,
               "trial_status": "running"}
        for metric in self.metrics:
            if metric in m:
                out[f"mean_{metric}"] = ((sum(p[metric] for p in self.prior) + m[metric])
                                         / (len(self.prior) + 1))
        return out


def config_key(flat: dict[str, Any]) -> str:
    """A short id of a configuration without its seed: groups the seeds of a trial."""
    text = json.dumps({k: v for k, v in sorted(flat.items()) if k != "seed"}, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_key(sweep: str, trial_id: str, seed: int) -> str:
    """Names one seed's MLflow run across processes (tag `run_key`): a restarted
    trial finds its run by it instead of making a second one."""
    return f"{sweep}/{trial_id}/s{seed}"


def _penalty(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def _report_keys(metrics: dict[str, float]) -> dict[str, float]:
    """What Tune hears per epoch: everything but the per-area shares (MLflow has those)."""
    return {k: v for k, v in metrics.items() if not k.startswith("area_share.")}


class _TrialState:
    """A trial's progress in one folder, which is also its Tune checkpoint:

        trial.json         seeds done, their final metrics, weights saved
        trainer/           the current seed's trainer checkpoint (train.fit's)
        weights/           state dicts of the seeds done (logged at the end)
        outbox/            MLflow writes not yet delivered (sal_ray.outbox)

    A trial Tune restarts (its process was killed, or the sweep resumed) starts
    from the folder its last report carried: the seeds done are not run again,
    the current seed continues from its last epoch, its MLflow run is taken up."""

    FILE = "trial.json"

    def __init__(self, ctx: _Context, checkpoint=None):
        from .outbox import Outbox
        self.work = Path(tempfile.mkdtemp(prefix="sal-trial-"))
        self.seed_index, self.prior, self.weights = 0, [], []
        self.outbox = Outbox(ctx.tracking_uri, ctx.experiment_id, self.work / "outbox")
        if checkpoint is not None:
            checkpoint.to_directory(str(self.work))
            data = json.loads((self.work / self.FILE).read_text())
            self.seed_index, self.prior, self.weights = (data["seed_index"], data["prior"],
                                                         data["weights"])
            if Outbox.saved_in(self.work / "outbox"):
                self.outbox = Outbox.load(ctx.tracking_uri, self.work / "outbox")

    @property
    def trainer_dir(self) -> Path:
        return self.work / "trainer"

    def seed_done(self, final: dict, weights: Any = None) -> None:
        """Seed finished: its metrics and weights are kept, its trainer checkpoint goes
        (the next seed starts from scratch in the same folder)."""
        self.prior.append(final)
        if weights is not None:
            (self.work / "weights").mkdir(exist_ok=True)
            rel = f"weights/state_dict_s{final.get('seed', self.seed_index)}.pt"
            import torch
            torch.save(weights, self.work / rel)
            self.weights.append(rel)
        shutil.rmtree(self.trainer_dir, ignore_errors=True)
        self.seed_index += 1

    def checkpoint(self):
        """The folder as a Tune checkpoint (Tune copies it to the sweep's storage)."""
        from ray import tune as rt
        self.outbox.save()
        path = self.work / self.FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seed_index": self.seed_index, "prior": self.prior,
                                   "weights": self.weights}))
        os.replace(tmp, path)
        return rt.Checkpoint.from_directory(str(self.work))


def _make_reporter(ctx: _Context, seed_index: int, state: _TrialState, common: dict):
    """A trainer Callback reporting each epoch to Tune with the running mean over
    seeds, and a checkpoint every `ctx.checkpoint_every` epochs."""
    from ray import tune as rt

    from .train import Callback
    prior = state.prior

    class TuneReport(Callback):
        def __init__(self):
            self.counts: dict = {}
            self.epochs = 0
            self.last: dict | None = None

        def on_start(self, run):
            self.counts = run.counts.as_dict()
            self.epochs = run.cfg.optim.epochs
            if run.history:  # resumed: what the last report said, should none follow
                self.last = self.payload(run.history[-1])

        def payload(self, m: dict) -> dict:
            out = {**_report_keys(m), **self.counts, **common, "seed_index": seed_index,
                   "trial_status": "running"}
            for metric in ctx.metrics:
                now = m.get(metric, self.counts.get(metric))
                out[f"mean_{metric}"] = (sum(p[metric] for p in prior) + now) / (len(prior) + 1)
            return out

        def on_epoch(self, m):
            self.last = self.payload(m)
            epoch = int(m["epoch"])
            if seed_index == ctx.seeds - 1 and epoch >= self.epochs:
                return  # the trial reports its last epoch itself, after the model is logged
            every = ctx.checkpoint_every
            keep = every > 0 and (epoch % every == 0 or epoch >= self.epochs)
            rt.report(self.last, checkpoint=state.checkpoint() if keep else None)

    return TuneReport()


_TRIAL_THREADS: weakref.WeakSet = weakref.WeakSet()
_JOIN_AT_EXIT = False


def _join_trial_threads() -> None:
    """At a worker's exit, let trial threads finish unwinding first. A trial the
    scheduler stopped leaves its thread through SystemExit, freeing tensors; if the
    interpreter finalises meanwhile (Tune ends the actor), the thread dies inside
    torch's deallocator and the process aborts with SIGABRT."""
    for thread in list(_TRIAL_THREADS):
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)


def _run_trial(config: dict, ctx: _Context) -> None:
    """One Tune trial: the configuration `config` for every seed, in order, from
    where its last checkpoint left it (if Tune restarted it)."""
    from ray import tune as rt

    from . import tracking

    global _JOIN_AT_EXIT
    if not _JOIN_AT_EXIT:
        _JOIN_AT_EXIT = bool(atexit.register(_join_trial_threads))
    _TRIAL_THREADS.add(threading.current_thread())
    tracking.fail_fast_http()  # an unreachable server must not hold training up
    # one "Checkpoint successfully created" line per epoch per trial is noise
    import logging
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    state = _TrialState(ctx, rt.get_checkpoint())
    try:
        _run_seeds(config, ctx, state, rt.get_context().get_trial_id())
    finally:
        shutil.rmtree(state.work, ignore_errors=True)


def _run_seeds(config: dict, ctx: _Context, state: _TrialState, trial_id: str) -> None:
    from ray import tune as rt

    from . import tracking
    from .data import DataError
    from .train import fit

    dataset, method = config["dataset"], config["method"]
    key = f"{dataset}/{method}"
    searched = {k: v for k, v in config.items() if k not in ("dataset", "method")}
    flat = {**ctx.fixed[key], **searched}
    cfg_key = config_key(flat)
    common = {"dataset": dataset, "method": method}
    keys = [run_key(ctx.sweep, trial_id, ctx.base_seed + i) for i in range(ctx.seeds)]

    def run_ids(n: int) -> str:
        return ",".join(state.outbox.run_ids.get(k, "") for k in keys[:n])

    reporter = None
    for i in range(state.seed_index, ctx.seeds):
        seed = ctx.base_seed + i
        cfg_flat = {**flat, "seed": seed}
        sink = tracking.MLflowRun(
            ctx.tracking_uri, ctx.experiment_id, parent_run_id=ctx.parent_run_id,
            run_name=tracking.default_name(cfg_flat, ctx.searched[key]),
            tags={"sweep": ctx.sweep, "trial": trial_id, "config": cfg_key,
                  "seed_index": i, "seeds": ctx.seeds,
                  "searched": ",".join(ctx.searched[key])},
            flush_every_s=ctx.flush_every_s, key=keys[i], outbox=state.outbox, fail_fast=True)
        reporter = _make_reporter(ctx, i, state, {**common, "seed": seed, "config": cfg_key})
        checkpoints = ctx.checkpoint_every > 0
        try:
            if ctx.workers > 1:
                result = _fit_on_workers(ctx, cfg_flat, sink, state, trial_id,
                                         _SeedMeans(ctx.metrics, list(state.prior),
                                                    {**common, "seed": seed, "config": cfg_key},
                                                    i))
            else:
                result = fit(Config.from_flat(cfg_flat), [sink, reporter],
                             checkpoint_dir=str(state.trainer_dir) if checkpoints else None,
                             checkpoint_every=max(ctx.checkpoint_every, 1))
        except (ConfigError, DataError) as e:
            # the trainer refused this configuration: record it, tell Optuna FAIL
            if not sink.opened:
                sink.open({**cfg_flat})
            sink.close("failed", str(e))
            rt.report({**common, "trial_status": "failed", "message": str(e)[:500],
                       "mlflow_run_ids": run_ids(i + 1)}, checkpoint=state.checkpoint())
            return
        except BaseException as e:
            # SystemExit: the scheduler stopped this trial inside tune.report
            sink.close("stopped" if isinstance(e, SystemExit) else "crashed",
                       "stopped by the scheduler" if isinstance(e, SystemExit)
                       else f"{type(e).__name__}: {e}"[:500])
            raise
        if result.status != "completed":
            rt.report({**(reporter.last or {}), **common, "trial_status": result.status,
                       "message": result.message,
                       **{f"mean_{m}": _penalty(mo) for m, mo in zip(ctx.metrics, ctx.modes)},
                       "mlflow_run_ids": run_ids(i + 1)}, checkpoint=state.checkpoint())
            return
        weights = None
        if ctx.log_model != "none":
            weights = result.net.state_dict() if result.net is not None else \
                _checkpoint_weights(getattr(result, "checkpoint_path", None))
        state.seed_done({**result.counts, **result.final, "seed": seed}, weights)
    final = _trial_summary(state.prior, ctx.metrics)
    _log_trial_summary(ctx, state, keys[:len(state.prior)], final, common)
    state.outbox.deliver(force=True)
    last = reporter.last if reporter is not None and reporter.last else {}
    rt.report({**last, **common, **final, "trial_status": "completed",
               "mlflow_run_ids": run_ids(ctx.seeds)}, checkpoint=state.checkpoint())


def _trial_summary(finals: list[dict], metrics: tuple) -> dict[str, float]:
    out = {}
    for k in FINAL_KEYS:
        values = [f[k] for f in finals if k in f]
        if values:
            out[f"final_{k}_mean"] = statistics.fmean(values)
            out[f"final_{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    for m in metrics:
        out[f"mean_{m}"] = statistics.fmean(f[m] for f in finals)
    return out


def _fit_on_workers(ctx: _Context, cfg_flat: dict, sink, state: _TrialState, trial_id: str,
                    means: _SeedMeans):
    """One seed on `ctx.workers` Ray Train workers (a TorchTrainer driven from this
    trial). Its epochs reach Tune from rank 0 (Train's Tune callback); the MLflow
    sink runs on rank 0 and hands back what it could not deliver. The Train run's
    name is stable per (trial, seed): a restarted trial resumes it."""
    from .distributed.ray_train import fit_distributed
    seed = cfg_flat["seed"]
    result = fit_distributed(
        Config.from_flat(cfg_flat), ctx.workers, use_gpu=ctx.worker_gpu > 0,
        storage_path=ctx.train_storage, name=f"{trial_id}-s{seed}", callbacks=[sink],
        verbose=False, cpus_per_worker=ctx.worker_cpu,
        layout=ctx.layouts.get(cfg_flat["method"], "data"),
        report_metrics=means)
    for st in result.callback_states or []:
        state.outbox.absorb(st)
    if result.status != "completed" and not result.message:
        result.message = "the workers ended without completing the run"
    return result


def _checkpoint_weights(folder: str | None):
    """The net's state dict from a multi-worker run's last checkpoint (core format;
    a layer-parallel one is gathered from its stage files)."""
    if not folder:
        return None
    import torch

    from .train import CHECKPOINT_NAME
    path = os.path.join(folder, CHECKPOINT_NAME)
    if not os.path.exists(path):
        from .distributed import gather_checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            gather_checkpoint(folder, tmp)
            return torch.load(os.path.join(tmp, CHECKPOINT_NAME), map_location="cpu",
                              weights_only=False)["net"]
    return torch.load(path, map_location="cpu", weights_only=False)["net"]


def _log_trial_summary(ctx: _Context, state: _TrialState, keys: list[str], final: dict,
                       common: dict) -> None:
    """Every seed run gets its trial's mean ± std (`trial_*`); the model weights go to
    MLflow when they are the best of their (dataset, method) so far, or always.
    All through the trial's outbox: a store that is away gets them later."""
    from . import tracking
    m0 = ctx.metrics[0]
    trial_metrics = {f"trial_{k}": v for k, v in final.items() if k.startswith("final_")}
    trial_metrics[f"trial_objective_{m0}"] = final[f"mean_{m0}"]
    for key in keys:
        state.outbox.metrics(key, tracking.metric_list(trial_metrics, 0))
    if not state.weights:
        return
    if ctx.log_model == "best":
        op = ">" if ctx.modes[0] == "max" else "<"
        try:
            better = tracking.with_retry(
                tracking.client(ctx.tracking_uri).search_runs, [ctx.experiment_id],
                filter_string=(f"tags.sweep = '{ctx.sweep}' and tags.dataset = "
                               f"'{common['dataset']}' and tags.method = '{common['method']}' "
                               f"and metrics.trial_objective_{m0} {op} {final[f'mean_{m0}']!r}"),
                max_results=1)
        except Exception:  # noqa: BLE001 - store away: keep the weights, they may be the best
            better = []
        if better:
            return
    for key, rel in zip(keys, state.weights):
        state.outbox.artifact(key, str(state.work / rel), "model")
        state.outbox.tags(key, {"model_logged": "true"})


# ---- the driver -----------------------------------------------------------------------

def _init_ray(address: str | None, num_cpus: int | None) -> None:
    """Use a running Ray; else connect to `address` / $RAY_ADDRESS / a `ray start`
    cluster on this machine (that is `ray submit` on the head node); else start
    Ray locally, in-process."""
    import ray
    if ray.is_initialized():
        return
    from ray._private.services import find_bootstrap_address
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
    elif find_bootstrap_address(None):
        ray.init(address="auto", **quiet)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


def _on_cluster(address: str | None) -> bool:
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    try:
        import ray
        if ray.is_initialized():
            return len(ray.nodes()) > 1
        from ray._private.services import find_bootstrap_address
        return find_bootstrap_address(None) is not None
    except ImportError:
        return False


def _make_recorder(plan: Plan, say):
    """A Tune callback on the driver: keeps each trial's last result and prints a line
    as trials end."""
    from ray import tune as rt

    class Recorder(rt.Callback):
        def __init__(self):
            self.last: dict[str, dict] = {}
            self.config: dict[str, dict] = {}
            self.status: dict[str, str] = {}
            self.errors: dict[str, str] = {}
            self.order: list[str] = []
            self.done = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id not in self.config:
                self.order.append(trial.trial_id)
            self.config[trial.trial_id] = dict(trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = dict(result)

        def _end(self, trial, trials, error: bool):
            tid = trial.trial_id
            self.config.setdefault(tid, dict(trial.config))
            if tid not in self.order:
                self.order.append(tid)
            self.status[tid] = _trial_status(self.last.get(tid), error)
            if error:
                self.errors[tid] = str(getattr(trial, "error_msg", "") or "error")[:500]
            # counted over all trials: a resumed sweep's earlier ones are done too
            self.done = max(self.done + 1, 1 + sum(
                t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial))
            cfg, last = self.config[tid], self.last.get(tid, {})
            m0 = plan.metrics[0]
            value = last.get(f"final_{m0}_mean", last.get(f"mean_{m0}"))
            shown = "" if value is None or not math.isfinite(value) else f"{m0} {value:.4f}"
            if f"final_{m0}_std" in last and plan.seeds > 1:
                shown += f" ± {last[f'final_{m0}_std']:.4f}"
            params = " ".join(f"{k}={_short(v)}" for k, v in cfg.items()
                              if k not in ("dataset", "method"))
            n = len(str(plan.total_trials))
            key = f"{cfg.get('dataset')}/{cfg.get('method')}"
            say(f"[{self.done:>{n}}/{plan.total_trials}] {key:<14} {self.status[tid]:<9} "
                f"{shown:<26} {params}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, trials, error=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, trials, error=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            cfg = dict(trial.config)
            epoch = self.last.get(trial.trial_id, {}).get("epoch")
            say(f"[restart] {cfg.get('dataset')}/{cfg.get('method')} trial {trial.trial_id} "
                f"failed{f' after epoch {int(epoch)}' if epoch else ''}; Tune restarts it "
                "from its last checkpoint")

    return Recorder()


def _print(*args, **kwargs) -> None:
    """print, looked up when called: Tune pickles the callbacks that hold it, and
    Ray's progress bars may have replaced builtins.print meanwhile."""
    print(*args, **kwargs)


def _silent(*args, **kwargs) -> None:
    pass


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclass
class SweepResults:
    """What a sweep found. `trials`: one row per trial (configuration) with its
    searched options, status, mean/std over seeds of the final metrics and its MLflow
    run ids; `best`: per (dataset, method), the best completed trial on the first
    objective; `pareto`: per pair, the completed trials no other completed trial
    dominates (all objectives)."""
    name: str
    plan: Plan
    trials: Any                      # pandas.DataFrame
    best: dict[tuple[str, str], dict]
    pareto: dict[tuple[str, str], Any]
    studies: dict[str, Any]
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    elapsed_s: float
    undelivered: bool = False        # MLflow writes still wait in trial checkpoints

    @property
    def metric(self) -> str:
        return self.plan.metrics[0]

    @property
    def ui_command(self) -> str:
        from . import tracking
        return tracking.ui_command(self.tracking_uri)

    def summary(self):
        """One row per (dataset, method): the best configuration and its scores."""
        import pandas as pd
        rows = []
        for p in self.plan.pairs:
            b = self.best.get((p.dataset, p.method))
            t = self.trials[(self.trials.dataset == p.dataset) & (self.trials.method == p.method)] \
                if len(self.trials) else self.trials
            counts = t.status.value_counts().to_dict() if len(t) else {}
            row = {"dataset": p.dataset, "method": p.method, "trials": len(t),
                   "completed": counts.get("completed", 0),
                   "stopped": counts.get("stopped", 0), "diverged": counts.get("diverged", 0),
                   "failed": counts.get("failed", 0) + counts.get("crashed", 0)}
            if b:
                for k in ("val_acc", "train_loss", "val_loss"):
                    row[f"{k}_mean"] = b.get(f"final_{k}_mean")
                    row[f"{k}_std"] = b.get(f"final_{k}_std")
                for m in self.plan.metrics:
                    if m in COUNT_METRICS:
                        row[m] = b.get(f"mean_{m}")
                row["best"] = " ".join(f"{k}={_short(v)}" for k, v in b["params"].items())
            rows.append(row)
        return pd.DataFrame(rows)

    def table(self) -> str:
        """The comparison table, as text: mean ± std over seeds of the best configuration."""
        s = self.summary()
        lines = [f"{'dataset':<14}{'method':<7}{'val acc %':>16}{'train loss':>17}"
                 f"{'val loss':>17}{'trials':>8}  best configuration"]
        for _, r in s.iterrows():
            def pm(k, scale=1.0, digits=2):
                mean = r.get(f"{k}_mean")
                if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                    return "-"
                return f"{scale * mean:.{digits}f} ± {scale * (r.get(f'{k}_std') or 0):.{digits}f}"
            ok = f"{r['completed']}/{r['trials']}"
            lines.append(f"{r['dataset']:<14}{r['method']:<7}{pm('val_acc', 100):>16}"
                         f"{pm('train_loss', 1, 3):>17}{pm('val_loss', 1, 3):>17}{ok:>8}  "
                         f"{r.get('best') if isinstance(r.get('best'), str) else '(none completed)'}")
        return "\n".join(lines)

    def grid(self, by: Sequence[str] = ("method", "n_areas"), metric: str = "val_acc") -> str:
        """Every completed configuration as text: datasets down, the values of `by`
        across, mean ± std over seeds of the final `metric` (accuracies in %): the
        layout of the paper's protocol tables."""
        done = self.trials[self.trials.status == "completed"] if len(self.trials) else self.trials
        if not len(done):
            return "(no completed trial)"
        scale = 100 if metric.endswith("_acc") else 1
        cols = list(dict.fromkeys(tuple(r[k] for k in by) for _, r in done.iterrows()))
        labels = ["-".join(map(_short, c)) for c in cols]
        width = max(16, *(len(x) + 2 for x in labels))
        lines = [f"final {metric}{' %' if scale == 100 else ''}, mean ± std over seeds",
                 f"{'dataset':<14}" + "".join(f"{x:>{width}}" for x in labels)]
        for dataset in dict.fromkeys(done.dataset):
            cells = []
            for c in cols:
                hit = done[(done.dataset == dataset)
                           & (done[list(by)].apply(tuple, axis=1) == c)]
                if len(hit):
                    r = hit.iloc[0]
                    cells.append(f"{scale * r[f'final_{metric}_mean']:.2f} ± "
                                 f"{scale * r[f'final_{metric}_std']:.2f}")
                else:
                    cells.append("-")
            lines.append(f"{dataset:<14}" + "".join(f"{x:>{width}}" for x in cells))
        return "\n".join(lines)

    def runs(self):
        """Every seed run of this sweep, read back from MLflow (one row per run)."""
        import mlflow
        with _tracking_uri(self.tracking_uri):
            return mlflow.search_runs([self.experiment_id], max_results=50000,
                                      filter_string="tags.`mlflow.parentRunId` = "
                                                    f"'{self.parent_run_id}'")


class _tracking_uri:
    """`mlflow.search_runs` reads the global URI: set it for one read only."""

    def __init__(self, uri):
        self.uri = uri

    def __enter__(self):
        import mlflow
        self.before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)

    def __exit__(self, *exc):
        import mlflow
        mlflow.set_tracking_uri(self.before)


def _dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    sign = [1 if m == "max" else -1 for m in modes]
    better_or_equal = all(s * x >= s * y for s, x, y in zip(sign, a, b))
    return better_or_equal and any(s * x > s * y for s, x, y in zip(sign, a, b))


def _trial_records(grid, recorder=None) -> list[dict]:
    """Every trial of the Tune run, in order: those of an earlier session of a
    resumed sweep too (the recorder only saw this session's)."""
    out = []
    # ResultGrid keeps the Trial objects (id, config, last result, status, latest
    # checkpoint) of every trial in the experiment state; its Result view drops the id
    for t in grid._experiment_analysis.trials:
        last = dict(t.last_result or {})
        error = t.status == "ERROR"
        message = recorder.errors.get(t.trial_id, "") if recorder is not None else ""
        if error and not message:
            message = str(t.get_error() or "error")[:500]
        out.append({"trial_id": t.trial_id, "config": dict(t.config), "last": last,
                    "status": _trial_status(last, error), "error": message,
                    "checkpoint": t.checkpoint})
    return out


def _collect(plan: Plan, records: list[dict]) -> tuple[Any, dict, dict]:
    """The trials table, the best trial and the Pareto front per pair."""
    import pandas as pd
    searched = list(dict.fromkeys(k for p in plan.pairs for k in p.space))
    fixed_of = {p.key: p.fixed for p in plan.pairs}
    rows = []
    configs = {r["trial_id"]: r["config"] for r in records}
    for rec in records:
        tid, cfg, last, status = rec["trial_id"], rec["config"], rec["last"], rec["status"]
        row = {"trial_id": tid, "dataset": cfg.get("dataset"), "method": cfg.get("method"),
               "status": status}
        pair = fixed_of.get(f"{row['dataset']}/{row['method']}", {})
        # an option another method searches shows this trial's fixed value (bp: n_areas 1)
        row.update({k: pair.get(k, DEFAULTS.get(k)) for k in searched})
        row.update({k: v for k, v in cfg.items() if k not in ("dataset", "method")})
        for m in plan.metrics:
            v = last.get(f"mean_{m}")
            row[f"mean_{m}"] = v if status == "completed" else (
                v if status == "stopped" else math.nan)
        for k in FINAL_KEYS:
            for stat in ("mean", "std"):
                row[f"final_{k}_{stat}"] = last.get(f"final_{k}_{stat}", math.nan)
        for k in COUNT_METRICS:
            if k in last:
                row[k] = last[k]
        row["iterations"] = last.get("training_iteration", 0)
        row["mlflow_run_ids"] = last.get("mlflow_run_ids", "")
        row["message"] = last.get("message", rec["error"])
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in searched:  # an option one method does not search is missing there, not NaN-float
        if k in df and option_type(k) == "int" and df[k].dtype.kind == "f":
            df[k] = df[k].astype("Int64")
    best, pareto = {}, {}
    for p in plan.pairs:
        if df.empty:
            continue
        done = df[(df.dataset == p.dataset) & (df.method == p.method) & (df.status == "completed")]
        if done.empty:
            continue
        m0, sign = plan.metrics[0], (1 if plan.modes[0] == "max" else -1)
        i = (sign * done[f"mean_{m0}"]).idxmax()
        row = done.loc[i].to_dict()
        cfg = configs.get(row["trial_id"], {})
        row["params"] = {k: cfg[k] for k in p.space if k in cfg}
        row["config"] = {**p.fixed, **row["params"]}
        best[(p.dataset, p.method)] = row
        cols = [f"mean_{m}" for m in plan.metrics]
        points = done[cols].to_numpy().tolist()
        front = [j for j, a in enumerate(points)
                 if not any(_dominates(b, a, plan.modes) for b in points)]
        pareto[(p.dataset, p.method)] = done.iloc[front]
    return df, best, pareto


def tune(datasets: str | Sequence[str] = ("digits",), methods: str | Sequence[str] = METHODS,
         space: dict[str, Any] | None = None, *, fixed: dict[str, Any] | None = None,
         method_spaces: dict[str, dict[str, Any]] | None = None, trials: int | None = None,
         sampler: Any = "tpe", metric: str | Sequence[str] = "val_acc",
         mode: str | Sequence[str] = "max", scheduler: Any = None, seeds: int = 1,
         resources: dict[str, float] | None = None, experiment: str = "sal-ray",
         name: str | None = None, tracking_uri: str | None = None,
         address: str | None = None, num_cpus: int | None = None,
         max_concurrent: int | None = None, time_budget_s: float | None = None,
         storage_path: str | None = None, log_model: str = "best",
         flush_every_s: float | None = None, verbose: int = 1,
         table_by: Sequence[str] | None = None, dry_run: bool = False,
         resume: bool = False, max_failures: int = 3, checkpoint_every: int = 1,
         finish_wait_s: float = 120.0, callbacks: Sequence[Any] = (),
         layout: str | dict[str, str] = "data") -> SweepResults | Plan:
    """Search trainer configurations with Ray Tune + Optuna, tracked in MLflow.

    datasets, methods: the studies; each (dataset, method) is its own Optuna study
        with the same budget, `trials` (default 20; with sampler='grid' the whole
        grid, or its first `trials` points).
    space: option -> fixed value | list of values | loguniform/uniform/randint(...);
        None: DEFAULT_SPACE (n_areas, lr, depth, width). Any trainer option. bp never
        searches n_areas (fixed 1); options without effect on a method are dropped
        for it (`plan.describe()` lists what was dropped).
    fixed: options fixed for every trial (the trainer's defaults otherwise).
    method_spaces: per-method entries merged over `space`.
    sampler: 'tpe' (default), 'random', 'grid', 'nsga2', an optuna sampler (copied
        per study) or a function returning one.
    metric, mode: the objective, or lists of them for a multi-objective search,
        e.g. metric=["val_acc", "params_active"], mode=["max", "min"]. Metrics:
        EPOCH_METRICS or COUNT_METRICS; Tune optimises the mean over seeds.
    scheduler: None, 'asha' or a dict of ASHA settings (grace_period,
        reduction_factor, brackets), or a Ray TrialScheduler (it must use the
        `mean_<metric>` keys and training_iteration, which counts seed-epochs).
    seeds: seeds per configuration (seed, seed+1, ...; `fixed` seed is the first).
    resources: per trial, e.g. {"cpu": 1, "gpu": 0.25}; a GPU share sets device=cuda.
        {"workers": 4, "gpu": 1, "cpu": 4}: every seed of a trial trains on 4 Ray
        Train workers (TorchTrainer) with that much each, in `layout` "data" (any
        method) or "layer" (SAL only), or per method: {"sal": "layer", "bp":
        "data"} (unnamed methods: "data"); see docs/scaling.md.
    experiment, name, tracking_uri: the MLflow experiment, the sweep's name (its
        parent run and the `sweep` tag) and store (default $MLFLOW_TRACKING_URI, else
        sqlite:///<cwd>/mlflow.db).
    address: a Ray cluster (default $RAY_ADDRESS, else a `ray start` cluster on this
        machine, else a local Ray with `num_cpus`).
    log_model: 'best' (weights of each pair's best-so-far trial), 'all' or 'none'.
    table_by: also print every configuration, datasets down and these options
        across (SweepResults.grid), after the comparison table.
    dry_run: validate and return the Plan without starting Ray or touching MLflow.
    resume: continue the interrupted sweep `name` (same plan, same store) through
        Tune's own restore: finished trials are kept, unfinished and errored ones
        continue from their last checkpoint, each seed in its existing MLflow run,
        under the same parent run. Also delivers MLflow writes a tracking outage
        left pending.
    max_failures: restarts of a trial whose process died (from its last checkpoint).
    checkpoint_every: epochs between trial checkpoints (model, optimiser, router,
        data position, pending MLflow writes); 0: none (a restarted trial then
        starts its current seed again).
    finish_wait_s: at the end, how long to wait for a tracking store that is away
        before leaving the pending writes for `resume`.
    callbacks: extra Ray Tune callbacks for the driver.

    Returns SweepResults. Raises ConfigError (naming the option) before any trial
    starts when an input is wrong.
    """
    t0 = time.perf_counter()
    say = _print if verbose else _silent
    if log_model not in ("best", "all", "none"):
        raise ConfigError("log_model", f"must be 'best', 'all' or 'none'; got {log_model!r}")
    _check_positive_int("max_concurrent", max_concurrent, allow_none=True)
    for option, value in (("max_failures", max_failures), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(option, f"must be an integer >= 0; got {value!r}")
    if not isinstance(resume, bool):
        raise ConfigError("resume", f"must be True or False; got {resume!r}")
    if resume and name is None:
        raise ConfigError("name", "resume=True needs the name of the sweep to resume "
                          "(the name its first run printed; scripts: --resume NAME)")
    for option, value in (("finish_wait_s", finish_wait_s), ("time_budget_s", time_budget_s),
                          ("flush_every_s", flush_every_s)):
        if value is None and option != "finish_wait_s":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or value < 0:
            raise ConfigError(option, f"must be a number >= 0 (seconds); got {value!r}")
    _check_positive_int("num_cpus", num_cpus, allow_none=True)
    local = not _on_cluster(address)
    p = plan(datasets, methods, space, fixed=fixed, method_spaces=method_spaces, trials=trials,
             sampler=sampler, metric=metric, mode=mode, scheduler=scheduler, seeds=seeds,
             resources=resources, experiment=experiment, name=name, local=local)
    storage = _storage(storage_path)
    _check_sweep_folder(storage, p.name, resume)
    layouts = _layouts(p, layout)
    if dry_run:
        say(p.describe())
        return p
    from . import tracking
    uri = tracking.resolve_uri(tracking_uri)
    say(p.describe())
    say(f"tracking: {tracking.redact(uri)}, experiment '{experiment}'")
    experiment_id = _store_and_ray(uri, experiment, address, num_cpus)
    if resume:
        parent = _reopen_parent(uri, experiment_id, p, say)
    else:
        parent = tracking.start_run(uri, experiment_id, p.name, {
            "sweep": p.name, "kind": "sweep", "status": "running", "plan": _fingerprint(p),
            "storage": storage, "datasets": ",".join(dict.fromkeys(x.dataset for x in p.pairs)),
            "methods": ",".join(dict.fromkeys(x.method for x in p.pairs)), **tracking.run_tags()})
    try:
        if not resume:
            _log_sweep_params(uri, parent, p)
        results, records, sweep_path = _execute(
            p, uri, experiment_id, parent, max_concurrent, time_budget_s, storage, log_model,
            flush_every_s, verbose, say, resume=resume, max_failures=max_failures,
            checkpoint_every=checkpoint_every, callbacks=list(callbacks), layouts=layouts)
    except BaseException as e:
        try:
            tracking.set_status(parent, "crashed", uri, f"{type(e).__name__}: {e}"[:500])
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    results.elapsed_s = time.perf_counter() - t0
    _finish(results, records, sweep_path, uri, say, table_by, finish_wait_s)
    return results


def _layouts(p: Plan, layout) -> dict[str, str]:
    """`layout` as method -> layout, checked for every study before anything starts
    (with resources['workers'])."""
    workers = p.resources.get("workers", 1)
    if workers != int(workers) or workers < 1:
        raise ConfigError("resources", f"workers must be a whole number >= 1; got {workers!r}")
    methods = list(dict.fromkeys(x.method for x in p.pairs))
    if isinstance(layout, dict):
        unknown = set(layout) - set(methods)
        if unknown:
            raise ConfigError("layout", f"names methods this sweep does not run: "
                              f"{', '.join(sorted(unknown))}; it runs {', '.join(methods)}")
        layouts = {m: layout.get(m, "data") for m in methods}
    else:
        layouts = {m: layout for m in methods}
    from .distributed.layer_parallel import check_layout
    for pair in p.pairs:
        check_layout(Config.from_flat(pair.fixed), layouts[pair.method],
                     int(workers) if workers > 1 else None)
    return layouts
    if workers > 1 and p.resources["gpu"] not in (0, 1):
        raise ConfigError("resources", "with workers, gpu is per worker: 0 or 1; got "
                          f"{p.resources['gpu']}")


def _storage(storage_path) -> str:
    """Where Tune keeps the sweep (trial checkpoints, experiment state): a URI as is,
    else an absolute folder (default ./runs/ray)."""
    if storage_path is not None and "://" in str(storage_path):
        return str(storage_path)
    return str(Path(storage_path or Path.cwd() / "runs" / "ray").expanduser().resolve())


def _is_sweep(folder: Path) -> bool:
    """A Tune experiment folder: what `Tuner.restore` takes."""
    return (folder / "tuner.pkl").is_file()


def _sweeps_in(storage: str, pattern: str = "*") -> list[Path]:
    """The sweep folders of a local storage folder whose names match `pattern`,
    oldest first; none for a URI."""
    if "://" in storage:
        return []
    return sorted((d for d in Path(storage).glob(pattern) if _is_sweep(d)),
                  key=lambda d: d.stat().st_mtime)


def _check_sweep_folder(storage: str, name: str, resume: bool) -> None:
    """A new sweep must not reuse a name; a resumed one must exist. Checked before
    anything starts (only for a local storage folder; a URI is Tune's to check)."""
    if "://" in storage:
        return
    exists = _is_sweep(Path(storage) / name)
    if resume and not exists:
        there = sorted(d.name for d in _sweeps_in(storage))
        raise ConfigError("resume", f"no sweep named '{name}' in {storage} to resume"
                          + (f"; sweeps there: {', '.join(there[-10:])}" if there else
                             " (it holds no sweep)"))
    if not resume and exists:
        raise ConfigError("name", f"a sweep named '{name}' already exists in {storage}; "
                          "resume it (resume=True, scripts: --resume) or choose another name")


def _fingerprint(p: Plan) -> str:
    """What a resumed sweep must share with its first run: the studies, their
    budgets, spaces and fixed options, the objectives, seeds and sampler."""
    text = json.dumps({
        "pairs": [[x.key, x.budget, {k: v.describe() for k, v in x.space.items()}, x.fixed]
                  for x in p.pairs],
        "metrics": p.metrics, "modes": p.modes, "seeds": p.seeds,
        "sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__},
        sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _reopen_parent(uri: str, experiment_id: str, p: Plan, say) -> str:
    """The parent run of the sweep being resumed, marked running again; ConfigError
    if this store has none or it was started with another plan."""
    from . import tracking
    c = tracking.client(uri)
    found = tracking.with_retry(
        c.search_runs, [experiment_id],
        filter_string=f"tags.sweep = '{p.name}' and tags.kind = 'sweep'", max_results=2)
    if not found:
        raise ConfigError("resume", f"sweep '{p.name}' has no parent run in MLflow experiment "
                          f"'{p.experiment}' of {tracking.redact(uri)}: resume with the "
                          "tracking_uri and experiment it started with")
    parent = found[0]
    if parent.data.tags.get("plan") != _fingerprint(p):
        raise ConfigError("resume", f"sweep '{p.name}' was started with a different plan "
                          "(datasets, methods, space, fixed options, trials, seeds, metric or "
                          "sampler); resume it with the arguments it started with")
    tracking.log_tags(parent.info.run_id, {"status": "running"}, uri)
    tracking.with_retry(c.update_run, parent.info.run_id, status="RUNNING")
    say(f"resuming sweep '{p.name}' (MLflow parent run {parent.info.run_id})")
    return parent.info.run_id


def _store_and_ray(uri: str, experiment: str, address, num_cpus) -> str:
    """Reach the tracking store, then start (or join) Ray; returns the experiment id.

    A server is asked before Ray starts, so a wrong address fails at once. A new
    SQLite store spends seconds on MLflow's schema migrations: once its folder is
    known to be there, that runs in a thread while Ray starts. Either way a store
    that cannot be used raises ConfigError before any trial."""
    from concurrent.futures import ThreadPoolExecutor

    from . import tracking
    if not tracking.is_sqlite(uri):
        experiment_id = tracking.check_store(uri, experiment)
        _init_ray(address, num_cpus)
        return experiment_id
    tracking.check_sqlite_folder(uri)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-store") as pool:
        store = pool.submit(tracking.check_store, uri, experiment)
        try:
            _init_ray(address, num_cpus)
        finally:
            experiment_id = store.result()
    return experiment_id


def _log_sweep_params(uri: str, parent: str, p: Plan) -> None:
    from . import tracking
    params = {"sweep.metric": ",".join(p.metrics), "sweep.mode": ",".join(p.modes),
              "sweep.sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__,
              "sweep.scheduler": json.dumps(p.scheduler, default=str) if p.scheduler else "none",
              "sweep.seeds": p.seeds, "sweep.total_trials": p.total_trials,
              "sweep.resources": json.dumps(p.resources)}
    for pair in p.pairs:
        params[f"budget.{pair.key}"] = pair.budget
        for k, s in pair.space.items():
            params[f"space.{pair.method}.{k}"] = s.describe()
    for k, v in p.pairs[0].fixed.items():
        if k not in ("dataset", "method"):
            params[f"fixed.{k}"] = v
    tracking.log_params(parent, params, uri)


def _execute(p: Plan, uri, experiment_id, parent, max_concurrent, time_budget_s, storage,
             log_model, flush_every_s, verbose, say, *, resume: bool, max_failures: int,
             checkpoint_every: int, callbacks: list, layouts: dict | None = None):
    from ray import tune as rt

    from . import tracking
    ctx = _Context(p.name, uri, experiment_id, parent,
                   fixed={x.key: x.fixed for x in p.pairs},
                   searched={x.key: tuple(x.space) for x in p.pairs},
                   metrics=p.metrics, modes=p.modes, seeds=p.seeds, base_seed=p.base_seed,
                   log_model=log_model,
                   flush_every_s=tracking.FLUSH_EVERY_S if flush_every_s is None else flush_every_s,
                   checkpoint_every=checkpoint_every)
    recorder = _make_recorder(p, say)
    workers = int(p.resources.get("workers", 1))
    trial_resources = {k: v for k, v in p.resources.items()
                       if (v or k == "cpu") and k != "workers"}
    if workers > 1:
        # the trial only drives its TorchTrainer, whose workers ask for the
        # resources; trials beyond what the cluster can place at once would hold
        # their drivers while their workers wait (PITFALLS): cap them
        import ray
        ctx.workers, ctx.layouts = workers, dict(layouts or {})
        ctx.worker_cpu, ctx.worker_gpu = p.resources["cpu"], p.resources["gpu"]
        ctx.train_storage = str(Path(storage) / p.name / "train") if "://" not in storage \
            else storage.rstrip("/") + f"/{p.name}/train"
        # (Tune refuses an empty request: a token of memory stands for "nothing")
        trial_resources = {"cpu": 0, "memory": 2 ** 20}
        have = ray.cluster_resources()
        fits = int(have.get("CPU", 1) // (workers * p.resources["cpu"]))
        if p.resources["gpu"]:
            fits = min(fits, int(have.get("GPU", 0) // workers))
        max_concurrent = max(1, min(max_concurrent or fits, fits))
    trainable = rt.with_resources(rt.with_parameters(_run_trial, ctx=ctx), trial_resources)
    # Tune's own per-trial files would repeat what MLflow holds; they cost a write per epoch
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if resume:
        # Tune's restore: its experiment state and our searcher's studies come back;
        # unfinished and errored trials continue from their last checkpoints
        path = storage.rstrip("/") + "/" + p.name
        with _quiet(verbose):
            tuner = rt.Tuner.restore(path, trainable, resume_unfinished=True,
                                     resume_errored=True)
        # the run config (callbacks included) was pickled at the first start; this
        # session's recorder and callbacks replace those copies
        tuner._local_tuner.get_run_config().callbacks = [recorder, *callbacks]
        studies = None
    else:
        with _quiet(verbose):
            searcher = _make_searcher(p)
        studies = searcher.studies
        scheduler = p.scheduler
        if isinstance(scheduler, dict):
            from ray.tune.schedulers import ASHAScheduler
            max_t = p.seeds * p.max_epochs
            settings = {k: v for k, v in scheduler.items() if k != "name"}
            settings.setdefault("grace_period", max(1, max_t // 4))
            settings.setdefault("reduction_factor", 3)
            scheduler = ASHAScheduler(time_attr="training_iteration",
                                      metric=f"mean_{p.metrics[0]}", mode=p.modes[0],
                                      max_t=max_t, stop_last_trials=False, **settings)
        tuner = rt.Tuner(
            trainable,
            tune_config=rt.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                      num_samples=p.total_trials, reuse_actors=True,
                                      max_concurrent_trials=max_concurrent,
                                      time_budget_s=time_budget_s),
            run_config=rt.RunConfig(
                name=p.name, storage_path=storage, callbacks=[recorder, *callbacks],
                verbose=0 if verbose < 2 else 1,
                failure_config=rt.FailureConfig(max_failures=max_failures),
                # the latest is all a restart needs; older ones only cost disk
                checkpoint_config=rt.CheckpointConfig(num_to_keep=1)))
    with _quiet(verbose):
        grid = tuner.fit()
    if studies is None:  # restored: the searcher Tune restored holds the studies
        studies = _restored_studies(tuner)
    records = _trial_records(grid, recorder)
    df, best, pareto = _collect(p, records)
    return SweepResults(p.name, p, df, best, pareto, studies, uri, p.experiment,
                        experiment_id, parent, 0.0), records, grid.experiment_path


def _restored_studies(tuner) -> dict:
    """The Optuna studies of a restored sweep (inside Tune's search wrapper)."""
    alg = tuner._local_tuner._tune_config.search_alg
    for attr in ("searcher", "_searcher"):
        alg = getattr(alg, attr, alg)
    return getattr(alg, "studies", {})


class _quiet:
    """Tune's own console output and warnings off unless verbose >= 2 (our lines say
    what happens); Optuna's per-study info lines off. Restored on exit."""

    LOGGERS = ("ray.tune", "ray.train")

    def __init__(self, verbose: int):
        self.verbose = verbose

    def __enter__(self):
        import logging

        import optuna  # configures its logger on import: quiet it after that
        self.optuna_level = optuna.logging.get_verbosity()
        if self.verbose < 2:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.env = os.environ.get("RAY_AIR_NEW_OUTPUT")
        self.patch = os.environ.get("RAY_TQDM_PATCH_PRINT")
        os.environ["RAY_TQDM_PATCH_PRINT"] = "0"  # leave the caller's print alone
        self.levels = {n: logging.getLogger(n).level for n in self.LOGGERS}
        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        if self.verbose < 2:
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0
            for n in self.LOGGERS:
                logging.getLogger(n).setLevel(logging.ERROR)
            warnings.simplefilter("ignore", DeprecationWarning)

    def __exit__(self, *exc):
        import logging

        import optuna
        optuna.logging.set_verbosity(self.optuna_level)
        for key, value in (("RAY_AIR_NEW_OUTPUT", self.env), ("RAY_TQDM_PATCH_PRINT", self.patch)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)
        self.warn.__exit__(*exc)


def _reach(uri: str, experiment_id: str, wait_s: float, say) -> bool:
    """Whether the store answers, waiting up to `wait_s` for it to come back."""
    from . import tracking
    deadline, delay, told = time.monotonic() + wait_s, 1.0, False
    while True:
        try:
            with tracking.quick_http(uri):
                tracking.client(uri).get_experiment(experiment_id)
            if told:
                say("MLflow store is back.")
            return True
        except Exception as e:  # noqa: BLE001
            if time.monotonic() + delay > deadline:
                return False
            if not told:
                reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                say(f"MLflow store {tracking.redact(uri)} is not answering ({tracking.redact(reason)});"
                    f" waiting up to {wait_s:.0f} s for it")
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _deliver_pending(records: list[dict], uri: str) -> tuple[int, int]:
    """MLflow writes trials left in their last checkpoints (the store was away when
    they ended): delivered now. Returns (delivered, still pending) op counts."""
    from .outbox import OUTBOX_FILE, Outbox
    done = left = 0
    for rec in records:
        ck = rec.get("checkpoint")
        if ck is None:
            continue
        try:  # read just the outbox first: most checkpoints have nothing pending
            with ck.filesystem.open_input_file(f"{ck.path}/outbox/{OUTBOX_FILE}") as f:
                if not json.loads(f.readall()).get("ops"):
                    continue
        except (FileNotFoundError, OSError):
            continue
        with tempfile.TemporaryDirectory(prefix="sal-outbox-") as tmp:
            ck.to_directory(tmp)
            box = Outbox.load(uri, Path(tmp) / "outbox")
            n = box.pending
            box.deliver(force=True)
            done, left = done + n - box.pending, left + box.pending
    return done, left


def _finish(res: SweepResults, records: list[dict], sweep_path: str, uri: str, say,
            table_by=None, wait_s: float = 120.0) -> None:
    """Deliver what a tracking outage left pending, close runs a stopped or crashed
    trial left open, record the outcome on the sweep's parent run, print the table
    and how to look at it."""
    from . import tracking
    ended = int(res.trials.status.isin(["completed", "diverged", "failed", "stopped", "crashed"])
                .sum()) if len(res.trials) else 0
    say("")
    say(res.table())
    if table_by:
        say("")
        say(res.grid(table_by))
    resume_how = (f"sal_ray.tune(<same arguments>, name='{res.name}', resume=True), or the "
                  f"sweep script with --resume {res.name}")
    if not _reach(uri, res.experiment_id, wait_s, say):
        say(f"\nsweep '{res.name}': {ended} of {res.plan.total_trials} trials ended, but the "
            f"MLflow store {tracking.redact(uri)} is away: their last records wait in the "
            f"trial checkpoints under {sweep_path}. Deliver them when "
            f"it is back: {resume_how}.")
        res.undelivered = True
        return
    delivered, left = _deliver_pending(records, uri)
    if delivered:
        say(f"delivered {delivered} MLflow write(s) a tracking outage had left pending")
    res.undelivered = left > 0
    c = tracking.client(uri)
    children = [r for r in tracking.with_retry(
        c.search_runs, [res.experiment_id], filter_string=f"tags.sweep = '{res.name}'",
        max_results=50000) if r.info.run_id != res.parent_run_id]
    status = dict(zip(res.trials.trial_id, res.trials.status)) if len(res.trials) else {}
    for r in children:
        if r.info.status != "RUNNING":
            continue
        s = status.get(r.data.tags.get("trial"), "crashed")
        tracking.set_status(r.info.run_id, s if s != "completed" else "crashed", uri,
                            "ended by the sweep: the trial stopped before this run finished")
    # the run ids of every trial, from the store: a trial whose store was away when
    # it reported could not name them
    by_trial: dict[str, list] = {}
    for r in children:
        by_trial.setdefault(r.data.tags.get("trial"), []).append(
            (int(r.data.tags.get("seed_index", 0)), r.info.run_id))
    if len(res.trials):
        res.trials["mlflow_run_ids"] = [",".join(rid for _, rid in sorted(by_trial.get(t, [])))
                                        for t in res.trials.trial_id]
        for b in res.best.values():
            b["mlflow_run_ids"] = ",".join(rid for _, rid in sorted(by_trial.get(b["trial_id"], [])))
    # fewer trials than planned: Ctrl-C or time_budget_s ended the sweep early
    outcome = "completed" if ended >= res.plan.total_trials else "interrupted"
    tags = {"status": outcome, "elapsed_s": f"{res.elapsed_s:.1f}",
            "trials_ended": f"{ended}/{res.plan.total_trials}"}
    best_json = {}
    for (d, m), b in res.best.items():
        tags[f"best.{d}.{m}"] = b["trial_id"]
        best_json[f"{d}/{m}"] = {
            "trial_id": b["trial_id"], "params": b["params"], "config": b["config"],
            "mlflow_run_ids": b["mlflow_run_ids"].split(","),
            **{k: b[k] for k in b if k.startswith(("mean_", "final_"))}}
    tracking.log_tags(res.parent_run_id, tags, uri)
    with tempfile.TemporaryDirectory() as tmp:
        res.trials.to_csv(os.path.join(tmp, "trials.csv"), index=False)
        res.summary().to_csv(os.path.join(tmp, "summary.csv"), index=False)
        Path(tmp, "summary.txt").write_text(
            res.table() + "\n" + (f"\n{res.grid(table_by)}\n" if table_by else ""))
        Path(tmp, "best.json").write_text(json.dumps(best_json, indent=2, default=str))
        tracking.with_retry(c.log_artifacts, res.parent_run_id, tmp)
    tracking.with_retry(c.set_terminated, res.parent_run_id,
                        "FINISHED" if outcome == "completed" else "KILLED")
    say(f"\nsweep '{res.name}' {'done' if outcome == 'completed' else 'INTERRUPTED'} in "
        f"{res.elapsed_s:.0f} s; {ended} of {res.plan.total_trials} trials in MLflow "
        f"experiment '{res.experiment}'.")
    if outcome != "completed":
        say(f"Resume it: {resume_how}.")
    if res.undelivered:
        say(f"{left} MLflow write(s) are still pending in trial checkpoints; resume to deliver.")
    say(f"Open the MLflow UI:  {tracking.ui_command(uri)}")
    say(f"  then filter runs:  tags.sweep = '{res.name}'")


# ---- the sweep scripts (sweeps/*.py) ------------------------------------------------
# Here, not in sweeps/: `ray submit` copies only the script itself to the head node.

def script_parser(doc: str, *, datasets: Sequence[str], seeds: int):
    """The options every study script takes (its docstring is the help text)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(datasets), metavar="NAME",
                    help=f"datasets, or 'all' (default: {' '.join(datasets)})")
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="a subset of the study's methods")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per (dataset, method): a search's budget, or the first N "
                         "configurations of a grid (default: the study's)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"seeds per configuration (default {seeds})")
    ap.set_defaults(study_seeds=seeds)
    ap.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes on a laptop CPU, on Digits (a smoke run, not the protocol)")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default sal-STUDY)")
    ap.add_argument("--name", default=None, help="sweep name (parent run, tag 'sweep')")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster (default $RAY_ADDRESS, a `ray start` cluster here, or local)")
    ap.add_argument("--cpus-per-trial", type=float, default=None)
    ap.add_argument("--gpus-per-trial", type=float, default=None,
                    help="default: the study's share on a cluster, 0 locally")
    ap.add_argument("--workers-per-trial", type=int, default=None,
                    help="train every seed on this many Ray Train workers (each with "
                         "--cpus-per-trial CPUs and --gpus-per-trial GPUs); default 1")
    ap.add_argument("--layout", choices=["data", "layer"], default="data",
                    help="with workers: 'layer' puts SAL's layers on different workers "
                         "(the other methods stay data parallel); default data")
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument("--storage-path", default=None,
                    help="where Tune keeps trial checkpoints (default ./runs/ray)")
    ap.add_argument("--resume", nargs="?", const=True, default=None, metavar="NAME",
                    help="continue an interrupted sweep of this study (default: the newest "
                         "one in --storage-path), with the options it started with")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    ap.add_argument("-v", "--verbose", type=int, default=1, help="0 quiet, 1 lines, 2 Tune's own")
    return ap


def run_script(args, *, study: str, methods: Sequence[str], space: dict[str, Any],
               fixed: dict[str, Any], sampler: Any = "grid", scheduler: Any = None,
               trials: int | None = None, quick: dict[str, Any] | None = None,
               gpus: float = 0.0, cpus: float = 1.0,
               by: Sequence[str] | None = None, method_spaces: dict | None = None,
               metric: Any = "val_acc", mode: Any = "max"):
    """Run one study from its parsed options; prints the protocol table (`by`) after
    the comparison table (both also go to the sweep's parent run). `quick` overrides apply with --quick: datasets, seeds,
    trials, fixed, space, scheduler; --seeds, --trials and --epochs given on the
    command line win over both. On a cluster each trial takes `gpus` GPUs."""
    datasets = list(DATASETS) if args.datasets == ["all"] else list(args.datasets)
    seeds, space, fixed = args.study_seeds, dict(space), dict(fixed)
    if args.quick:
        q = quick or {}
        datasets = list(q.get("datasets", ["digits"]))
        seeds = q.get("seeds", seeds)
        trials = q.get("trials", trials)
        fixed.update(q.get("fixed", {}))
        space.update(q.get("space", {}))
        scheduler = q.get("scheduler", scheduler)
    if args.seeds is not None:
        seeds = args.seeds
    if args.trials is not None:
        trials = args.trials
    if args.epochs is not None:
        fixed["epochs"] = args.epochs
    on_cluster = _on_cluster(args.address)
    resources = {"cpu": args.cpus_per_trial if args.cpus_per_trial is not None
                 else (2.0 * cpus if on_cluster and gpus else cpus),
                 "gpu": args.gpus_per_trial if args.gpus_per_trial is not None
                 else (gpus if on_cluster else 0.0)}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = f"{study}{'-quick' if args.quick else ''}-"
    name = args.name or f"{prefix}{stamp}"
    resume = args.resume is not None
    if resume:
        name = args.resume if isinstance(args.resume, str) else \
            args.name or _newest_sweep(_storage(args.storage_path), prefix)
    workers = getattr(args, "workers_per_trial", None)
    if workers is not None:
        resources["workers"] = workers
    layout = {"sal": "layer"} if getattr(args, "layout", "data") == "layer" else "data"
    if isinstance(layout, dict) and "sal" not in (args.methods or list(methods)):
        layout = "layer"  # no SAL here: let the check name the method it refuses
    res = tune(datasets, args.methods or list(methods), space, fixed=fixed,
               method_spaces=method_spaces, trials=trials, sampler=sampler, scheduler=scheduler,
               seeds=seeds, resources=resources, metric=metric, mode=mode,
               experiment=args.experiment if args.experiment is not None else f"sal-{study}",
               name=name, tracking_uri=args.tracking_uri, address=args.address,
               max_concurrent=args.max_concurrent, verbose=args.verbose, table_by=by,
               dry_run=args.dry_run, storage_path=args.storage_path, resume=resume,
               layout=layout)
    return res


def _newest_sweep(storage: str, prefix: str) -> str:
    """The newest sweep named `prefix...` in a local storage folder (for --resume)."""
    found = _sweeps_in(storage, f"{prefix}*")
    if not found:
        raise ConfigError("resume", f"no sweep named {prefix}* in {storage} to resume; "
                          "name one: --resume NAME")
    return found[-1].name
