"""The paper's published numbers in the shape the report uses.

The numbers themselves, all ten datasets of Tables 2 and 3 (arXiv 2601.21561)
with their standard deviations, live in `sal_ray/paper.py`; this module
re-exports them for dashboards/: ACCURACY (Table 2, validation accuracy %,
{dataset: {column: (mean, std)}}), DATASET_ORDER, PROTOCOL, PROTOCOL_SEEDS,
and LOSSES, Table 3 as the report's loss table shows it.
"""

from __future__ import annotations

import importlib.util
import sys


def _load_sal_ray_paper():
    """sal_ray.paper without running sal_ray/__init__.py.

    sal_ray/paper.py imports only the standard library, but `import
    sal_ray.paper` first runs the package's __init__, which loads torch and
    the trainer, and dashboards/ never does (tests/test_dashboard_report.py).
    find_spec on the top-level package locates it without executing it; the
    one file is then run on its own."""
    if "sal_ray.paper" in sys.modules:  # already imported by a process that trains
        return sys.modules["sal_ray.paper"]
    package = importlib.util.find_spec("sal_ray")
    if package is None or not package.submodule_search_locations:
        raise ImportError("dashboards needs the sal_ray package beside it (sal_ray/paper.py)")
    path = f"{list(package.submodule_search_locations)[0]}/paper.py"
    spec = importlib.util.spec_from_file_location("dashboards._sal_ray_paper", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


_paper = _load_sal_ray_paper()

ACCURACY = _paper.ACCURACY
DATASET_ORDER = _paper.DATASET_ORDER
PROTOCOL = _paper.PROTOCOL
PROTOCOL_SEEDS = _paper.PROTOCOL_SEEDS

# {dataset: {column: (train loss mean, validation loss mean)}}; the stds are in
# sal_ray.paper.TRAIN_LOSS / VAL_LOSS.
LOSSES = {ds: {c: (train[0], _paper.VAL_LOSS[ds][c][0]) for c, train in cols.items()}
          for ds, cols in _paper.TRAIN_LOSS.items()}

__all__ = ["ACCURACY", "DATASET_ORDER", "LOSSES", "PROTOCOL", "PROTOCOL_SEEDS"]
