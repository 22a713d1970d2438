"""The ten benchmark datasets: registry, preprocessing, on-disk cache and
device-resident batches. Imports only the standard library, torch, numpy,
scikit-learn, torchvision and `sal_ray.config` (never Ray, Optuna or MLflow).
"""

from .loading import DataError, Splits, data_root, load
from .registry import DATASETS_INFO, PREPROC_VERSION, DatasetInfo

__all__ = ["DATASETS_INFO", "DataError", "DatasetInfo", "PREPROC_VERSION", "Splits",
           "data_root", "load"]
