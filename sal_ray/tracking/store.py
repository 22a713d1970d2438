"""The tracking store: where runs go, how to reach it, and how to name it safely.

The only tracking-URI resolver (`resolve_uri`) and the only redactor (`redact`)
of the project live here; the sweep, the CLI and `dashboards/` all use them.

MLflow itself loads on first use (`client`): the CLI and the messages of every
command need `resolve_uri` and `redact` without paying for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from ..config import ConfigError
from ..fs import FileLock

# URI schemes MLflow reads runs from (a '+driver' suffix is allowed: postgresql+psycopg2).
STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql",
                 "databricks", "databricks-uc", "uc")


class StoreError(ConfigError):
    """A tracking store that cannot be used: names the option and why."""

    def __init__(self, message: str):
        super().__init__("tracking_uri", message)


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


def is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# ---- secrets never printed -------------------------------------------------------

# A URI inside any text: it ends at whitespace (a password may hold quotes).
_URI = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)(\S+)")
# What follows the '@' that ends a URI's userinfo, up to the path: a host name or an
# [IPv6] literal, and a port; prose may close it with punctuation.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%\-]+)(:\d*)?[)\].,;:!'\"]*")
# Query parameters (and key=value words) whose value is a credential.
_SECRET_KEY = r"[A-Za-z0-9_.\-]*(?:pass|pwd|secret|token|key|auth|sig|credential|session)" \
              r"[A-Za-z0-9_.\-]*"
_QUERY_SECRET = re.compile(rf"([?&;]{_SECRET_KEY}=)[^&;#]*", re.IGNORECASE)
_WORD_SECRET = re.compile(r"(?<![\w?&;])((?:password|passwd|pwd|secret|token)=)\S+",
                          re.IGNORECASE)


def _userinfo_end(rest: str) -> int | None:
    """Where the userinfo of `rest` (a URI after its '://') ends: the '@' before
    the host, or None. A password may hold '@', ':', '/', '?' or '#', so: the
    last '@' with none of '/?#' before it; else the first '@' after a 'user:'
    (a password holding '/', '?' or '#'). When unsure, more is hidden, never less:
    `http://host:80/p?mail=a@b` shows as `http://host:***@b`."""
    ats = [i for i, c in enumerate(rest) if c == "@"
           and _HOST.fullmatch(re.split(r"[/?#]", rest[i + 1:], maxsplit=1)[0])]
    plain = [i for i in ats if not re.search(r"[/?#]", rest[:i])]
    if plain:
        return plain[-1]
    for i in ats:
        if ":" in re.split(r"[/?#]", rest[:i], maxsplit=1)[0]:
            return i
    return None


def _redact_uri(match: re.Match) -> str:
    scheme, rest = match.group(1), match.group(2)
    end = _userinfo_end(rest)
    if end is not None:
        user, colon, _ = rest[:end].partition(":")
        # 'user:password' keeps the user; a lone userinfo is a token: all of it goes
        shown = f"{user}:***" if colon and user else "***"
        rest = shown + rest[end:]
    return scheme + _QUERY_SECRET.sub(r"\1***", rest)


def redact(text) -> str:
    """`text` with every credential a URI can carry hidden: the password of
    `user:password@`, a token standing alone as `token@`, and the values of
    query parameters named like secrets (`?password=`, `&token=`, `X-Amz-
    Signature=`, ...); also `password=...` words outside URIs. Hosts, ports,
    paths and everything else stay readable."""
    text = _URI.sub(_redact_uri, str(text))
    return _WORD_SECRET.sub(r"\1***", text)


def has_secret(uri: str) -> bool:
    return redact(uri) != uri


# A store URI holding a secret travels only in the environment of the processes
# that need it: `split_secret` gives the public form that everything else sees
# (params, tags, messages, checkpoints, Tune's state) and the variables that let
# a process reach the store by it (`client` puts the secret back).
SECRET_URI_ENV = "SAL_RAY_TRACKING_URI"


def split_secret(uri: str) -> tuple[str, dict[str, str]]:
    """(public URI, environment). A server's `user:password@` or `token@` goes to
    MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD (basic auth), so even MLflow's
    messages name the server only; any other secret (a database password, a
    signed query) keeps the whole URI in $SAL_RAY_TRACKING_URI and the public form
    is the redacted one."""
    if not has_secret(uri):
        return uri, {}
    scheme, _, rest = uri.partition("://")
    end = _userinfo_end(rest)
    if is_server(uri) and end is not None and not has_secret(f"{scheme}://{rest[end + 1:]}"):
        user, _, password = rest[:end].partition(":")
        return f"{scheme}://{rest[end + 1:]}", {"MLFLOW_TRACKING_USERNAME": unquote(user),
                                                "MLFLOW_TRACKING_PASSWORD": unquote(password)}
    return redact(uri), {SECRET_URI_ENV: uri}


def real_uri(uri: str) -> str:
    """The URI to hand MLflow for `uri`: a public form of a secret URI (split_secret)
    becomes the secret one again, from this process's environment."""
    if "***" not in uri:
        return uri
    secret = os.environ.get(SECRET_URI_ENV, "")
    if secret and redact(secret) == uri:
        return secret
    raise StoreError(f"{uri} hides a credential that this process was not given "
                     f"(${SECRET_URI_ENV}): pass the full URI where the sweep starts")


