"""`sal-ray ui`: the MLflow UI (`mlflow server`) on a run store, bound to 127.0.0.1
unless told otherwise; the store's password never reaches a command line."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys

from ..config import ConfigError
from ..tracking.store import check_readable, has_secret, is_server, redact, resolve_uri
from .options import refuses_bad_input

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

UI_EPILOG = """\
The UI binds to 127.0.0.1 by default: only this machine can open it. To reach
it from elsewhere, prefer an SSH tunnel:

    ssh -L 5000:127.0.0.1:5000 user@this-machine   # then open http://127.0.0.1:5000

To expose it deliberately, bind to all interfaces AND name the host names
clients will use: MLflow (3.17) rejects requests whose Host header is not
localhost or a private address (DNS-rebinding protection), so

    sal-ray ui --host 0.0.0.0 --allowed-hosts mlflow.example.org,10.0.0.5:5000

(--allowed-hosts is passed to `mlflow server --allowed-hosts`; wildcards like
'192.168.*' work; '*' allows all hosts and is not recommended). Cross-origin
web apps also need `--cors-allowed-origins`. The UI has no authentication:
anyone who can reach the port can read and delete runs.
"""


def register(subparsers) -> None:
    ui = subparsers.add_parser(
        "ui", help="start the MLflow UI on the local run store (127.0.0.1 by default)",
        description="Start the MLflow UI (`mlflow server`) on a run store and print its "
                    "address. Stop it with Ctrl-C.",
        epilog=UI_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ui.add_argument("--tracking-uri", default=None, metavar="URI",
                    help="backend store (default: $MLFLOW_TRACKING_URI, else "
                         "sqlite:///<cwd>/mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default: 127.0.0.1, this machine only; see below "
                         "before using 0.0.0.0)")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    ui.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                    help="comma-separated Host headers MLflow accepts, for exposing it "
                         "(mlflow server --allowed-hosts)")
    ui.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    ui.set_defaults(func=cmd_ui)


def mlflow_server_command(backend_uri: str, host: str = "127.0.0.1", port: int = 5000,
                          allowed_hosts: str | None = None, workers: int = 1) -> list[str]:
    """The `mlflow server` command line serving `backend_uri`. Runs the mlflow of
    this interpreter, so a venv's mlflow is used even when it is not on PATH. A URI
    holding a password is left out (any user can read a command line): pass
    `server_env(backend_uri)` as the server's environment instead."""
    cmd = [sys.executable, "-m", "mlflow", "server"]
    if not has_secret(backend_uri):
        cmd += ["--backend-store-uri", backend_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def server_env(backend_uri: str) -> dict[str, str]:
    """The server's environment: ours, plus the store URI when it holds a password
    (`mlflow server` reads MLFLOW_BACKEND_STORE_URI)."""
    env = dict(os.environ)
    if has_secret(backend_uri):
        env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    return env


def ui_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be served, if something already listens there; else None.
    Tried the way the server binds (SO_REUSEADDR: a port in TIME_WAIT is free), on
    every address `host` names, and released at once."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError("host", f"cannot resolve {host!r}: {e.strerror or e}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return "another server already listens there"
                if e.errno == errno.EACCES:
                    return "this user may not bind it (ports below 1024 need root)"
                if e.errno == errno.EADDRNOTAVAIL:
                    return f"{host} is not an address of this machine"
                return e.strerror or str(e)
    return None


def check_ui_args(args) -> str:
    """Refuse, before the server starts, what it would fail on (or serve wrongly);
    returns the store URI."""
    if not 1 <= args.port <= 65535:
        raise ConfigError("port", f"must be an integer from 1 to 65535; got {args.port}")
    if args.workers < 1:
        raise ConfigError("workers", f"must be an integer >= 1; got {args.workers}")
    if not args.host.strip() or any(c.isspace() for c in args.host):
        raise ConfigError("host", f"must be an interface address such as 127.0.0.1; "
                          f"got {args.host!r}")
    uri = resolve_uri(args.tracking_uri)
    if is_server(uri):
        raise ConfigError("tracking_uri", f"{redact(uri)} is already a tracking server: "
                          "open it in a browser")
    check_readable(uri)  # never serve (and create) an empty store
    # a server started on a taken port exits, or the URL printed serves another store
    taken = port_taken(args.host, args.port)
    if taken:
        raise ConfigError("port", f"{args.port} on {args.host} cannot be used: {taken}; "
                          f"choose a free one, e.g. --port {args.port + 1 if args.port < 65535 else 5000}")
    return uri


@refuses_bad_input("sal-ray ui")
def cmd_ui(args) -> int:
    uri = check_ui_args(args)
    exposed = args.host not in LOCAL_HOSTS
    if exposed and not args.allowed_hosts:
        print(f"sal-ray ui: warning: binding to {args.host} exposes the UI (no authentication) "
              "to the network; MLflow accepts only localhost and private-address Host headers "
              "unless you pass --allowed-hosts. See `sal-ray ui --help`.", file=sys.stderr)
    cmd = mlflow_server_command(uri, args.host, args.port, args.allowed_hosts, args.workers)
    print(f"MLflow UI on {ui_url(args.host, args.port)}  (store: {redact(uri)})", flush=True)
    print("Ctrl-C stops it.", flush=True)
    proc = subprocess.Popen(cmd, env=server_env(uri))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
