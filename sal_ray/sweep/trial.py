"""What runs inside a Tune trial: one configuration, every seed its own MLflow
run. In one process the seeds train as one stacked model (`trial_pack`, with
`fuse` on); otherwise in order, Tune hearing the running mean over seeds after
every epoch. A trial of several configurations (`fuse_configs`) trains them all,
seeds and all, as one pack (`trial_configs`).

    run_trial(config, ctx)     the Tune function trainable (tune.with_parameters)
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass

from ray import tune as rt

from ..checkpoint import CheckpointError
from ..config import Config, ConfigError
from ..data import DataError
from ..distributed import fit_distributed
from ..tracking import store
from ..tracking.sink import MLflowSink
from ..trainer import Callback, fit
from .costs import CheckpointClock, Costs, Timed
from .storage import StorageError, storage_failure
from .trial_configs import run_configs
from .trial_pack import fit_seeds_fused, fuses
from .trial_runs import keep_seed, log_trial_summary, mark_trial, penalty, seed_sink
from .trial_state import (TrialContext, TrialFolder, config_key, interrupted, run_key,
                          trial_number, trial_summary)


def tune_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What Tune hears per epoch: everything but the per-area shares (MLflow has those)."""
    return {k: v for k, v in metrics.items() if not k.startswith("area_share.")}


def running_means(ctx: TrialContext, prior: list[dict], now: dict) -> dict[str, float]:
    """`mean_<metric>`: the finished seeds' final values and the current seed's
    current value, averaged. Every trial runs its seeds in the same order, so ASHA
    compares like with like at each rung."""
    return {f"mean_{m}": (sum(p[m] for p in prior) + now[m]) / (len(prior) + 1)
            for m in ctx.metrics if m in now}


class TuneReporter(Callback):
    """Reports each epoch of one seed to Tune, with the running means over seeds,
    and a checkpoint when the trial's `clock` says so (every `checkpoint_every`
    epochs, at most every `checkpoint_every_s` seconds, and at the seed's end)."""

    def __init__(self, ctx: TrialContext, seed_index: int, folder: TrialFolder, common: dict,
                 clock: CheckpointClock, costs: Costs):
        self.ctx, self.seed_index, self.folder, self.common = ctx, seed_index, folder, common
        self.clock, self.costs = clock, costs
        self.counts: dict = {}
        self.epochs = 0
        self.last: dict | None = None

    def on_start(self, run) -> None:
        self.counts = run.counts.as_dict()
        self.epochs = run.cfg.optim.epochs
        if run.history:  # resumed: what the last report said, should none follow
            self.last = self.payload(run.history[-1])

    def payload(self, m: dict) -> dict:
        now = {**self.counts, **m}
        return {**tune_metrics(m), **self.counts, **self.common, "seed_index": self.seed_index,
                "seed_epochs": self.seed_index * self.epochs + int(m["epoch"]),
                "trial_status": "running", **running_means(self.ctx, self.folder.prior, now)}

    def on_epoch(self, m: dict) -> None:
        self.last = self.payload(m)
        epoch = int(m["epoch"])
        if self.seed_index == self.ctx.seeds - 1 and epoch >= self.epochs:
            return  # the trial reports its last epoch itself, after the model is logged
        if self.clock.ship(epoch, last=epoch >= self.epochs):
            with self.costs.timed("checkpoint"):
                kept = self.folder.checkpoint()
            with self.costs.timed("report_checkpoint"):  # Tune copies the folder to storage
                rt.report(self.last, checkpoint=kept)
        else:
            with self.costs.timed("report"):  # one round trip to the driver
                rt.report(self.last)
        if self.folder.outbox.disk_full:  # the store is full, not away: waiting won't help
            raise StorageError(f"the MLflow store {self.ctx.tracking_uri} cannot be "
                               f"written: {self.folder.outbox.disk_full}")


