"""The MLflow sink: one MLflow run per training run, behind the trainer's `Callback`.

    fit(cfg, [MLflowSink(uri, experiment_id, parent_run_id=sweep_run)])

Layout (the naming contract the dashboards read, docs/sweeps.md): one parent run
per sweep, one child run per training run (per seed), tagged `dataset`,
`method`, `sweep`, `status`; parameters under the bare option names plus the
derived facts of `Run.params()`; per-epoch metrics at step = epoch, per-area
usage summarised per layer (`usage`: the whole matrix is `area_usage.json`);
`final_*` and cost metrics (`cost`) when a run ends.

Everything goes through an `Outbox` and `MlflowClient` (never the fluent
`mlflow.start_run` stack): Ray reuses worker processes across trials, and a
process-global "active run" would leak from one trial into the next.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from ..trainer import Callback, Run, RunResult
from . import usage
from .cost import CostMeter, SystemMetrics
from .outbox import Outbox
from .provenance import run_tags
from .store import fail_fast_http
from .writes import final_metrics, metric_list

# Per-epoch metrics are buffered and written at most this often (and at the end):
# one SQLite transaction per epoch per run would cost more than a Digits epoch.
FLUSH_EVERY_S = 5.0


class MLflowSink(Callback):
    """Records one training run as one MLflow run, through an `Outbox`.

    on_start: creates the run (tags: dataset, method, status=running, code version,
    libraries, hardware, `run_key`, plus `tags`) and logs every parameter of
    `Run.params()` plus `extra_params`; a run resumed from a checkpoint re-attaches
    to the run of `key` instead. on_epoch: per-epoch metrics at step = epoch,
    delivered every `flush_every_s`. The last epoch completes the run (final_*
    metrics, status=completed) right there, so a scheduler that stops the trial in
    a later callback cannot leave it open. on_end: any other ending (diverged,
    stopped) is recorded with its message. `close()` ends a run the trainer never
    ended (the trial was stopped or crashed). Every ending logs the run's cost
    (`cost.CostMeter`: cost_wall_s, cost_cpu_s, cost_gpu_s, peak_rss_mb) and,
    for a routed net, `area_usage.json`; `system_metrics_s` > 0 samples MLflow's
    system metrics that often while the run trains.

    Training never waits for the store: writes it cannot take now stay in
    `outbox` and go with a later flush (a sweep also checkpoints them). `key`
    names the run across processes (default: a fresh one); pass the `outbox` a
    restarted process restored to continue the same run.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, *, parent_run_id: str | None = None,
                 run_name: str | None = None, tags: dict[str, Any] | None = None,
                 extra_params: dict[str, Any] | None = None,
                 flush_every_s: float = FLUSH_EVERY_S, key: str | None = None,
                 outbox=None, fail_fast: bool = False, store_env: dict | None = None,
                 system_metrics_s: float | None = None, hold_end: bool = False):
        self.uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.run_name, self.tags = run_name, dict(tags or {})
        self.extra_params = dict(extra_params or {})
        self.flush_every_s = flush_every_s
        self.key = key or uuid.uuid4().hex
        self.outbox = outbox if outbox is not None else Outbox(tracking_uri, experiment_id)
        self.fail_fast = fail_fast  # fail_fast_http() in the process that trains
        # the store's secret (store.split_secret), for a process that may not have it:
        # a Ray Train worker this sink is shipped to
        self.store_env = dict(store_env or {})
        # complete() leaves its writes to the owner's next delivery, where they join
        # what follows in one write (a sweep's trial: its summary); close() sends them
        self.hold_end = hold_end
        self.status: str | None = None  # set once the run is ended
        self.opened = False
        self.history: list[dict[str, float]] = []
        self._last_flush = 0.0
        self.epochs = 0
        self.meter = CostMeter()
        self.system_metrics_s = system_metrics_s
        self._system: SystemMetrics | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None while the store has not taken the run yet."""
        return self.outbox.run_ids.get(self.key)

    # -- trainer hooks --
    def on_start(self, run: Run) -> None:
        os.environ.update(self.store_env)
        if self.fail_fast:
            fail_fast_http()
        params = {**run.params(), **self.extra_params}
        self.epochs = run.cfg.optim.epochs
        self.history = list(getattr(run, "history", []) or [])
        self.open(params)
        self.meter.start(run.device)
        if self.system_metrics_s and self.run_id:  # a store that is away: no samples
            self._system = SystemMetrics(self.run_id, self.uri, self.system_metrics_s)

    def on_epoch(self, metrics: dict[str, float]) -> None:
        step = int(metrics["epoch"])
        self.history.append(dict(metrics))
        self.outbox.metrics(self.key, metric_list(
            {k: v for k, v in usage.compact(metrics).items() if k != "epoch"}, step))
        if step >= self.epochs:
            self.complete()
        elif time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_end(self, result: RunResult) -> None:
        if self.status is not None:
            return
        if result.status == "completed":  # resumed past its last epoch: nothing was reported
            self.history = self.history or list(result.history)
            self.complete()
        else:
            self.close(result.status, result.message)

    # -- the run's life --
    def open(self, params: dict[str, Any]) -> None:
        """Create the run and log `params` (also used when a run fails before
        training); a run the outbox already knows is taken up again instead, with
        this sink's tags (a restarted trial may have something to add)."""
        if self.outbox.knows(self.key):
            self.outbox.reopen(self.key)
            if self.tags:
                self.outbox.tags(self.key, self.tags)
        else:
            tags = {"dataset": params.get("dataset"), "method": params.get("method"),
                    "status": "running", **run_tags(), **self.tags}
            self.outbox.create(self.key, self.run_name or default_run_name(params), tags,
                               self.parent_run_id)
            self.outbox.params(self.key, params)
        self.opened = True
        self.flush(force=True)

    def flush(self, force: bool = False) -> bool:
        """Deliver what waits; False if the store did not take it all (kept for later)."""
        self._last_flush = time.monotonic()
        return self.outbox.deliver(force=force)

    def complete(self) -> None:
        last = self.history[-1] if self.history else {}
        self.outbox.metrics(self.key, metric_list(
            final_metrics(usage.compact(last), [usage.compact(h) for h in self.history]),
            int(last.get("epoch", 0))))
        self.record_ending()
        self.outbox.end(self.key, "completed")
        self.status = "completed"
        if not self.hold_end:
            self.flush(force=True)

    def record_ending(self) -> None:
        """The run's cost and its area usage matrix, before its end: sampling stops."""
        samples = self._system.stop() if self._system is not None else []
        self._system = None
        cost = self.meter.metrics()
        last = self.history[-1] if self.history else {}
        self.outbox.metrics(self.key, samples + metric_list(cost, int(last.get("epoch", 0))))
        if usage.matrix(self.history) is None:
            return
        if self.outbox.folder is None:  # a sink's own outbox: a folder for the one file
            self.outbox.folder = Path(tempfile.mkdtemp(prefix="sal-sink-"))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, usage.ARTIFACT)
            usage.write(self.history, path)
            self.outbox.artifact(self.key, path, "")  # copied into the outbox now

    def state_for_caller(self) -> dict:
        """What is still undelivered, for the process that started this sink in a
        worker (`Outbox.absorb` there): a worker's memory ends with it."""
        return {"ops": self.outbox.ops, "run_ids": self.outbox.run_ids}

    def close(self, status: str, message: str = "") -> None:
        """End the run as `status` unless already ended; never raises (it runs on
        the way out of a failing trial, where the original error matters more)."""
        if not self.opened:
            return
        if self.status is None:
            self.status = status
            try:
                self.record_ending()
            except Exception:  # noqa: BLE001 - the ending itself matters more
                pass
            self.outbox.end(self.key, status, message)
        try:  # what waits, a held end included
            self.flush(force=True)
        except Exception:  # noqa: BLE001
            pass


def default_run_name(params: dict[str, Any], searched: Iterable[str] = (),
                     trial: int | str | None = None) -> str:
    """`sal #3 n4 lr0.0123 s0 digits`: the method, the trial's number in its sweep
    (if any), the searched values (without `searched`: areas and learning rate;
    depth d, width w, batch b, epochs e, any other by name), the seed, then the
    dataset. Within a sweep the trial number and seed make it unique."""
    short = {"n_areas": "n", "lr": "lr", "depth": "d", "width": "w", "batch_size": "b",
             "epochs": "e"}
    parts = [str(params.get("method"))]
    if trial is not None:
        parts.append(f"#{trial}")
    for name in dict.fromkeys(list(searched) or ["n_areas", "lr"]):
        if name in ("method", "seed", "dataset"):
            continue
        value = params.get(name)
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{short[name]}{text}" if name in short else f"{name}={text}")
    parts.append(f"s{params.get('seed')}")
    return " ".join(parts) + f" {params.get('dataset')}"
