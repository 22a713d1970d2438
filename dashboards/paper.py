"""The paper's published numbers in the shape the report uses.

The numbers themselves, all ten datasets of Tables 2 and 3 (arXiv 2601.21561)
with their standard deviations, live in `sal_ray/paper.py`; this module
re-exports them for dashboards/: ACCURACY (Table 2, validation accuracy %,
{dataset: {column: (mean, std)}}), DATASET_ORDER, PROTOCOL, PROTOCOL_SEEDS,
and LOSSES, Table 3 as the report's loss table shows it.
"""

from __future__ import annotations

import sal_ray.paper as _paper  # stdlib only: `import sal_ray` loads no torch

ACCURACY = _paper.ACCURACY
DATASET_ORDER = _paper.DATASET_ORDER
PROTOCOL = _paper.PROTOCOL
PROTOCOL_SEEDS = _paper.PROTOCOL_SEEDS

# {dataset: {column: (train loss mean, validation loss mean)}}; the stds are in
# sal_ray.paper.TRAIN_LOSS / VAL_LOSS.
LOSSES = {ds: {c: (train[0], _paper.VAL_LOSS[ds][c][0]) for c, train in cols.items()}
          for ds, cols in _paper.TRAIN_LOSS.items()}

__all__ = ["ACCURACY", "DATASET_ORDER", "LOSSES", "PROTOCOL", "PROTOCOL_SEEDS"]
