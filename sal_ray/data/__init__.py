"""The ten benchmark datasets: registry, preprocessing, on-disk cache and
device-resident batches. Imports only the standard library, torch, numpy,
scikit-learn, torchvision and `sal_ray.config` (never Ray, Optuna or MLflow).

    from sal_ray.data import load
    splits = load("cifar10")            # Splits: x_train (n, 1024) float32 in [-1, 1], ...
"""

from .batches import batch_indices, epoch_order, gather_rows
from .loading import (DataError, Splits, check_available, data_root, dataset_folder, load,
                      load_shared, status)
from .registry import DATASETS_INFO, PREPROC_VERSION, DatasetInfo

__all__ = ["DATASETS_INFO", "DataError", "DatasetInfo", "PREPROC_VERSION", "Splits",
           "batch_indices", "check_available", "data_root", "dataset_folder", "epoch_order",
           "gather_rows", "load", "load_shared", "status"]
