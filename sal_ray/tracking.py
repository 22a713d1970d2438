"""The MLflow sink: one MLflow run per training run, behind the trainer's `Callback`.

    fit(cfg, [MLflowRun(uri, experiment_id, parent_run_id=sweep_run)])

Layout (the naming contract the dashboards read, docs/sweeps.md): one parent run
per sweep, one child run per training run (per seed), tagged `dataset`,
`method`, `sweep`, `status`; parameters under the bare option names plus the
derived facts of `Run.params()`; per-epoch metrics at step = epoch; `final_*`
metrics when a run completes.

MLflow is imported lazily, inside the functions, so the core never needs it.
Everything here talks to the store through `MlflowClient` (never the fluent
`mlflow.start_run` stack): Ray reuses worker processes across trials, and a
process-global "active run" would leak from one trial into the next.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import random
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import ConfigError
from .train import Callback, Run, RunResult

# MLflow's own batch limits (mlflow.utils.validation): 100 params or tags, 1000
# metrics per log_batch; a param value holds at most 6000 characters.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
# Per-epoch metrics are buffered and written at most this often (and at the end):
# one SQLite transaction per epoch per run would cost more than a Digits epoch.
FLUSH_EVERY_S = 5.0
# Final metrics: the last epoch's values under final_*, except the per-area shares
# (those stay per-epoch histories; areas_used.* gets its final_ twin).
FINAL_SKIP_PREFIXES = ("area_share.",)
RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "crashed": "FAILED", "stopped": "KILLED"}
LIBRARIES = ("torch", "numpy", "ray", "optuna", "mlflow", "scikit-learn", "pandas")


# ---- where the runs go ---------------------------------------------------------

def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use, absolute: `uri`, else $MLFLOW_TRACKING_URI, else a
    SQLite store `mlflow.db` in the current directory.

    Ray workers change directory into their trial folder, so a relative SQLite
    path (MLflow's own default is `sqlite:///mlflow.db`) would point somewhere
    else in every worker: it is made absolute here, once, on the driver.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not os.path.isabs(path):
            uri = f"sqlite:///{Path(path).resolve()}"
    elif "://" not in uri:  # a bare folder: MLflow's file store (needs opting in from 3.13)
        uri = str(Path(uri).resolve())
    return uri


def redact(uri: str) -> str:
    """The URI without a password, for messages and logs."""
    # up to the last '@' before the host: a password may hold an '@' itself
    return re.sub(r"://([^:/@]+):[^/]*@", r"://\1:***@", uri)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store (bound to localhost)."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} in a browser"
    shown = redact(uri)
    if shown != uri:  # never print a password; the user puts it back
        return (f"mlflow ui --backend-store-uri '{shown}' --host 127.0.0.1 --port 5000 "
                "(with the store's password in place of ***)")
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One client per store and process: building a SQLite store checks its schema,
    which costs more than a Digits epoch."""
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _sqlite_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store go next to the database, one folder per
    experiment, as an absolute URI (MLflow would otherwise use the cwd of the
    process that created the experiment)."""
    if uri.startswith("sqlite:///"):
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / folder).resolve().as_uri()
    return None


def is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def check_sqlite_folder(uri: str) -> None:
    """The folder of a SQLite store must exist and be writable (checked in an instant)."""
    folder = Path(uri[len("sqlite:///"):]).parent
    if not folder.is_dir():
        raise ConfigError("tracking_uri", f"cannot reach the MLflow store {uri}: "
                          f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError("tracking_uri", f"cannot write the MLflow store {uri}: "
                          f"folder {folder} is not writable")


def check_store(uri: str, experiment: str) -> str:
    """Reach the store and get (or create) `experiment`; returns its id.

    Raises ConfigError('tracking_uri' or 'experiment') with the reason, before any
    trial starts. An HTTP server is asked once, without MLflow's retries (which
    back off for minutes on a wrong address).
    """
    if not experiment or not isinstance(experiment, str):
        raise ConfigError("experiment", f"must be a non-empty name; got {experiment!r}")
    if is_sqlite(uri):
        check_sqlite_folder(uri)
    try:
        with quick_http(uri):
            return _get_experiment(uri, experiment)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot use this store"
        client.cache_clear()
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("tracking_uri", f"cannot reach the MLflow store {redact(uri)}: "
                          f"{redact(reason)[:300]}") from None


class quick_http:
    """Within: an HTTP store is asked once, without MLflow's retries (which back off
    for minutes on a wrong or dead address). Only for a server: the environment is
    the process's, and Ray may be starting workers from it concurrently (see
    sweep._store_and_ray)."""

    def __init__(self, uri: str):
        self.quick = {} if is_sqlite(uri) else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.quick}
        os.environ.update(self.quick)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _get_experiment(uri: str, experiment: str) -> str:
    c = client(uri)
    found = with_retry(c.get_experiment_by_name, experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ConfigError("experiment", f"experiment '{experiment}' is deleted in "
                              f"{redact(uri)}; restore it or pick another name")
        return found.experiment_id
    return with_retry(c.create_experiment, experiment,
                      artifact_location=_sqlite_artifact_root(uri, experiment))


# A training process talks to an HTTP store with few retries and a short timeout:
# a write the store does not take waits in the run's outbox, so MLflow's own
# retries (minutes of back-off by default) would only stall training.
# (MLflow also prints a "View run ... at: URL" line each time a run on a server
# ends: one per seed of every trial; the sweep prints the UI address once instead.)
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def fail_fast_http() -> None:
    """Set FAIL_FAST_HTTP in this process unless the user set those variables."""
    for k, v in FAIL_FAST_HTTP.items():
        os.environ.setdefault(k, v)


def with_retry(fn: Callable, *args, attempts: int = 8, **kwargs):
    """SQLite under several writing processes can answer "database is locked"
    (PITFALLS): retry with jittered back-off; anything else is raised at once."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(0.1 * 2 ** i * (0.5 + random.random()))