@dataclass
class SeedMeans:
    """What Tune hears from a multi-worker trial's epochs (applied on the workers):
    the same keys a one-process trial reports, running means over seeds included."""
    ctx: TrialContext
    prior: list
    common: dict
    seed_index: int
    epochs: int

    def __call__(self, m: dict) -> dict:
        return {**tune_metrics(m), **self.common, "seed_index": self.seed_index,
                "seed_epochs": self.seed_index * self.epochs + int(m["epoch"]),
                "trial_status": "running", **running_means(self.ctx, self.prior, m)}


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


def run_trial(config: dict, ctx: TrialContext) -> None:
    """One Tune trial: the configuration `config` for every seed, in order, from
    where its last checkpoint left it (if Tune restarted it)."""
    global _JOIN_AT_EXIT
    if not _JOIN_AT_EXIT:
        _JOIN_AT_EXIT = bool(atexit.register(_join_trial_threads))
    _TRIAL_THREADS.add(threading.current_thread())
    os.environ.update(ctx.store_env)
    store.fail_fast_http()  # an unreachable server must not hold training up
    store.redact_logs("ray", "mlflow")
    # one "Checkpoint successfully created" line per epoch per trial is noise
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    costs = Costs()
    with costs.timed("setup"):
        folder = TrialFolder(ctx, rt.get_checkpoint())
    try:
        run = run_configs if "configs" in config else run_seeds
        run(config, ctx, folder, rt.get_context().get_trial_id(), costs,
            trial_number(rt.get_context().get_trial_name()))
    except Exception as e:
        # a full or failing disk: say so and end, where Tune would retry the trial
        # against the same disk until it gave up; the driver stops the sweep
        failure = storage_failure(e)
        if failure is None:
            raise
        rt.report({"dataset": config["dataset"], "method": config["method"],
                   "trial_status": "storage_error", "message": failure})
    finally:
        folder.remove()


def fit_seed(ctx: TrialContext, folder: TrialFolder, trial_id: str, cfg_flat: dict,
             sink: MLflowSink, reporter: TuneReporter, means: "SeedMeans"):
    """One seed, in this process (from its checkpoint, if any) or on workers."""
    if ctx.workers > 1:
        return fit_on_workers(ctx, cfg_flat, sink, folder, trial_id, means)
    with reporter.costs.timed("fit"):
        return fit(Config.from_flat(cfg_flat), [Timed(sink, reporter.costs, "mlflow"), reporter],
                   checkpoint_dir=str(folder.trainer_dir) if ctx.checkpoint_every > 0 else None,
                   save_due=reporter.clock.due)


