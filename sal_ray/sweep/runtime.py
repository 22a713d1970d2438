"""Starting the engines: the tracking store and Ray, and keeping their console
output to what a user needs."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna
import ray

from ..config import ConfigError
from ..tracking import store
from . import ray_compat

# Tune's and Train's INFO lines repeat what our lines say
ENGINE_LOGGERS = ("ray.tune", "ray.train")


def quiet_engines_urls() -> None:
    """The driver's engine lines: no "View run at URL" per run, every log line
    redacted (tracking.store)."""
    for k, v in store.QUIET_URLS.items():
        os.environ.setdefault(k, v)
    store.redact_logs("ray", "ray.tune", "mlflow")


class EngineError(ConfigError):
    """An engine that did not start (Ray here; the store raises StoreError): one
    line naming the option, what failed and what to try."""


# Ray runs its workers at niceness 15 unless told otherwise, so on a shared machine
# every trial yields to any other process: a sweep's own local Ray runs them at 0.
NICENESS = "0"


def init_ray(address: str | None, num_cpus: int | None, echo=print) -> None:
    """Use a running Ray; else connect to `address` / $RAY_ADDRESS / a `ray start`
    cluster on this machine (that is `ray submit` on the head node); else start
    Ray locally, in-process, without its dashboard. A failure is one EngineError."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        check_reachable(address)
        how = (f"no Ray cluster answered at {address}", "check it with `ray status --address "
               f"{address}`, or leave address / RAY_ADDRESS unset to start Ray here")
        kwargs = {"address": address, **quiet}
    elif ray_compat.cluster_on_this_machine():
        how = ("the `ray start` cluster on this machine did not answer", "`ray status` "
               "says why; `ray stop` clears a stale one, and the sweep then starts its own")
        kwargs = {"address": "auto", **quiet}
    else:
        os.environ.setdefault("RAY_worker_niceness", NICENESS)  # read as the raylet starts
        how = ("a local Ray did not start", "check free space under /tmp (Ray's session "
               "folder) and `ray status`, or pass a smaller num_cpus / --num-cpus")
        kwargs = {"num_cpus": num_cpus, "include_dashboard": False, **quiet}
    warn_if_starved(echo)
    try:
        ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - any start failure: one line, not Ray's traceback
        cause = store.redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise EngineError("address", f"{how[0]} ({cause[:300]}); {how[1]}") from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """`ray.init` at an address where nothing listens retries for minutes, printing
    as it goes: ask the port first (a `host:port` or `ray://host:port` address)."""
    if address == "auto" or address == "local":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError("address", f"expected host:port, ray://host:port or 'auto'; got "
                          f"{store.redact(address)!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EngineError("address", f"no Ray cluster answers at {store.redact(address)} "
                          f"({e.strerror or e}); start one there with `ray start --head`, or "
                          "leave address / RAY_ADDRESS unset to start Ray here") from None


def warn_if_starved(echo=print) -> None:
    """Trials inherit the driver's niceness (and on a cluster, the workers' own): a
    driver started under `nice` runs every trial behind the machine's other work."""
    nice = os.nice(0)
    if nice > 0:
        echo(f"[nice] this driver runs at niceness {nice}: its local trials run behind every "
             "other process on this machine (each run's process.nice tag says so); start it "
             "without `nice` for full speed")


def on_cluster(address: str | None) -> bool:
    """Whether trials run on a cluster rather than this machine's local Ray."""
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    if ray.is_initialized():
        return len(ray.nodes()) > 1
    return ray_compat.cluster_on_this_machine()


def start_store_and_ray(uri: str, experiment: str, address, num_cpus) -> str:
    """Reach the tracking store, then start (or join) Ray; returns the experiment id.

    A server is asked before Ray starts, so a wrong address fails at once. A new
    SQLite store spends seconds on MLflow's schema migrations: once its folder is
    known to be there, that runs in a thread while Ray starts. Either way a store
    that cannot be used raises ConfigError before any trial."""
    if not store.is_sqlite(uri):
        experiment_id = store.check_store(uri, experiment)
        init_ray(address, num_cpus)
        return experiment_id
    store.check_sqlite_folder(uri)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-store") as pool:
        pending = pool.submit(store.check_store, uri, experiment)
        try:
            init_ray(address, num_cpus)
        finally:
            experiment_id = pending.result()
    return experiment_id


class QuietEngines:
    """Tune's own console output and warnings off unless verbose >= 2 (our lines say
    what happens); Optuna's per-study info lines off. Restored on exit."""

    def __init__(self, verbose: int):
        self.verbose = verbose

    def __enter__(self):
        self.optuna_level = optuna.logging.get_verbosity()
        if self.verbose < 2:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.env = {k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT", "RAY_TQDM_PATCH_PRINT")}
        os.environ["RAY_TQDM_PATCH_PRINT"] = "0"  # leave the caller's print alone
        self.levels = {n: logging.getLogger(n).level for n in ENGINE_LOGGERS}
        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        if self.verbose < 2:
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0
            for n in ENGINE_LOGGERS:
                logging.getLogger(n).setLevel(logging.ERROR)
            warnings.simplefilter("ignore", DeprecationWarning)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.optuna_level)
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)
        self.warn.__exit__(*exc)
