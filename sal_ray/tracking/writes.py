"""Writing to the store: params, tags, metrics, a run's start and end, each within
MLflow's batch limits and through `store.with_retry`."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunTag

from .store import client, with_retry

# MLflow's own batch limits (mlflow.utils.validation): 100 params or tags, 1000
# metrics per log_batch; a param value holds at most 6000 characters.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
# Final metrics: the last epoch's values under final_*, except the per-area shares
# (those stay per-epoch histories; areas_used.* gets its final_ twin).
FINAL_SKIP_PREFIXES = ("area_share.",)
RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "crashed": "FAILED", "stopped": "KILLED"}


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def log_params(run_id: str, params: dict[str, Any], uri: str) -> None:
    """All of `params`, as strings (None as 'None', like the CLI), in batches."""
    items = [Param(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for chunk in _batches(items, PARAMS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, params=chunk, synchronous=True)


def log_tags(run_id: str, tags: dict[str, Any], uri: str) -> None:
    items = [RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
    for chunk in _batches(items, PARAMS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, tags=chunk, synchronous=True)


def log_metrics(run_id: str, metrics: list, uri: str) -> None:
    """`metrics`: mlflow.entities.Metric objects, in batches."""
    for chunk in _batches(metrics, METRICS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, metrics=chunk, synchronous=True)


def metric_list(values: dict[str, float], step: int) -> list:
    """Finite numbers only: a diverged value is a status, not a point on a curve."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def final_metrics(last_epoch: dict[str, float], history: list[dict[str, float]]) -> dict:
    """`final_<name>` for the last epoch's values, plus mean throughput."""
    out = {f"final_{k}": v for k, v in last_epoch.items()
           if k != "epoch" and not k.startswith(FINAL_SKIP_PREFIXES)}
    if history:
        out["mean_samples_per_s"] = sum(h["samples_per_s"] for h in history) / len(history)
        out["epochs_done"] = float(len(history))
    return out


def log_batch(run_id: str, uri: str, params: dict[str, Any], tags: dict[str, Any],
              metrics: list) -> None:
    """Params, tags and metrics (Metric objects) in one write, within MLflow's
    limits per batch (the caller keeps to them)."""
    with_retry(client(uri).log_batch, run_id,
               params=[Param(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()],
               tags=[RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()],
               metrics=metrics, synchronous=True)


def status_tags(status: str, message: str = "") -> dict[str, str]:
    tags = {"status": status}
    if message:
        tags["status_message"] = message
    return tags


def terminate(run_id: str, status: str, uri: str) -> None:
    with_retry(client(uri).set_terminated, run_id, RUN_STATUS.get(status, "FAILED"))


def set_status(run_id: str, status: str, uri: str, message: str = "") -> None:
    """Tag `status` (completed | diverged | stopped | failed | crashed) and end the run."""
    log_tags(run_id, status_tags(status, message), uri)
    terminate(run_id, status, uri)


def start_run(uri: str, experiment_id: str, name: str, tags: dict[str, Any],
              parent_run_id: str | None = None) -> str:
    """A new run (nested under `parent_run_id` if given); returns its id."""
    tags = {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = with_retry(client(uri).create_run, experiment_id, tags=tags, run_name=name)
    return run.info.run_id
