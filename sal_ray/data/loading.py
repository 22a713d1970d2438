"""`load(name)` -> `Splits`: the one entry point the trainer uses.

Flow: resolve the data root -> use the verified on-disk cache if there is one ->
otherwise read the raw files through torchvision, preprocess, check the sample
count against the spec, write the cache atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .preprocess import stratified_split, zscore_fit
from .registry import DATASETS_INFO, SPLIT_SEED, VAL_FRACTION, DatasetInfo

ENV_ROOT = "SAL_RAY_DATA"
DEFAULT_ROOT = "~/.cache/sal_ray/data"


class DataError(ValueError):
    """Data missing, corrupt or inconsistent; the message says what to do."""


@dataclass
class Splits:
    name: str
    x_train: torch.Tensor   # (n_train, input_dim) float32, CPU, preprocessed & flattened
    y_train: torch.Tensor   # (n_train,) int64 in [0, n_classes)
    x_val: torch.Tensor     # (n_val, input_dim)
    y_val: torch.Tensor     # (n_val,)
    n_classes: int
    input_dim: int

    @property
    def n_samples(self) -> int:
        return len(self.y_train) + len(self.y_val)


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS_INFO[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS_INFO)}") from None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $SAL_RAY_DATA, else ~/.cache/sal_ray/data; always absolute
    (Ray workers change directory, so a relative root would move)."""
    chosen = root if root is not None else os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def load(name: str, root: str | None = None, download: bool = False, *,
         expected_samples: int | None = None) -> Splits:
    """The dataset's train and validation splits, preprocessed, on the CPU.

    `expected_samples` overrides the spec's sample count (tests and custom
    subsets only); a count that differs raises DataError.
    """
    meta = info(name)
    if name == "digits":
        splits = _load_digits()
    else:
        raise DataError(f"dataset {name!r}: loader not implemented yet")
    _check_count(meta, splits.n_samples, expected_samples)
    return splits


def _check_count(meta: DatasetInfo, got: int, expected: int | None) -> None:
    want = meta.n_samples if expected is None else expected
    if got != want:
        raise DataError(
            f"dataset {meta.name!r}: found {got:,} samples, expected {want:,} "
            f"({'spec Table 1' if expected is None else 'expected_samples'}); "
            "the files are incomplete, truncated or a different version")


def _load_digits() -> Splits:
    """scikit-learn's bundled 8x8 digits: nothing on disk, nothing cached.
    Stratified 80/20 split, then z-score per feature with train statistics."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    idx_train, idx_val = stratified_split(y, VAL_FRACTION, SPLIT_SEED)
    mean, std = zscore_fit(x[idx_train])

    def prep(idx):
        return torch.from_numpy(((x[idx] - mean) / std).astype(np.float32))

    return Splits("digits", prep(idx_train), torch.from_numpy(y[idx_train]),
                  prep(idx_val), torch.from_numpy(y[idx_val]),
                  n_classes=10, input_dim=64)
