"""The plan of a sweep: its studies and everything checked before Ray starts.

A study is one (dataset, method) pair: its own Optuna study, search space, fixed
options and budget. `plan()` validates a whole sweep (names, objectives, the
space, every candidate value through the trainer's own validation, the data on
disk for local runs) and lays it out; it touches neither Ray nor MLflow, and
`tune(..., dry_run=True)` returns it.
"""

from __future__ import annotations

import datetime
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import DATASETS, METHODS, OPTION_SECTION, Config, ConfigError, coerce, validate
from ..data import DATASETS_INFO, DataError, check_available
from ..pack.build import PER_MEMBER
from . import checks
from .space import DEFAULT_SPACE, Choice, Spec, candidates, parse_entry

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
# What configurations fused in one trial (fuse_configs) may differ in: the pack's
# per-member scalars, less the seed (the sweep sets it).
FUSABLE = tuple(name for name in PER_MEMBER if name != "seed")
# Where and how a run executes, not what it learns: fixed, never searched.
UNSEARCHABLE = {"data_root": "where the data is", "download": "whether to fetch data",
                "device": "set by resources= (a GPU share sets cuda)"}


@dataclass
class Study:
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
    studies: list[Study]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    sampler: Any
    scheduler: Any
    seeds: int
    base_seed: int
    resources: dict[str, float]
    experiment: str
    max_epochs: int
    notes: list[str] = field(default_factory=list)  # about the whole sweep
    fuse_configs: int = 1  # configurations per Tune trial, trained as one pack

    @property
    def total_trials(self) -> int:
        """Configurations the sweep tries (Optuna's trials; the trials table's rows)."""
        return sum(s.budget for s in self.studies)

    @property
    def asha_per_config(self) -> bool:
        """Fused configurations under ASHA: it decides for each one (sweep/stops.py),
        and Tune itself runs no scheduler."""
        return self.fuse_configs > 1 and isinstance(self.scheduler, dict)

    @property
    def tune_trials(self) -> int:
        """Tune trials that run them: `fuse_configs` configurations each."""
        k = self.fuse_configs
        return sum(-(-s.budget // k) for s in self.studies)

    @property
    def workers(self) -> int:
        return int(self.resources.get("workers", 1))

    def describe(self) -> str:
        lines = [f"sweep {self.name}: {self.total_trials} trial(s) x {self.seeds} seed(s); "
                 f"objective {', '.join(f'{m} ({o})' for m, o in zip(self.metrics, self.modes))}"]
        if self.fuse_configs > 1:
            lines.append(f"  up to {self.fuse_configs} configurations fused per Tune trial "
                         f"({self.tune_trials} Tune trial(s), each one stacked model)"
                         + ("; ASHA stops each configuration on its own"
                            if self.asha_per_config else ""))
        for s in self.studies:
            searched = ", ".join(f"{k}={v.describe()}" for k, v in s.space.items()) or "nothing"
            lines.append(f"  {s.key}: {s.budget} trial(s), searching {searched}")
            lines += [f"    note: {n}" for n in s.notes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _refused(option: str, err: ConfigError, where: str) -> ConfigError:
    detail = str(err).split(": ", 1)[-1]
    return ConfigError(err.option or option, f"{detail} ({where})")


def make_study(dataset: str, method: str, space: dict[str, Spec], fixed: dict[str, Any],
               trials: int | None, grid: bool) -> Study:
    """One study, its fixed options and every candidate value validated by the
    trainer for this dataset's class count."""
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
    n_classes = DATASETS_INFO[dataset].n_classes  # enables the router's d_f >= classes check
    try:
        base = validate(Config.from_flat(fixed), n_classes)
    except ConfigError as e:
        raise _refused("fixed", e, f"fixed options for {method} on {dataset}") from None
    for name, spec in space.items():
        for value in candidates(spec):
            try:
                validate(base.replace(**{name: value}), n_classes)
            except ConfigError as e:
                raise _refused(name, e, f"search space value {value!r} for {method} on "
                               f"{dataset}") from None
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
    return Study(dataset, method, space, fixed, budget, points, notes)


def _method_spaces(method_spaces) -> dict[str, dict]:
    """Per-method entries: known methods, dicts, and nothing searched for a method
    it cannot affect (asked for by name, that is an error, not a silent drop)."""
    for method, extra in (method_spaces or {}).items():
        checks.names([method], METHODS, "methods")
        if not isinstance(extra, dict):
            raise ConfigError("method_spaces", f"{method}: must be a dict of option -> values")
        for opt in sorted(set(extra) & set(NOT_FOR[method])):
            spec = parse_entry(opt, extra[opt])
            if spec is not None and not (isinstance(spec, Choice) and len(spec.values) == 1):
                raise ConfigError(opt, f"cannot be searched for {method} (method_spaces): " + (
                    "bp has one area and no router" if opt == "n_areas" else
                    f"no effect on {method}"))
    return dict(method_spaces or {})


def _split(method: str, space: dict, fixed: dict, per_method: dict):
    """A method's (searched, pinned) options: a one-value choice is pinned."""
    searched, pinned = {}, dict(fixed)
    for opt, value in {**space, **per_method.get(method, {})}.items():
        if opt in RESERVED:
            raise ConfigError(opt, "set by the sweep, not searchable: " + RESERVED_HOW[opt])
        if opt not in OPTION_SECTION:
            Config.from_flat({opt: None})  # raises with the "did you mean" hint
        spec = parse_entry(opt, value)
        if spec is None or (isinstance(spec, Choice) and len(spec.values) == 1):
            pinned[opt] = spec.values[0] if spec is not None else coerce(opt, value)
        else:
            if opt in UNSEARCHABLE:
                raise ConfigError(opt, f"cannot be searched ({UNSEARCHABLE[opt]}): give "
                                  "one value in fixed=")
            searched[opt] = spec
        if opt in fixed:
            raise ConfigError(opt, "both fixed and searched; keep one")
    for opt in fixed:
        if opt in ("dataset", "method"):
            raise ConfigError(opt, "set by the sweep, not fixable: " + RESERVED_HOW[opt])
        if opt not in OPTION_SECTION:
            Config.from_flat({opt: None})
    return searched, pinned


def check_data(studies: list[Study], refuse: bool = True) -> list[str]:
    """Local runs: the data must be on disk now, not discovered missing in every
    trial. `refuse=False` (a dry run, which may plan for a cluster): the missing
    data is returned as notes instead."""
    seen, notes = set(), []
    for s in studies:
        key = (s.dataset, s.fixed.get("data_root"), s.fixed.get("download", False))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_available(*key)
        except DataError as e:
            if refuse:
                raise ConfigError("datasets", f"{s.dataset}: {e}") from None
            notes.append(f"{s.dataset} is not on this machine ({str(e).split(';')[0]}): a "
                         "local run would refuse it; on a cluster, data is checked where "
                         "trials run")
    return notes


def check_fusable(k, studies: list[Study], scheduler, resources: dict) -> None:
    """fuse_configs=k > 1 puts k configurations of a study in one Tune trial, trained
    as one stacked model (sal_ray.pack): they must share its shape, so a study may
    search only FUSABLE options; the trial must train in one process; and its
    scheduler can only be ASHA by name or settings, which then decides for each
    configuration (sweep/stops.py). A Ray TrialScheduler object stops whole
    trials, so it would end every configuration on one's result."""
    checks.positive_int("fuse_configs", k)
    if k == 1:
        return
    if scheduler is not None and not isinstance(scheduler, dict):
        raise ConfigError("fuse_configs", f"{k} configurations per trial cannot run under a "
                          f"{type(scheduler).__name__} (a Tune scheduler stops whole trials, "
                          "so one configuration's result would stop them all): use "
                          "scheduler='asha' or a dict of ASHA settings, which decide per "
                          "configuration, or fuse_configs=1")
    if resources.get("workers", 1) > 1:
        raise ConfigError("fuse_configs", "configurations fuse in one process, not on Ray "
                          "Train workers: use fuse_configs=1 with resources' workers > 1")
    for s in studies:
        if s.fixed.get("fuse") is False:
            raise ConfigError("fuse_configs", f"{s.key} fixes fuse=false (no stacked model): "
                              "use fuse_configs=1 with it")
        shaped = [name for name in s.space if name not in FUSABLE]
        if shaped:
            raise ConfigError("fuse_configs", f"configurations fuse only when they differ in "
                              f"{', '.join(FUSABLE)}; {s.key} searches {shaped[0]}, which "
                              "they must share: fix it, or use fuse_configs=1")


def plan(datasets: str | Sequence[str] = ("digits",), methods: str | Sequence[str] = METHODS,
         space: dict[str, Any] | None = None, *, fixed: dict[str, Any] | None = None,
         method_spaces: dict[str, dict[str, Any]] | None = None, trials: int | None = None,
         sampler: Any = "tpe", metric: str | Sequence[str] = "val_acc",
         mode: str | Sequence[str] = "max", scheduler: Any = None, seeds: int = 1,
         resources: dict[str, float] | None = None, experiment: str = "sal-ray",
         name: str | None = None, data: str = "refuse", fuse_configs: int = 1) -> Plan:
    """Validate a sweep and lay it out; raises ConfigError naming the bad option.
    Touches neither Ray nor MLflow (`tune(..., dry_run=True)` returns this).
    data: "refuse" a dataset not on this machine (a local run), "note" it in the
    plan (a dry run), or "skip" the check (a cluster: trials check it)."""
    datasets = checks.names(datasets, DATASETS, "datasets")
    methods = checks.names(methods, METHODS, "methods")
    metrics, modes = checks.objectives(metric, mode)
    sampler = checks.sampler(sampler)
    grid = sampler == "grid"
    checks.positive_int("trials", trials, allow_none=True)
    if trials is None and not grid:
        trials = DEFAULT_TRIALS
    checks.positive_int("seeds", seeds)
    sched = checks.scheduler(scheduler)
    res = checks.resources(resources)
    checks.experiment_name(experiment)
    if name is not None:
        checks.sweep_name(name)
    if space is not None and not isinstance(space, dict):
        raise ConfigError("space", f"must be a dict of option -> values; got {type(space).__name__}")
    if not isinstance(fixed or {}, dict):
        raise ConfigError("fixed", f"must be a dict of option -> value; got {type(fixed).__name__}")
    fixed = dict(fixed or {})
    # an option fixed by the caller leaves the default space; an explicit space and
    # `fixed` must not name the same option (which one was meant?)
    space = {k: v for k, v in DEFAULT_SPACE.items() if k not in fixed} if space is None \
        else dict(space)
    per_method = _method_spaces(method_spaces)
    split = {m: _split(m, space, fixed, per_method) for m in methods}
    if not grid and not any(searched for searched, _ in split.values()):
        raise ConfigError("space", "empty search space: nothing to search (name options to "
                          "search, or use sampler='grid' to run fixed configurations)")
    studies = []
    for dataset in datasets:
        for method in methods:
            searched, pin = split[method][0], dict(split[method][1])
            if resources and res.get("gpu", 0) > 0:
                pin.setdefault("device", "cuda")
            if pin.get("data_root") is not None:  # trials run in other folders
                pin["data_root"] = str(Path(str(pin["data_root"])).expanduser().resolve())
            studies.append(make_study(dataset, method, searched, pin, trials, grid))
    check_fusable(fuse_configs, studies, sched, res)
    notes = check_data(studies, refuse=data == "refuse") if data != "skip" else []
    max_epochs = max(max(candidates(s.space["epochs"])) if "epochs" in s.space
                     else Config.from_flat(s.fixed).optim.epochs for s in studies)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = name or f"sweep-{stamp}-{uuid.uuid4().hex[:4]}"
    seed0 = Config.from_flat(studies[0].fixed).run.seed
    return Plan(name, studies, metrics, modes, sampler, sched, seeds, seed0, res, experiment,
                max_epochs, notes, fuse_configs)
