"""`sal-ray report` and `sal-ray ui`: read what the sweeps wrote to MLflow.

    sal-ray report --experiment sal-table2 --out reports/table2 [--sweep table2]
    sal-ray ui                        # MLflow UI on this folder's mlflow.db, 127.0.0.1:5000

`register(subparsers)` adds both commands to the main CLI; each sets `func`,
which takes the parsed args and returns an exit code. mlflow, matplotlib and
the `dashboards` package load only when a command runs, so `sal-ray train`
stays free of them.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path

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


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local store: sqlite:///<abs cwd>/mlflow.db.
    Absolute, so a subprocess started elsewhere reads the same file."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def register(subparsers) -> None:
    rep = subparsers.add_parser(
        "report", help="HTML report (Tables 2-3, figures) of sweeps, read from MLflow",
        description="Build one self-contained HTML page (plus PNGs, CSVs and summary.json) "
                    "from the runs of MLflow experiments: Table 2 accuracies, Table 3 losses, "
                    "accuracy against n_areas, depth and width, SAL against MoE, learning "
                    "curves, area usage, and Optuna search views. When the runs hang under "
                    "a sweep's parent run, the report is also logged there as artifacts "
                    "(report/report.html).")
    rep.add_argument("--experiment", action="append", required=True, metavar="NAME",
                     help="MLflow experiment name; repeat for several")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder to write the report to")
    rep.add_argument("--tracking-uri", default=None, metavar="URI",
                     help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                          "sqlite:///<cwd>/mlflow.db)")
    rep.add_argument("--sweep", default=None, metavar="NAME",
                     help="only runs tagged sweep=NAME (default: every run of the experiments)")
    rep.add_argument("--no-log", dest="log_to_parent", action="store_false",
                     help="do not log the report as artifacts of the sweep's parent run")
    rep.add_argument("--strict", action="store_true",
                     help="exit with status 1 when the report found data problems")
    rep.set_defaults(func=cmd_report)

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


# ---- report -------------------------------------------------------------------------

def import_dashboards(module: str = "report"):
    """`dashboards` is a top-level package beside `sal_ray`: installed with it by
    pyproject, or found in a source checkout next to this package."""
    name = f"dashboards.{module}"
    try:
        return importlib.import_module(name)
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        if not (root / "dashboards" / "__init__.py").exists():
            raise
        sys.path.insert(0, str(root))
        return importlib.import_module(name)


def _refuses_bad_input(prog: str):
    """Bad input (ConfigError, or the dashboards' StoreError: both ValueErrors naming
    the option) ends the command with one line on stderr and status 2."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(args) -> int:
            try:
                return fn(args)
            except ValueError as err:
                print(f"{prog}: error: {redact(str(err))}", file=sys.stderr)
                return 2
        return run
    return wrap


def redact(text: str) -> str:
    """Passwords in URIs hidden (`user:***@host`), as the dashboards show them."""
    return import_dashboards("store").redact(text)


@_refuses_bad_input("sal-ray report")
def cmd_report(args) -> int:
    from .cli import check_folder
    uri = args.tracking_uri or default_tracking_uri()
    import_dashboards("store").check_uri(uri)  # before anything is read or written
    check_folder("out", args.out)
    report = import_dashboards()
    result = report.generate(args.experiment, args.out, uri, args.sweep,
                             log_to_parent=args.log_to_parent)
    for note in result.notes:
        print(f"sal-ray report: note: {note}", file=sys.stderr)
    print(f"report: {result.path} ({result.n_runs} runs, {len(result.figures)} figures)")
    if result.logged_to:
        print("logged as artifacts 'report/' of parent run(s) " + ", ".join(result.logged_to))
    if result.empty:
        print("sal-ray report: the report is empty: no runs matched", file=sys.stderr)
        return 1
    return 1 if (args.strict and result.notes) else 0


# ---- ui -----------------------------------------------------------------------------

def has_password(uri: str) -> bool:
    return redact(uri) != uri


def mlflow_server_command(backend_uri: str, host: str = "127.0.0.1", port: int = 5000,
                          allowed_hosts: str | None = None, workers: int = 1) -> list[str]:
    """The `mlflow server` command line serving `backend_uri`. Runs the mlflow of
    this interpreter, so a venv's mlflow is used even when it is not on PATH. A URI
    holding a password is left out (any user can read a command line): pass
    `server_env(backend_uri)` as the server's environment instead."""
    cmd = [sys.executable, "-m", "mlflow", "server"]
    if not has_password(backend_uri):
        cmd += ["--backend-store-uri", backend_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def server_env(backend_uri: str) -> dict[str, str]:
    """The server's environment: ours, plus the store URI when it holds a password
    (`mlflow server` reads MLFLOW_BACKEND_STORE_URI)."""
    env = dict(os.environ)
    if has_password(backend_uri):
        env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    return env


def ui_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def check_ui_args(args) -> str:
    """Refuse, before the server starts, what it would fail on (or serve wrongly);
    returns the store URI."""
    from .config import ConfigError
    if not 1 <= args.port <= 65535:
        raise ConfigError("port", f"must be an integer from 1 to 65535; got {args.port}")
    if args.workers < 1:
        raise ConfigError("workers", f"must be an integer >= 1; got {args.workers}")
    if not args.host.strip() or any(c.isspace() for c in args.host):
        raise ConfigError("host", f"must be an interface address such as 127.0.0.1; "
                          f"got {args.host!r}")
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise ConfigError("tracking_uri", f"{redact(uri)} is already a tracking server: "
                          "open it in a browser")
    import_dashboards("store").check_uri(uri)  # never serve (and create) an empty store
    return uri


@_refuses_bad_input("sal-ray ui")
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
