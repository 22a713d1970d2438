"""Numbers the paper published, to show beside ours (SAL_SPEC section 5).

Liu, Yang & Zou, "SAL: Selective Adaptive Learning ...", arXiv 2601.21561:
only the Digits row of Table 2 and the Digits final losses are restated in the
spec, so only those cells get a published value.
"""

from __future__ import annotations

# The ten benchmarks in the paper's order: the row order of the tables.
DATASET_ORDER = ("cifar10", "pcam", "stl10", "svhn", "mnist", "fashion_mnist",
                 "digits", "usps", "semeion", "fer2013")

# Table 2, validation accuracy %, mean and std over 5 seeds.
ACCURACY = {
    "digits": {"Baseline": (38.53, 5.78), "SAL-1": (36.36, 3.04), "SAL-2": (35.11, 8.05),
               "SAL-4": (53.59, 8.37), "SAL-8": (65.65, 4.92), "SAL-16": (71.63, 5.75)},
}
# Table 3, final (train, validation) loss.
LOSSES = {
    "digits": {"Baseline": (1.81, 1.81), "SAL-1": (2.22, 2.22), "SAL-2": (2.19, 2.20),
               "SAL-4": (2.06, 2.07), "SAL-8": (1.84, 1.85), "SAL-16": (1.57, 1.63)},
}

# The Convergence protocol those numbers came from; a report on runs that
# differ says how, so nobody compares a 2-epoch smoke sweep to them unawares.
PROTOCOL = {"arch": "mlp", "depth": 2, "width": 256, "lr": 1e-4, "batch_size": 16,
            "epochs": 25}
PROTOCOL_SEEDS = 5