# ---- what every run records besides its options ------------------------------

@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git commit of the checkout `sal_ray` runs from, and whether it has
    uncommitted changes to tracked files; 'unknown' outside a checkout."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True,
                              text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            raise OSError(head.stderr)
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"git_commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    """Library versions and hardware, as tags. Nothing from os.environ: that is
    where credentials live."""
    out = {f"version.{name}": _version(name) for name in LIBRARIES}
    out["version.sal_ray"] = _version("sal_ray")
    out["version.python"] = platform.python_version()
    out["hw.platform"] = platform.platform()
    out["hw.cpu"] = _cpu_model()
    out["hw.cpu_count"] = str(os.cpu_count())
    try:
        import torch
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["hw.gpu"] = ", ".join(names)
            out["version.cuda"] = str(torch.version.cuda)
        else:
            out["hw.gpu"] = "none"
    except Exception:  # noqa: BLE001 - hardware probing must never fail a run
        out["hw.gpu"] = "unknown"
    return out


def run_tags() -> dict[str, str]:
    """Code version and environment; `mlflow.source.git.commit` is what the UI shows."""
    code = code_version()
    return {**code, "mlflow.source.git.commit": code["git_commit"], **environment()}


# ---- writing --------------------------------------------------------------------

def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def log_params(run_id: str, params: dict[str, Any], uri: str) -> None:
    """All of `params`, as strings (None as 'None', like the CLI), in batches."""
    from mlflow.entities import Param
    items = [Param(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for chunk in _batches(items, PARAMS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, params=chunk, synchronous=True)


def log_tags(run_id: str, tags: dict[str, Any], uri: str) -> None:
    from mlflow.entities import RunTag
    items = [RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
    for chunk in _batches(items, PARAMS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, tags=chunk, synchronous=True)


def log_metrics(run_id: str, metrics: list, uri: str) -> None:
    """`metrics`: mlflow.entities.Metric objects, in batches."""
    for chunk in _batches(metrics, METRICS_PER_BATCH):
        with_retry(client(uri).log_batch, run_id, metrics=chunk, synchronous=True)


def metric_list(values: dict[str, float], step: int) -> list:
    """Finite numbers only: a diverged value is a status, not a point on a curve."""
    import math

    from mlflow.entities import Metric
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


def set_status(run_id: str, status: str, uri: str, message: str = "") -> None:
    """Tag `status` (completed | diverged | stopped | failed | crashed) and end the run."""
    tags = {"status": status}
    if message:
        tags["status_message"] = message
    log_tags(run_id, tags, uri)
    with_retry(client(uri).set_terminated, run_id, RUN_STATUS.get(status, "FAILED"))


def start_run(uri: str, experiment_id: str, name: str, tags: dict[str, Any],
              parent_run_id: str | None = None) -> str:
    """A new run (nested under `parent_run_id` if given); returns its id."""
    tags = {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = with_retry(client(uri).create_run, experiment_id, tags=tags, run_name=name)
    return run.info.run_id


class MLflowRun(Callback):
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
                 outbox=None, fail_fast: bool = False):
        from .outbox import Outbox
        self.uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.run_name, self.tags = run_name, dict(tags or {})
        self.extra_params = dict(extra_params or {})
        self.flush_every_s = flush_every_s
        self.key = key or uuid.uuid4().hex
        self.outbox = outbox if outbox is not None else Outbox(tracking_uri, experiment_id)
        self.fail_fast = fail_fast  # fail_fast_http() in the process that trains
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
        training); a run the outbox already knows is taken up again instead."""
        if self.outbox.knows(self.key):
            self.outbox.reopen(self.key)
        else:
            tags = {"dataset": params.get("dataset"), "method": params.get("method"),
                    "status": "running", **run_tags(), **self.tags}
            self.outbox.create(self.key, self.run_name or default_name(params), tags,
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
        self.flush(force=True)

    def state_for_caller(self) -> dict:
        """What is still undelivered, for the process that started this sink in a
        worker (`Outbox.absorb` there): a worker's memory ends with it."""
        return {"ops": self.outbox.ops, "run_ids": self.outbox.run_ids}

    def close(self, status: str, message: str = "") -> None:
        """End the run as `status` unless already ended; never raises (it runs on
        the way out of a failing trial, where the original error matters more)."""
        if self.status is not None or not self.opened:
            return
        self.status = status
        self.outbox.end(self.key, status, message)
        try:
            self.flush(force=True)
        except Exception:  # noqa: BLE001
            pass


def default_name(params: dict[str, Any], searched: Iterable[str] = ()) -> str:
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
