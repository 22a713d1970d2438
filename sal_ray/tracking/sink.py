"""The MLflow sink: one MLflow run per training run, behind the trainer's `Callback`.

    fit(cfg, [MLflowSink(uri, experiment_id, parent_run_id=sweep_run)])

Layout (the naming contract the dashboards read, docs/sweeps.md): one parent run
per sweep, one child run per training run (per seed), tagged `dataset`,
`method`, `sweep`, `status`; parameters under the bare option names plus the
derived facts of `Run.params()`; per-epoch metrics at step = epoch; `final_*`
metrics when a run completes.

Everything goes through an `Outbox` and `MlflowClient` (never the fluent
`mlflow.start_run` stack): Ray reuses worker processes across trials, and a
process-global "active run" would leak from one trial into the next.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Iterable

from ..trainer import Callback, Run, RunResult
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
    ended (the trial was stopped or crashed).

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
                 hold_end: bool = False):
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

    def on_epoch(self, metrics: dict[str, float]) -> None:
        step = int(metrics["epoch"])
        self.history.append(dict(metrics))
        self.outbox.metrics(self.key, metric_list(
            {k: v for k, v in metrics.items() if k != "epoch"}, step))
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
        self.outbox.metrics(self.key, metric_list(final_metrics(last, self.history),
                                                  int(last.get("epoch", 0))))
        self.outbox.end(self.key, "completed")
        self.status = "completed"
        if not self.hold_end:
            self.flush(force=True)

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
            self.outbox.end(self.key, status, message)
        try:  # what waits, a held end included
            self.flush(force=True)
        except Exception:  # noqa: BLE001
            pass


def default_run_name(params: dict[str, Any], searched: Iterable[str] = ()) -> str:
    """`sal-n16-lr1e-04-s0 digits`: method, areas, learning rate, any other searched
    option (depth d, width w, batch b, epochs e), seed, then the dataset."""
    short = {"depth": "d", "width": "w", "batch_size": "b", "epochs": "e"}
    parts = [str(params.get("method")), f"n{params.get('n_areas')}"]
    lr = params.get("lr")
    parts.append(f"lr{lr:.0e}" if isinstance(lr, (int, float)) else f"lr{lr}")
    for name in searched:
        if name in ("method", "n_areas", "lr", "seed", "dataset"):
            continue
        value = params.get(name)
        text = f"{value:.2g}" if isinstance(value, float) else str(value)
        parts.append(f"{short[name]}{text}" if name in short else f"{name}={text}")
    parts.append(f"s{params.get('seed')}")
    return "-".join(parts) + f" {params.get('dataset')}"
