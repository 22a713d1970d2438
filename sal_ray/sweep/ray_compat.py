"""The only place the sweep touches Ray internals. Each use says why no public
API serves, and which Ray versions it was checked against; `tests/test_ray_compat.py`
fails when an installed Ray no longer has what these need.

Checked against Ray 2.52 to 2.60 (pyproject admits >=2.52,<2.61).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml  # a dependency of Ray itself
from ray._private.services import find_bootstrap_address
from ray._private.state import state

# `ray up` writes the autoscaler's copy of the cluster config here on the head (the
# head's `ray start --autoscaling-config` reads it; Tune's cluster_info looks for it
# too). No public API names the node types the autoscaler may start.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def cluster_on_this_machine() -> bool:
    """Whether `ray start` runs a cluster on this machine (as on a `ray submit`
    head node), asked before Ray is initialised: the sweep's defaults (GPU shares,
    checking data locally) depend on it. `ray.init(address="auto")` would answer
    by connecting; this only reads the address file Ray writes."""
    return find_bootstrap_address(None) is not None


def replace_callbacks(tuner, callbacks: list, stop=None) -> None:
    """A restored Tuner runs the callbacks (and stopper) pickled at the sweep's
    first start; `Tuner.restore` takes no run config, so this session's, which
    hold this session's console and results, replace those copies here."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = list(callbacks)
    if stop is not None:
        run_config.stop = stop


def restored_search_alg(tuner):
    """The searcher a restored Tuner unpickled (inside Tune's wrappers)."""
    alg = tuner._local_tuner._tune_config.search_alg
    for attr in ("searcher", "_searcher"):
        alg = getattr(alg, attr, alg)
    return alg


def launcher_config() -> dict | None:
    """The cluster config `ray up` left on this machine, when it is a launcher's
    head (where `ray submit` runs the sweep); None elsewhere or when unreadable."""
    path = Path(os.path.expanduser(BOOTSTRAP_CONFIG))
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # none, or torn: no config
        return None
    return config if isinstance(config, dict) else None


def autoscaler_node_types() -> list[dict] | None:
    """The node types the cluster's autoscaler may start, each {"name", "resources"
    (None: learnt only once a node of it runs), "max_count", "head"}; None when no
    autoscaler config is known (a local Ray, `ray start` by hand).

    Two places, no public API for either: the cluster config the autoscaler reports
    to the GCS (autoscaler v2, KubeRay; Ray Train reads it the same way before it
    places workers), else the launcher's config file on the head (autoscaler v1,
    `ray up`)."""
    types = _gcs_node_types()
    if types is not None:
        return types
    config = launcher_config()
    if config is None or not isinstance(config.get("available_node_types"), dict):
        return None
    cap = config.get("max_workers")
    out = []
    for name, spec in config["available_node_types"].items():
        head = name == config.get("head_node_type")
        count = 1 if head else spec.get("max_workers", cap if cap is not None else 0)
        if cap is not None and not head:
            count = min(count, cap)
        resources = spec.get("resources") or None  # {}: detected when the node starts
        out.append({"name": name, "resources": resources, "max_count": int(count), "head": head})
    return out


def _gcs_node_types() -> list[dict] | None:
    try:
        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not connected, or a Ray without it
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{"name": g.name, "resources": dict(g.resources) or None,
             # -1: no upper bound
             "max_count": 10 ** 6 if g.max_count == -1 else int(g.max_count), "head": False}
            for g in config.node_group_configs]