class RedactingFilter(logging.Filter):
    """Redacts every record a handler emits (the engines' own lines included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, None
        return True


def redact_logs(*loggers: str) -> None:
    """Put a RedactingFilter on the handlers of the root logger and of `loggers`
    (Ray and MLflow attach their own), once each."""
    for name in ("", *loggers):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store (bound to localhost)."""
    if is_server(uri):
        return f"open {redact(uri)} in a browser"
    shown = redact(uri)
    if shown != uri:  # never print a password; the user puts it back
        return (f"mlflow ui --backend-store-uri '{shown}' --host 127.0.0.1 --port 5000 "
                "(with the store's password in place of ***)")
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


# ---- checks made before any work ----------------------------------------------------

def check_sqlite_folder(uri: str) -> None:
    """The folder of a SQLite store must exist and be writable (checked in an instant)."""
    folder = Path(uri[len("sqlite:///"):]).parent
    if not folder.is_dir():
        raise StoreError(f"cannot reach the MLflow store {redact(uri)}: "
                         f"folder {folder} does not exist; create it, or pass another "
                         "tracking URI (--tracking-uri)")
    if not os.access(folder, os.W_OK):
        raise StoreError(f"cannot write the MLflow store {redact(uri)}: "
                         f"folder {folder} is not writable; pass a tracking URI in a folder "
                         "you can write (--tracking-uri)")


def check_readable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise StoreError, at once, when `uri` cannot hold runs to read: an unknown
    scheme, a SQLite file or store folder that does not exist (a report or the UI
    must never create an empty store), a server nothing answers on. Reads nothing."""
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"must be a non-empty URI; got {uri!r}")
    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc", "uc"):
        return  # a hosted service: its client says what is wrong
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme.split("+", 1)[0] not in STORE_SCHEMES:
        raise StoreError(f"unknown scheme '{scheme}' in {redact(uri)}; known: "
                         + ", ".join(STORE_SCHEMES))
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise StoreError(f"{redact(uri)} names no database file (sqlite:///<path>)")
        if not Path(path).is_file():
            raise StoreError(f"no MLflow store at {path}: the file does not exist (run a "
                             "sweep first, or pass the store's URI)")
    elif scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme else uri).expanduser()
        if not folder.is_dir():
            raise StoreError(f"no MLflow store at {folder}: the folder does not exist")
    elif scheme in ("http", "https"):
        parts = urlsplit(uri)
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise StoreError(f"bad port in {redact(uri)}") from None
        if not parts.hostname:
            raise StoreError(f"{redact(uri)} names no host")
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        except OSError as e:
            raise StoreError(f"cannot reach the MLflow server {redact(uri)}: "
                             f"{e.strerror or e}; start it (`mlflow server --host "
                             f"{parts.hostname} --port {port}`) or check the address") from None


# ---- talking to it -------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One client per store and process: building a SQLite store checks its schema,
    which costs more than a Digits epoch."""
    from mlflow import MlflowClient  # mlflow loads here, on first use (see module doc)
    return MlflowClient(tracking_uri=real_uri(uri))


def with_retry(fn: Callable, *args, attempts: int = 8, **kwargs):
    """SQLite under several writing processes can answer "database is locked"
    (docs/engines.md): retry with jittered back-off; anything else is raised at once."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(0.1 * 2 ** i * (0.5 + random.random()))


class quick_http:
    """Within: an HTTP store is asked once, without MLflow's retries (which back off
    for minutes on a wrong or dead address). Only for a server: the environment is
    the process's, and Ray may be starting workers from it concurrently (see
    sweep.runtime.start_store_and_ray)."""

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


# MLflow prints "View run ... at: URL" each time a run on a server ends: one per
# seed of every trial, and the driver's own; the sweep prints the UI address once.
QUIET_URLS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


# A training process talks to an HTTP store with few retries and a short timeout:
# a write the store does not take waits in the run's outbox, so MLflow's own
# retries (minutes of back-off by default) would only stall training.
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", **QUIET_URLS}


def fail_fast_http() -> None:
    """Set FAIL_FAST_HTTP in this process unless the user set those variables."""
    for k, v in FAIL_FAST_HTTP.items():
        os.environ.setdefault(k, v)


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store go next to the database, one folder per
    experiment, as an absolute URI (MLflow would otherwise use the cwd of the
    process that created the experiment)."""
    if is_sqlite(uri):
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / folder).resolve().as_uri()
    return None


def _get_experiment(uri: str, experiment: str) -> str:
    c = client(uri)
    found = with_retry(c.get_experiment_by_name, experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ConfigError("experiment", f"experiment '{experiment}' is deleted in "
                              f"{redact(uri)}; restore it or pick another name")
        return found.experiment_id
    return with_retry(c.create_experiment, experiment,
                      artifact_location=_artifact_root(uri, experiment))


def _creation_lock(uri: str):
    """SQLite: one process at a time creates a new store's tables (two drivers
    starting at once would otherwise race MLflow's schema migration)."""
    if not is_sqlite(uri):
        return contextlib.nullcontext()
    return FileLock(uri[len("sqlite:///"):] + ".lock", wait_s=300.0)


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
        with quick_http(uri), _creation_lock(uri):
            return _get_experiment(uri, experiment)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot use this store"
        client.cache_clear()
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"cannot reach the MLflow store {redact(uri)}: "
                         f"{redact(reason)[:300]}; check that its server runs at this "
                         "address, or that the database file is an MLflow store") from None
