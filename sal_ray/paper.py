"""The SAL paper's published results: Tables 2 and 3 for all ten datasets.

Source: Liu, Yang & Zou, "SAL: Selective Adaptive Learning", arXiv 2601.21561,
Table 2 (final validation accuracy %, mean ± std over five seeds) and Table 3
(final training and validation loss, mean ± std over five seeds), under the
Convergence protocol (`PROTOCOL`). Baseline is BP on the same architecture;
SAL-N is SAL with n_areas = N.

These are published figures, shown beside ours in reports and by
benchmarks/reproduce.py. They are not targets: no option, default or test is
tuned toward them. Pure data and lookups; imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

# The tables' columns, in the paper's order.
COLUMNS = ("Baseline", "SAL-1", "SAL-2", "SAL-4", "SAL-8", "SAL-16")

# The ten benchmarks in the order of the paper's Table 1 (the order of
# sal_ray.config.DATASETS), in which the report lists its rows.
DATASET_ORDER = ("cifar10", "pcam", "stl10", "svhn", "mnist", "fashion_mnist",
                 "digits", "usps", "semeion", "fer2013")

# The Convergence protocol those numbers came from: two layers d_in -> 256 -> C,
# ReLU, SGD lr 1e-4, batch 16, 25 epochs, five seeds, final-epoch values.
PROTOCOL = {"arch": "mlp", "depth": 2, "width": 256, "lr": 1e-4, "batch_size": 16,
            "epochs": 25}
PROTOCOL_SEEDS = 5

# One row per dataset, one (mean, std) per column of COLUMNS, as printed.
_TABLE2_ACCURACY = {  # Baseline  SAL-1  SAL-2  SAL-4  SAL-8  SAL-16
    "cifar10": ((30.81, 0.24), (33.90, 0.26), (34.46, 0.27), (35.30, 0.39), (36.20, 0.19), (36.60, 0.48)),
    "digits": ((38.53, 5.78), (36.36, 3.04), (35.11, 8.05), (53.59, 8.37), (65.65, 4.92), (71.63, 5.75)),
    "fer2013": ((36.51, 0.41), (38.05, 0.25), (38.67, 0.23), (40.05, 0.24), (40.73, 0.42), (40.46, 0.20)),
    "fashion_mnist": ((81.76, 0.16), (84.16, 0.11), (84.92, 0.24), (85.40, 0.21), (85.60, 0.19), (86.20, 0.37)),
    "mnist": ((90.64, 0.18), (93.02, 0.11), (93.48, 0.23), (94.17, 0.36), (94.45, 0.17), (94.71, 0.32)),
    "pcam": ((69.18, 0.27), (69.52, 0.36), (66.92, 0.34), (65.44, 0.47), (65.01, 0.61), (64.83, 0.27)),
    "stl10": ((29.06, 0.12), (29.82, 0.29), (30.07, 0.49), (30.42, 0.11), (30.19, 0.30), (29.01, 0.52)),
    "svhn": ((47.08, 1.05), (66.38, 0.32), (66.73, 0.39), (67.04, 0.46), (66.85, 1.39), (68.69, 1.26)),
    "semeion": ((35.16, 2.72), (51.00, 6.81), (62.56, 6.36), (65.20, 4.43), (67.20, 3.30), (72.03, 3.97)),
    "usps": ((81.74, 1.12), (87.07, 0.27), (86.85, 0.52), (87.90, 0.56), (88.70, 0.51), (89.36, 0.73)),
}

_TABLE3_TRAIN_LOSS = {  # Baseline  SAL-1  SAL-2  SAL-4  SAL-8  SAL-16
    "cifar10": ((1.94, 0.00), (1.90, 0.00), (1.87, 0.00), (1.81, 0.00), (1.70, 0.00), (1.53, 0.01)),
    "digits": ((1.81, 0.14), (2.22, 0.01), (2.19, 0.02), (2.06, 0.08), (1.84, 0.02), (1.57, 0.12)),
    "fer2013": ((1.62, 0.00), (1.59, 0.00), (1.54, 0.01), (1.42, 0.01), (1.22, 0.01), (0.97, 0.01)),
    "fashion_mnist": ((0.49, 0.00), (0.41, 0.00), (0.39, 0.00), (0.35, 0.00), (0.32, 0.00), (0.28, 0.00)),
    "mnist": ((0.35, 0.00), (0.26, 0.00), (0.23, 0.01), (0.19, 0.01), (0.16, 0.00), (0.14, 0.00)),
    "pcam": ((0.45, 0.01), (0.16, 0.01), (0.11, 0.01), (0.09, 0.01), (0.08, 0.01), (0.10, 0.01)),
    "stl10": ((1.78, 0.01), (1.81, 0.01), (1.67, 0.01), (1.38, 0.02), (0.95, 0.02), (0.56, 0.02)),
    "svhn": ((1.76, 0.02), (1.17, 0.00), (1.15, 0.02), (1.12, 0.03), (1.10, 0.05), (0.95, 0.05)),
    "semeion": ((1.86, 0.09), (1.92, 0.03), (1.77, 0.08), (1.59, 0.06), (1.40, 0.10), (1.01, 0.06)),
    "usps": ((0.71, 0.04), (0.48, 0.01), (0.43, 0.02), (0.38, 0.01), (0.31, 0.01), (0.25, 0.01)),
}

_TABLE3_VAL_LOSS = {  # Baseline  SAL-1  SAL-2  SAL-4  SAL-8  SAL-16
    "cifar10": ((1.96, 0.00), (1.91, 0.00), (1.90, 0.00), (1.88, 0.00), (1.84, 0.01), (1.82, 0.01)),
    "digits": ((1.81, 0.12), (2.22, 0.01), (2.20, 0.02), (2.07, 0.08), (1.85, 0.04), (1.63, 0.13)),
    "fer2013": ((1.65, 0.00), (1.62, 0.00), (1.60, 0.00), (1.57, 0.01), (1.56, 0.01), (1.58, 0.01)),
    "fashion_mnist": ((0.52, 0.00), (0.45, 0.00), (0.43, 0.00), (0.41, 0.00), (0.40, 0.00), (0.38, 0.01)),
    "mnist": ((0.33, 0.00), (0.25, 0.00), (0.23, 0.01), (0.21, 0.01), (0.19, 0.00), (0.18, 0.01)),
    "pcam": ((0.58, 0.00), (0.65, 0.01), (0.78, 0.02), (0.92, 0.04), (1.04, 0.08), (1.26, 0.08)),
    "stl10": ((1.95, 0.01), (1.91, 0.01), (1.89, 0.01), (1.89, 0.01), (1.96, 0.01), (2.11, 0.01)),
    "svhn": ((1.73, 0.02), (1.22, 0.00), (1.21, 0.01), (1.19, 0.02), (1.19, 0.05), (1.10, 0.05)),
    "semeion": ((1.89, 0.07), (1.92, 0.03), (1.78, 0.08), (1.62, 0.05), (1.47, 0.11), (1.18, 0.06)),
    "usps": ((0.79, 0.04), (0.57, 0.01), (0.53, 0.01), (0.49, 0.02), (0.44, 0.01), (0.40, 0.01)),
}

Table = dict[str, dict[str, tuple[float, float]]]


def _by_column(rows: dict[str, tuple[tuple[float, float], ...]]) -> Table:
    return {ds: dict(zip(COLUMNS, cells, strict=True)) for ds, cells in rows.items()}


# {dataset: {column: (mean, std)}}
ACCURACY: Table = _by_column(_TABLE2_ACCURACY)      # Table 2, validation accuracy %
TRAIN_LOSS: Table = _by_column(_TABLE3_TRAIN_LOSS)  # Table 3, final training loss
VAL_LOSS: Table = _by_column(_TABLE3_VAL_LOSS)      # Table 3, final validation loss


@dataclass(frozen=True)
class PublishedRow:
    """One dataset's published row: {column: (mean, std)} per table."""
    dataset: str
    accuracy: dict[str, tuple[float, float]]
    train_loss: dict[str, tuple[float, float]]
    val_loss: dict[str, tuple[float, float]]


def published_row(dataset: str) -> PublishedRow | None:
    """The paper's row for `dataset` (a sal_ray dataset name), or None when the
    paper published none."""
    if dataset not in ACCURACY:
        return None
    return PublishedRow(dataset, ACCURACY[dataset], TRAIN_LOSS[dataset], VAL_LOSS[dataset])

