"""The only place the sweep touches Ray internals. Each use says why no public
API serves, and which Ray versions it was checked against; `tests/test_ray_compat.py`
fails when an installed Ray no longer has what these need.

Checked against Ray 2.52 to 2.60 (pyproject admits >=2.52,<2.61).
"""

from __future__ import annotations

from ray._private.services import find_bootstrap_address


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
