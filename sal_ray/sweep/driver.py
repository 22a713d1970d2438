"""`tune()`: the front door. It checks everything, plans the sweep, and hands it
to `execute.run_sweep`, which runs it on Ray Tune.

    import sal_ray
    from sal_ray.sweep import loguniform
    res = sal_ray.tune(datasets=["digits"], methods=["sal", "bp", "moe"],
                       space={"lr": loguniform(1e-4, 1e-1), "n_areas": [1, 4, 16]},
                       fixed={"epochs": 10}, trials=20, seeds=3)
    print(res.table())          # best configuration per (dataset, method)
    res.trials                  # one row per trial (configuration), tidy

One Tune run for the whole sweep, one Optuna study per (dataset, method)
(`searcher`). A trial is one configuration (or, with fuse_configs, several of
one shape); its seeds run inside it, as one stacked model or one after another,
each its own MLflow child run under the sweep's parent run (`trial`).
Ray starts once and trial actors are reused (a Ray actor costs seconds; a
Digits run, one). docs/sweeps.md has the how.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, Sequence

from ..config import METHODS
from ..tracking.weights import LOG_MODEL_MAX_BYTES
from . import checks, record, storage
from .options import CHECKPOINT_EVERY_S, RunOptions
from .plan import check_data, plan


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
         log_model_max_bytes: int | None = LOG_MODEL_MAX_BYTES,
         flush_every_s: float | None = None, verbose: int = 1,
         table_by: Sequence[str] | None = None, dry_run: bool = False,
         resume: bool = False, max_failures: int = 3, checkpoint_every: int = 1,
         checkpoint_every_s: float = CHECKPOINT_EVERY_S, finish_wait_s: float = 120.0,
         callbacks: Sequence[Any] = (),
         layout: str | dict[str, str] = "data", script: dict[str, Any] | None = None,
         progress_every_s: float | None = 15.0,
         system_metrics_s: float | None = 5.0, fuse_configs: int = 1):
    """Search trainer configurations with Ray Tune + Optuna, tracked in MLflow.

    What to search:
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
        `mean_<metric>` keys and `seed_epochs`, the seed-epochs a trial has trained).
    seeds: seeds per configuration (seed, seed+1, ...; `fixed` seed is the first).
    resources: per trial, e.g. {"cpu": 1, "gpu": 0.25}; a GPU share sets device=cuda.
        {"workers": 4, "gpu": 1, "cpu": 4}: every seed of a trial trains on 4 Ray
        Train workers (TorchTrainer) with that much each, in `layout` "data" (any
        method) or "layer" (SAL only), or per method: {"sal": "layer", "bp":
        "data"} (unnamed methods: "data"); see docs/scaling.md.
    experiment, name: the MLflow experiment and the sweep's name (its parent run
        and the `sweep` tag).
    fuse_configs: configurations per Tune trial (default 1). Above 1, a study's
        configurations go out k at a time and train in one trial as one stacked
        model with their seeds (sal_ray.pack), each exactly as alone: Optuna
        still hears each configuration's own reports and result, and each keeps
        its own row and MLflow runs. Only for studies that search nothing but
        lr, lr_sel and diverge_loss, without a scheduler, in one process per
        trial (docs/sweeps.md, "Fused configurations").

    Where and how it runs (`RunOptions`):
    tracking_uri: the store (default $MLFLOW_TRACKING_URI, else
        sqlite:///<cwd>/mlflow.db).
    address: a Ray cluster (default $RAY_ADDRESS, else a `ray start` cluster on this
        machine, else a local Ray with `num_cpus`).
    log_model: 'best' (weights of each study's best-so-far trial), 'all' or 'none'.
    log_model_max_bytes: weights larger than this (default 256 MiB) are logged as a
        reference (checkpoint path, size, SHA-256: tracking/weights.py) instead
        of uploaded; None uploads them whatever their size.
    table_by: also print every configuration, datasets down and these options
        across (SweepResults.grid), after the comparison table.
    dry_run: validate and return the Plan without loading Ray or touching MLflow.
    resume: continue the interrupted sweep `name` (same plan, same store) through
        Tune's own restore: finished trials are kept, unfinished and errored ones
        continue from their last checkpoint, each seed in its existing MLflow run,
        under the same parent run. Also delivers MLflow writes a tracking outage
        left pending.
    max_failures: restarts of a trial whose process died (from its last checkpoint).
    checkpoint_every: epochs between trial checkpoints (model, optimiser, router,
        data position, pending MLflow writes); 0: none (a restarted trial then
        starts its current seed again).
    checkpoint_every_s: at most one trial checkpoint per this many seconds (default
        10; 0: every `checkpoint_every` epochs), and always one at a seed's end: a
        killed trial loses at most this much training, and short epochs do not
        pay for a checkpoint each.
    finish_wait_s: at the end, how long to wait for a tracking store that is away
        before leaving the pending writes for `resume`.
    callbacks: extra Ray Tune callbacks for the driver.
    progress_every_s: while trials run, print each running trial's epoch and
        current objective and the sweep's progress with an ETA this often
        (default 15 s; 0 or None: only the lines as trials end).
    system_metrics_s: MLflow's system metrics (CPU, memory, disk, network; GPU
        with pynvml) sampled this often (s) into every trial run; None or 0: off.
        Every trial run records its cost either way (cost_wall_s, cost_cpu_s,
        cost_gpu_s, peak_rss_mb), and the parent run their sums.
    script: a study script's own options, stored with the sweep (sweeps/*.py).

    What a sweep was started with is stored beside it (record.py): a resume
    restores every option left out, and refuses, by name, one given again with
    another value that it cannot honour.

    Returns SweepResults (the Plan for a dry run). Raises ConfigError (naming the
    option) before any trial starts when an input is wrong.
    """
    t0 = time.perf_counter()
    given = dict(locals())
    del given["t0"]
    if resume is True and name is not None:
        checks.sweep_name(name)
        stored = record.load(storage.storage_path(storage_path), name)
        if stored is not None:
            given = record.restore(name, stored["options"], given, DEFAULTS)
    return _tune(t0, given)


def _tune(t0: float, given: dict[str, Any]):
    g = dict(given)
    datasets, methods, space, name = g["datasets"], g["methods"], g["space"], g["name"]
    dry_run = g["dry_run"]
    opts = RunOptions(**{f.name: g[f.name] for f in dataclasses.fields(RunOptions)}).check(name)
    search = {k: g[k] for k in ("fixed", "method_spaces", "trials", "sampler", "metric", "mode",
                                "scheduler", "seeds", "resources", "experiment", "name",
                                "fuse_configs")}
    p = plan(datasets, methods, space, data="note" if dry_run else "skip", **search)
    folder = storage.storage_path(opts.storage_path)
    storage.check_sweep_folder(folder, p.name, opts.resume)
    layouts = checks.layouts(p.studies, p.workers, opts.layout)
    if dry_run:
        opts.echo(p.describe())
        return p
    # Ray, Optuna and MLflow load here: a dry run and `import sal_ray.sweep` never do
    from . import execute, runtime
    if not runtime.on_cluster(opts.address):  # local trials read this machine's disk
        check_data(p.studies)
    return execute.run_sweep(p, opts, folder, layouts, opts.echo, t0, {**g, "name": p.name})


DEFAULTS = {k: v.default for k, v in inspect.signature(tune).parameters.items()}