def run_seeds(config: dict, ctx: TrialContext, folder: TrialFolder, trial_id: str,
              costs: Costs, number: str | None = None) -> None:
    dataset, method = config["dataset"], config["method"]
    study = f"{dataset}/{method}"
    searched = {k: v for k, v in config.items() if k not in ("dataset", "method")}
    flat = {**ctx.fixed[study], **searched}
    cfg_key = config_key(flat)
    common = {"dataset": dataset, "method": method}
    keys = [run_key(ctx.sweep, trial_id, ctx.base_seed + i) for i in range(ctx.seeds)]

    def run_ids(n: int) -> str:
        return ",".join(folder.outbox.run_ids.get(k, "") for k in keys[:n])

    def refused(why: str, n: int) -> None:  # the trainer refused it: Optuna hears FAIL
        mark_trial(folder, keys[:n], "failed")
        rt.report({**common, "trial_status": "failed", "message": why[:500],
                   "mlflow_run_ids": run_ids(n)}, checkpoint=folder.checkpoint())

    def ended_early(result, n: int, last: dict | None, what: str = "") -> None:
        # the seeds that completed before are runs of a trial that did not
        mark_trial(folder, keys[:n], result.status)
        rt.report({**(last or {}), **common, "trial_status": result.status,
                   "message": what + result.message,
                   **{f"mean_{m}": penalty(mo) for m, mo in zip(ctx.metrics, ctx.modes)},
                   "mlflow_run_ids": run_ids(n)}, checkpoint=folder.checkpoint())

    reporter = None
    clock = CheckpointClock(ctx.checkpoint_every, ctx.checkpoint_every_s)
    base = Config.from_flat(flat)
    if fuses(ctx, base, folder):
        def make_sink(i: int, cfg_flat: dict, fallback: str) -> MLflowSink:
            return seed_sink(ctx, folder, trial_id, study, cfg_flat, cfg_key, i, keys[i],
                             fallback, number)
        results, reporter, why = fit_seeds_fused(ctx, folder, flat, {**common, "config": cfg_key},
                                                 clock, costs, make_sink, trial_id)
        if why is not None:
            return refused(why, sum(folder.outbox.knows(k) for k in keys))
        for i, result in enumerate(results):
            if result.status != "completed":  # the others trained on: their runs are whole
                return ended_early(result, ctx.seeds, reporter.last, f"seed {ctx.base_seed + i}: ")
        for i, result in enumerate(results):
            keep_seed(ctx, folder, result, ctx.base_seed + i, costs)
    for i in range(folder.seed_index, ctx.seeds):
        seed = ctx.base_seed + i
        cfg_flat = {**flat, "seed": seed}
        seed_common = {**common, "seed": seed, "config": cfg_key}
        fallback = folder.fallback
        while True:
            sink = seed_sink(ctx, folder, trial_id, study, cfg_flat, cfg_key, i, keys[i],
                             fallback, number)
            said = {**seed_common, **({"checkpoint_fallback": fallback} if fallback else {})}
            reporter = TuneReporter(ctx, i, folder, said, clock, costs)
            try:
                result = fit_seed(ctx, folder, trial_id, cfg_flat, sink, reporter,
                                  SeedMeans(ctx, list(folder.prior), said, i,
                                            base.optim.epochs))
                break
            except CheckpointError as e:
                if not folder.trainer_dir.exists():
                    raise
                fallback = folder.start_over(f"seed {seed}", e)
                print(f"[checkpoint] trial {trial_id}: {fallback}", flush=True)
            except (ConfigError, DataError) as e:
                # the trainer refused this configuration: record it, tell Optuna FAIL
                if not sink.opened:
                    sink.open({**cfg_flat})
                sink.close("failed", str(e))
                return refused(str(e), i + 1)
            except BaseException as e:
                sink.close(*interrupted(e))
                raise
        if result.status != "completed":
            return ended_early(result, i + 1, reporter.last)
        keep_seed(ctx, folder, result, seed, costs)
    final = trial_summary(folder.prior, ctx.metrics)
    with costs.timed("summary"):
        log_trial_summary(ctx, folder, keys[:len(folder.prior)], final, common)
        folder.outbox.deliver(force=True)
    last = reporter.last if reporter is not None and reporter.last else {}
    with costs.timed("checkpoint"):
        kept = folder.final_checkpoint(clock)
    rt.report({**last, **common, **final, "trial_status": "completed",
               "mlflow_run_ids": run_ids(ctx.seeds), **costs.report()}, checkpoint=kept)


def fit_on_workers(ctx: TrialContext, cfg_flat: dict, sink: MLflowSink, folder: TrialFolder,
                   trial_id: str, means: SeedMeans):
    """One seed on `ctx.workers` Ray Train workers (a TorchTrainer driven from this
    trial). Its epochs reach Tune from rank 0 (Train's Tune callback); the MLflow
    sink runs on rank 0 and hands back what it could not deliver. The Train run's
    name is stable per (trial, seed): a restarted trial resumes it."""
    seed = cfg_flat["seed"]
    result = fit_distributed(
        Config.from_flat(cfg_flat), ctx.workers, use_gpu=ctx.worker_gpu > 0,
        storage_path=ctx.train_storage, name=f"{trial_id}-s{seed}", callbacks=[sink],
        verbose=False, cpus_per_worker=ctx.worker_cpu,
        layout=ctx.layouts.get(cfg_flat["method"], "data"),
        report_metrics=means)
    for state in result.callback_states or []:
        folder.outbox.absorb(state)
    if result.status != "completed" and not result.message:
        result.message = "the workers ended without completing the run"
    return result
