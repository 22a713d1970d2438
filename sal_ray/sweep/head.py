"""How to open the MLflow UI, said from where the driver runs.

After `ray submit` the sweep runs on the cluster's head, and its tracking URI
names the head's private address (the workers log to it): a laptop cannot open
that. On a launcher's head (`ray up` left its config there) the sweep's last
hint is a command to run on the laptop instead: `ray attach -p PORT` (or an SSH
tunnel) forwards the laptop's 127.0.0.1:PORT to the head's server, whose
allowed hosts admit localhost on any port (ray_cluster.yaml, docs/cluster.md).
Anywhere else, or for a server on another machine, the URI itself is the hint.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from ..tracking import store
from . import ray_compat

CLUSTER_YAML = "CLUSTER.yaml"  # the laptop's path is not known on the head


def is_this_machine(host: str | None) -> bool:
    """Whether `host` is an address of this machine: only those can be bound."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
            return True
        except OSError:
            continue
    return False


def ui_hint(uri: str, launcher: dict | None) -> str:
    """The command that opens the MLflow UI on `uri`, from the user's laptop when
    the driver runs on the head of cluster `launcher` (ray_compat.launcher_config)."""
    if launcher is None:
        return store.ui_command(uri)
    cluster = launcher.get("cluster_name", "?")
    user = (launcher.get("auth") or {}).get("ssh_user", "USER")
    yaml = f"{CLUSTER_YAML} (the config you ran `ray up` with, cluster '{cluster}')"
    if store.is_server(uri):
        parts = urlsplit(uri)
        if not is_this_machine(parts.hostname):
            return store.ui_command(uri)  # a server of its own: its address is the way
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return (f"from your laptop, `ray attach {yaml} -p {port}` and open "
                f"{parts.scheme}://127.0.0.1:{port}; or `ssh -L {port}:localhost:{port} "
                f"{user}@HEAD` and the same address")
    return (f"from your laptop, `ray attach {yaml} -p 5000`, in that shell "
            f"`{store.ui_command(uri)}`, and open http://127.0.0.1:5000; or bring the "
            f"store home first: scripts/fetch_results.sh {CLUSTER_YAML}")


def ui_command(uri: str) -> str:
    """`ui_hint` for where this process runs."""
    return ui_hint(uri, ray_compat.launcher_config())
