"""Running a planned sweep: the store and Ray, the parent run, Ray Tune's Tuner
(fresh, or restored on resume), and the end of it: writes an outage left pending
delivered, runs a stopped trial left open closed, the outcome and the tables on
the parent run. `driver.tune` calls `run_sweep` once its checks have passed."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import ray
from ray import tune as rt

from ..tracking import store
from ..tracking.sink import FLUSH_EVERY_S
from . import head, parent, placement, ray_compat, record, runtime, signals
from . import storage as storage_mod
from .console import LiveConsole, StopOnStorageError, SweepProgress
from .delivery import deliver_pending, wait_for_store
from .options import RunOptions
from .plan import Plan
from .results import SweepResults, best_and_pareto, trial_records, trials_table
from .searcher import StudySearcher
from .stops import asha
from .storage import StorageError, storage_failure, sweep_folder
from .trial import run_trial
from .trial_state import TrialContext, tune_trial_name

ENDED = ["completed", "diverged", "failed", "stopped", "crashed", "storage_error"]


def run_sweep(p: Plan, opts: RunOptions, storage: str, layouts: dict, echo: Callable,
              t0: float, options: dict) -> SweepResults:
    """Run the planned sweep; `options`: every tune() option, stored with it."""
    # from here on only the public form of the store's URI exists; its secret, if
    # any, is in the environment of the processes that talk to the store
    # (this process keeps it: SweepResults.runs() reads the store afterwards)
    uri, store_env = store.split_secret(store.resolve_uri(opts.tracking_uri))
    os.environ.update(store_env)
    try:
        return _run(p, opts, storage, layouts, echo, t0, options, uri, store_env)
    except StorageError:
        raise
    except Exception as e:  # a full disk under the store or the storage: one line
        failure = storage_failure(e)
        if failure is None:
            raise
        raise StorageError(f"the sweep's storage ({storage}) or MLflow store ({uri}) "
                           f"cannot be written: {failure}") from None


def _run(p: Plan, opts: RunOptions, storage: str, layouts: dict, echo: Callable, t0: float,
         options: dict, uri: str, store_env: dict) -> SweepResults:
    runtime.quiet_engines_urls()
    echo(p.describe())
    echo(f"tracking: {uri}, experiment '{p.experiment}'")
    optuna_url = storage_mod.optuna_url(storage, p.name)
    echo(f"Optuna studies: {optuna_url}; watch them live:  optuna-dashboard {optuna_url}")
    experiment_id = runtime.start_store_and_ray(uri, p.experiment, opts.address, opts.num_cpus)
    placement.check(p.resources, echo)  # a trial no node can hold: refused before any run
    with signals.as_ctrl_c(echo):  # ended by SIGTERM or SIGHUP as by Ctrl-C
        return _claimed(p, opts, storage, layouts, echo, t0, options, uri, store_env,
                        experiment_id)


def _claimed(p: Plan, opts: RunOptions, storage: str, layouts: dict, echo: Callable, t0: float,
             options: dict, uri: str, store_env: dict, experiment_id: str) -> SweepResults:
    # the name is this driver's from here to the end: a second driver under it stops
    # here, before any run of its own exists
    claim = storage_mod.claim(storage, p.name)
    try:
        storage_mod.check_sweep_folder(storage, p.name, opts.resume)  # again, now it is ours
        if opts.resume:
            parent_id = parent.reopen_parent(uri, experiment_id, p, echo)
        else:
            record.save(storage, p.name, options, options.get("script"))
            parent_id = parent.open_parent(uri, experiment_id, p, storage)
        link = parent.share_sweep_view(uri, experiment_id, p, parent_id)
        echo(f"MLflow UI (once `{head.ui_command(uri)}` serves it): {link}")
        try:
            res, records, sweep_path = fit_tuner(p, opts, uri, experiment_id, parent_id,
                                                 storage, layouts, echo, store_env)
        except BaseException as e:
            parent.mark_crashed(uri, parent_id, e)
            raise
        res.elapsed_s = time.perf_counter() - t0
        res.ui_link = link
        finish(res, records, sweep_path, uri, echo, opts)
        return res
    finally:
        if claim is not None:
            claim.release()


def trial_setup(p: Plan, opts: RunOptions, uri: str, experiment_id: str, parent_id: str,
                storage: str, layouts: dict, store_env: dict
                ) -> tuple[TrialContext, dict, int | None]:
    """The trials' context, the resources Tune places per trial, and the cap on
    concurrent trials."""
    ctx = TrialContext(p.name, uri, experiment_id, parent_id,
                       fixed={s.key: s.fixed for s in p.studies},
                       searched={s.key: tuple(s.space) for s in p.studies},
                       metrics=p.metrics, modes=p.modes, seeds=p.seeds, base_seed=p.base_seed,
                       log_model=opts.log_model, log_model_max_bytes=opts.log_model_max_bytes,
                       flush_every_s=FLUSH_EVERY_S if opts.flush_every_s is None
                       else opts.flush_every_s,
                       checkpoint_every=opts.checkpoint_every,
                       checkpoint_every_s=opts.checkpoint_every_s, store_env=dict(store_env),
                       system_metrics_s=opts.system_metrics_s or 0.0,
                       config_stops=p.asha_per_config)
    resources = {k: v for k, v in p.resources.items() if (v or k == "cpu") and k != "workers"}
    max_concurrent = opts.max_concurrent
    if p.workers > 1:
        # the trial only drives its TorchTrainer, whose workers ask for the
        # resources; trials beyond what the cluster can place at once would hold
        # their drivers while their workers wait (docs/engines.md): cap them
        ctx = dataclasses.replace(
            ctx, workers=p.workers, layouts=dict(layouts), worker_cpu=p.resources["cpu"],
            worker_gpu=p.resources["gpu"], train_storage=sweep_folder(storage, p.name) + "/train")
        # (Tune refuses an empty request: a token of memory stands for "nothing")
        resources = {"cpu": 0, "memory": 2 ** 20}
        have = ray.cluster_resources()
        fits = int(have.get("CPU", 1) // (p.workers * p.resources["cpu"]))
        if p.resources["gpu"]:
            fits = min(fits, int(have.get("GPU", 0) // p.workers))
        max_concurrent = max(1, min(max_concurrent or fits, fits))
    return ctx, resources, max_concurrent


def fit_tuner(p: Plan, opts: RunOptions, uri: str, experiment_id: str, parent_id: str,
              storage: str, layouts: dict, echo: Callable, store_env: dict):
    ctx, resources, max_concurrent = trial_setup(p, opts, uri, experiment_id, parent_id,
                                                 storage, layouts, store_env)
    progress = SweepProgress(p, echo)
    callbacks = [progress, LiveConsole(p, opts.progress_every_s, echo), *opts.callbacks]
    trainable = rt.with_resources(rt.with_parameters(run_trial, ctx=ctx), resources)
    # Tune's own per-trial files would repeat what MLflow holds; they cost a write per epoch
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if opts.resume:
        # Tune's restore: its experiment state and our searcher's studies come back;
        # unfinished and errored trials continue from their last checkpoints
        with runtime.QuietEngines(opts.verbose):
            tuner = rt.Tuner.restore(sweep_folder(storage, p.name), trainable,
                                     resume_unfinished=True, resume_errored=True)
        ray_compat.replace_callbacks(tuner, callbacks,
                                     StopOnStorageError(progress))
        searcher = None
    else:
        # a file left by an attempt that never got its Tune folder (the name is ours now)
        db = storage_mod.optuna_db(storage, p.name)
        db.parent.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        with runtime.QuietEngines(opts.verbose):
            searcher = StudySearcher(p, storage_mod.optuna_url(storage, p.name))
        # fused configurations: ASHA decides per configuration, in the searcher (stops)
        scheduler = None if p.fuse_configs > 1 else \
            asha(p, p.scheduler) if isinstance(p.scheduler, dict) else p.scheduler
        tuner = rt.Tuner(
            trainable,
            tune_config=rt.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                      num_samples=p.total_trials, reuse_actors=True,
                                      trial_name_creator=tune_trial_name,
                                      max_concurrent_trials=max_concurrent,
                                      time_budget_s=opts.time_budget_s),
            run_config=rt.RunConfig(
                name=p.name, storage_path=storage, callbacks=callbacks,
                stop=StopOnStorageError(progress),
                verbose=0 if opts.verbose < 2 else 1,
                failure_config=rt.FailureConfig(max_failures=opts.max_failures),
                # the latest is all a restart needs; older ones only cost disk
                checkpoint_config=rt.CheckpointConfig(num_to_keep=1)))
    with runtime.QuietEngines(opts.verbose):
        grid = tuner.fit()
    if searcher is None:  # restored: the searcher Tune restored holds the studies
        searcher = ray_compat.restored_search_alg(tuner)
    studies = getattr(searcher, "studies", {})
    records = trial_records(grid, progress)
    df = trials_table(p, records)
    best, pareto = best_and_pareto(p, df, records, studies)
    res = SweepResults(p.name, p, df, best, pareto, studies, uri, p.experiment,
                       experiment_id, parent_id, 0.0)
    res.storage_error = progress.storage_errors[0][1] if progress.storage_errors else ""
    res.optuna_storage = getattr(searcher, "storage_url", "")
    return res, records, grid.experiment_path


def finish(res: SweepResults, records: list[dict], sweep_path: str, uri: str, echo: Callable,
           opts: RunOptions) -> None:
    """Deliver what a tracking outage left pending, close runs a stopped or crashed
    trial left open, record the outcome on the sweep's parent run, print the table
    and how to look at it."""
    ended = int(res.trials.status.isin(ENDED).sum()) if len(res.trials) else 0
    echo("")
    echo(res.table())
    if opts.table_by:
        echo("")
        echo(res.grid(opts.table_by))
    resume_how = (f"sal_ray.tune(<same arguments>, name='{res.name}', resume=True), or the "
                  f"sweep script with --resume {res.name}")
    if not wait_for_store(uri, res.experiment_id, opts.finish_wait_s, echo):
        echo(f"\nsweep '{res.name}': {ended} of {res.plan.total_trials} trials ended, but the "
             f"MLflow store {uri} is away: their last records wait in the "
             f"trial checkpoints under {sweep_path}. Deliver them when "
             f"it is back: {resume_how}.")
        res.undelivered = True
        return
    try:
        outcome, in_store, left = record_outcome(res, records, uri, echo, opts, ended)
    except Exception as e:
        failure = storage_failure(e)
        if failure is None:
            raise
        raise StorageError(f"the MLflow store {uri} cannot be written: {failure}; the "
                           f"sweep's parent run stays unfinished: {resume_how}") from None
    word = {"completed": "done", "interrupted": "INTERRUPTED", "incomplete": "INCOMPLETE"}
    echo(f"\nsweep '{res.name}' {word[outcome]} in {res.elapsed_s:.0f} s; {in_store} of "
         f"{res.plan.total_trials} trials in MLflow experiment '{res.experiment}'.")
    if res.storage_error:
        echo(f"It stopped on a storage error: {res.storage_error}")
    if outcome != "completed":
        echo(f"Resume it: {resume_how}.")
    if res.undelivered:
        echo(f"{left} MLflow write(s) are still pending in trial checkpoints; resume to deliver.")
    echo(f"Open the MLflow UI:  {head.ui_command(uri)}")
    echo(f"  then open its runs:  {res.ui_link}")
    echo(f"  (or filter runs:  tags.sweep = '{res.name}')")
    if res.storage_error:
        raise StorageError(res.storage_error)


def record_outcome(res: SweepResults, records: list[dict], uri: str, echo: Callable,
                   opts: RunOptions, ended: int) -> tuple[str, int, int]:
    """Deliver what trials left pending, close their open runs, and read back what
    the store holds: the outcome ("completed", "interrupted" or "incomplete"), how
    many trials are in the store, and how many writes still wait."""
    delivered, left = deliver_pending(records, uri)
    if delivered:
        echo(f"delivered {delivered} MLflow write(s) a tracking outage had left pending")
    res.undelivered = left > 0
    children = parent.child_runs(uri, res.experiment_id, res.name, res.parent_run_id)
    status = dict(zip(res.trials.trial_id, res.trials.status)) if len(res.trials) else {}
    parent.close_open_children(uri, children, status)
    # the run ids of every trial, from the store: a trial whose store was away when
    # it reported could not name them
    by_trial = parent.run_ids_by_trial(children)
    missing = []
    if len(res.trials):
        res.trials["mlflow_run_ids"] = [",".join(by_trial.get(t, [])) for t in res.trials.trial_id]
        parent.add_costs(res.trials, children)
        for b in res.best.values():
            b["mlflow_run_ids"] = ",".join(by_trial.get(b["trial_id"], []))
        missing = [f"{r.trial_id} ({r.dataset}/{r.method}, {r.status})"
                   for r in res.trials.itertuples() if not by_trial.get(r.trial_id)]
    if missing:
        echo(f"not in MLflow ({len(missing)}): " + "; ".join(missing))
    # fewer trials than planned: Ctrl-C or time_budget_s ended the sweep early
    outcome = ("incomplete" if res.storage_error or missing else
               "completed" if ended >= res.plan.total_trials else "interrupted")
    parent.close_parent(uri, res, outcome, ended, opts.table_by,
                        res.storage_error or ("not in MLflow: " + "; ".join(missing)
                                              if missing else ""), children)
    return outcome, len(res.trials) - len(missing), left
