"""Can the cluster place one trial at all? Asked once Ray is up, before the parent
run or any trial exists.

Ray never refuses a request no node can meet: the trial stays PENDING and the
autoscaler logs "No available node types can fulfill" every few seconds, for
ever (a GPU share on a cluster without GPUs waited 8 minutes before anyone
noticed). So one trial's request (or, with workers, one worker's request times
the workers) is compared with the nodes the cluster has and the node types its
autoscaler can start, and a request that cannot be met stops the sweep with
one line naming the resource and the option that sets it.

Only what can never fit is refused: trials that merely wait for others to
finish, or for the autoscaler to start a node, are what Ray is for.
"""

from __future__ import annotations

import math
from typing import Callable

import ray

from ..config import ConfigError
from . import ray_compat

# tune()'s resources keys -> Ray's resource names
RAY_NAME = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
# the options that set each, as a study script's flag and as tune()'s argument
OPTION = {"CPU": "--cpus-per-trial (resources['cpu'])",
          "GPU": "--gpus-per-trial (resources['gpu'])",
          "workers": "--workers-per-trial (resources['workers'])"}
HEAD_MARK = "node:__internal_head__"  # the resource Ray gives the head node only


def request(resources: dict) -> tuple[dict[str, float], int]:
    """What one trial asks of one node (per worker, with workers), and how many."""
    bundle = {RAY_NAME.get(k, k): float(v) for k, v in resources.items()
              if k != "workers" and v}
    return bundle, int(resources.get("workers", 1))


def nodes_at_most(alive: list[dict], node_types: list[dict] | None) -> list[dict] | None:
    """The nodes of the biggest cluster the autoscaler can make: the head as it
    runs, plus every worker type at its maximum count; without an autoscaler,
    the nodes alive now. None when it cannot be known: a node type whose
    resources are learnt from its first node (on premise), with nodes still to
    join."""
    if not node_types:
        return list(alive)
    heads = [n for n in alive if n.get(HEAD_MARK)]
    workers = [t for t in node_types if not t["head"]]
    if any(t["resources"] is None for t in workers):
        # all listed machines joined: the nodes alive are the whole cluster
        expected = len(heads) + sum(t["max_count"] for t in workers)
        return list(alive) if len(alive) >= expected else None
    return heads + [dict(t["resources"]) for t in workers for _ in range(t["max_count"])]


def slots(bundle: dict[str, float], nodes: list[dict], only: str | None = None) -> int:
    """How many copies of `bundle` the nodes hold at once (only one resource
    counted: `only`)."""
    keys = [only] if only else list(bundle)
    total = 0
    for node in nodes:
        fits = [math.floor(node.get(k, 0.0) / bundle[k] + 1e-9) for k in keys]
        total += min(fits) if fits else 1
    return total


def refusal(resources: dict, alive: list[dict], node_types: list[dict] | None) -> str | None:
    """Why one trial can never be placed (one line), or None when it can (or when
    what the cluster can become is unknown)."""
    bundle, workers = request(resources)
    most = nodes_at_most(alive, node_types)
    if most is None or not bundle:
        return None
    both = [list(alive), most]
    if max(slots(bundle, n) for n in both) >= workers:
        return None
    scope = ("the cluster's nodes and the node types its autoscaler can start" if node_types
             else "the cluster's nodes (it has no autoscaler)")
    # the resource that binds: the one that fits fewest times on its own
    key = min(bundle, key=lambda k: max(slots(bundle, n, k) for n in both))
    fit_alone = max(slots(bundle, n, key) for n in both)
    largest = max([n.get(key, 0.0) for n in most + list(alive)], default=0.0)
    what = "a trial" if workers == 1 else "each of a trial's workers"
    option = OPTION.get(key, f"resources[{key!r}]")
    if fit_alone >= workers:  # each fits alone, never together on one node
        names = " and ".join(f"{bundle[k]:g} {k}" for k in bundle)
        return (f"{what} asks for {names} on one node, but none of {scope} has them "
                "together; lower one of " + ", ".join(OPTION.get(k, f"resources[{k!r}]")
                                                      for k in bundle))
    if fit_alone == 0:
        return (f"{what} asks for {bundle[key]:g} {key}, but none of {scope} has "
                + ("any" if largest == 0 else f"more than {largest:g}")
                + f"; set {option} to {'0' if largest == 0 else f'at most {largest:g}'}")
    return (f"a trial asks for {workers} workers with {bundle[key]:g} {key} each, but "
            f"{scope} hold at most {fit_alone} such workers at once; set "
            f"{OPTION['workers']} to at most {fit_alone}, or lower {option}")

def check(resources: dict, echo: Callable) -> None:
    """Raise ConfigError('resources', ...) when one trial can never be placed on
    the cluster Ray is connected to."""
    alive = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    node_types = ray_compat.autoscaler_node_types()
    why = refusal(resources, alive, node_types)
    if why is not None:
        raise ConfigError("resources", why)
    if node_types and nodes_at_most(alive, node_types) is None:
        echo("placement: not checked, the cluster's machines have not all joined yet "
             "(`ray status` lists them); a trial no node can hold waits for ever")
