"""What runs inside a Tune trial: one configuration, every seed its own MLflow
run. In one process the seeds train as one stacked model (`trial_pack`, with
`fuse` on); otherwise in order, Tune hearing the running mean over seeds after
every epoch.

    run_trial(config, ctx)     the Tune function trainable (tune.with_parameters)
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import socket
import tempfile
import threading
import weakref
from dataclasses import dataclass

import ray
from ray import tune as rt

from .. import checkpoint
from ..checkpoint import CheckpointError
from ..config import Config, ConfigError
from ..data import DataError
from ..distributed import fit_distributed, gather_checkpoint
from ..tracking import store
from ..tracking.sink import MLflowSink, default_run_name
from ..tracking.weights import checkpoint_reference, reference_tags, uploads
from ..tracking.writes import metric_list
from ..trainer import Callback, fit
from .costs import CheckpointClock, Costs, Timed
from .storage import StorageError, storage_failure
from .trial_pack import fit_seeds_fused, fuses
from .trial_state import (TrialContext, TrialFolder, config_key, interrupted, run_key,
                          trial_number, trial_summary)


def penalty(mode: str) -> float:
    """The objective value of a trial that did not complete: the worst there is."""
    return -math.inf if mode == "max" else math.inf


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
        run_seeds(config, ctx, folder, rt.get_context().get_trial_id(), costs,
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


def seed_sink(ctx: TrialContext, folder: TrialFolder, trial_id: str, study: str,
              cfg_flat: dict, cfg_key: str, index: int, key: str, fallback: str,
              number: str | None = None) -> MLflowSink:
    """The MLflow sink of one seed's run (taken up again by `key` after a restart)."""
    tags = {"sweep": ctx.sweep, "trial": trial_id, "config": cfg_key, "seed_index": index,
            "seeds": ctx.seeds, "searched": ",".join(ctx.searched[study]),
            # where it ran: on a cluster, which node's disk, GPU and log to look at
            "ray_node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    if number is not None:
        tags["trial_number"] = number
    if fallback:
        tags["checkpoint_fallback"] = fallback
    return MLflowSink(ctx.tracking_uri, ctx.experiment_id, parent_run_id=ctx.parent_run_id,
                      run_name=default_run_name(cfg_flat, ctx.searched[study], number),
                      tags=tags, flush_every_s=ctx.flush_every_s, key=key, outbox=folder.outbox,
                      fail_fast=True, store_env=ctx.store_env,
                      system_metrics_s=ctx.system_metrics_s,
                      # the last seed's end goes with the trial's summary, in one write
                      hold_end=index == ctx.seeds - 1 and ctx.workers == 1)


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
        kept = folder.checkpoint()
    rt.report({**last, **common, **final, "trial_status": "completed",
               "mlflow_run_ids": run_ids(ctx.seeds), **costs.report()}, checkpoint=kept)


def keep_seed(ctx: TrialContext, folder: TrialFolder, result, seed: int, costs: Costs) -> None:
    """A completed seed's final metrics and weights go into the trial folder."""
    weights = None
    path = getattr(result, "checkpoint_path", None)
    if ctx.log_model != "none" and result.net is None and path and \
            not uploads(path, ctx.log_model_max_bytes):
        weights = path  # larger than log_model_max_bytes: referenced where Ray keeps it
    elif ctx.log_model != "none":
        weights = result.net.state_dict() if result.net is not None else \
            checkpoint_weights(path)
    with costs.timed("seed_done"):  # the weights saved for the end
        folder.seed_done({**result.counts, **result.final, "seed": seed}, weights)


def mark_trial(folder: TrialFolder, keys: list[str], status: str, deliver: bool = True) -> None:
    """Tag every seed run of the trial with how the trial ended (`trial_status`): a
    seed that completed in a trial whose next seed diverged reads as such."""
    for key in keys:
        if folder.outbox.knows(key):
            folder.outbox.tags(key, {"trial_status": status})
    if deliver:
        folder.outbox.deliver(force=True)


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


def checkpoint_weights(folder: str | None):
    """The net's state dict from a multi-worker run's last checkpoint (core format;
    a layer-parallel one is gathered from its stage files), read without running
    code (sal_ray.checkpoint)."""
    if not folder:
        return None
    state = checkpoint.read(folder)
    if state is None:
        with tempfile.TemporaryDirectory() as tmp:
            gather_checkpoint(folder, tmp)
            state = checkpoint.read(tmp)
    return state["net"]


def log_trial_summary(ctx: TrialContext, folder: TrialFolder, keys: list[str], final: dict,
                      common: dict) -> None:
    """Every seed run gets its trial's mean ± std (`trial_*`); the model weights go to
    MLflow when they are the best of their (dataset, method) so far, or always.
    All through the trial's outbox: a store that is away gets them later."""
    m0 = ctx.metrics[0]
    trial_metrics = {f"trial_{k}": v for k, v in final.items() if k.startswith("final_")}
    trial_metrics[f"trial_objective_{m0}"] = final[f"mean_{m0}"]
    for key in keys:
        folder.outbox.metrics(key, metric_list(trial_metrics, 0))
    mark_trial(folder, keys, "completed", deliver=False)
    if not folder.weights:
        return
    if ctx.log_model == "best":
        op = ">" if ctx.modes[0] == "max" else "<"
        try:
            better = store.with_retry(
                store.client(ctx.tracking_uri).search_runs, [ctx.experiment_id],
                filter_string=(f"tags.sweep = '{ctx.sweep}' and tags.dataset = "
                               f"'{common['dataset']}' and tags.method = '{common['method']}' "
                               f"and metrics.trial_objective_{m0} {op} {final[f'mean_{m0}']!r}"),
                max_results=1)
        except Exception:  # noqa: BLE001 - store away: keep the weights, they may be the best
            better = []
        if better:
            return
    for key, rel in zip(keys, folder.weights):
        path = rel["ref"] if isinstance(rel, dict) else str(folder.work / rel)
        if uploads(path, ctx.log_model_max_bytes):
            folder.outbox.artifact(key, path, "model")
            folder.outbox.tags(key, {"model_logged": "true"})
        else:  # past log_model_max_bytes: where the weights are, their size and hash
            ref = checkpoint_reference(path)
            folder.outbox.tags(key, reference_tags(ref))
            folder.outbox.artifact_text(key, json.dumps(ref, indent=1), "model/reference.json")
