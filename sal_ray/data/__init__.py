"""The ten benchmark datasets: registry, preprocessing, on-disk cache and
device-resident batches. Imports only the standard library, torch, numpy,
scikit-learn, torchvision and `sal_ray.config` (never Ray, Optuna or MLflow).

    from sal_ray.data import load
    splits = load("cifar10")            # Splits: x_train (n, 1024) float32 in [-1, 1], ...
"""

from .batches import DeviceBatches, epoch_batches, epoch_permutation
from .loading import (DataError, Splits, check_available, data_root, dataset_folder, load,
                      status)
from .registry import DATASETS_INFO, PREPROC_VERSION, DatasetInfo

__all__ = ["DATASETS_INFO", "DataError", "DatasetInfo", "DeviceBatches", "PREPROC_VERSION",
           "Splits", "check_available", "data_root", "dataset_folder", "epoch_batches",
           "epoch_permutation", "load", "status"]
