"""Digits: scikit-learn's bundled set, nothing on disk."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sal_ray.config import DATASETS
from sal_ray.data import DATASETS_INFO, load


def test_registry_names_match_config():
    assert tuple(DATASETS_INFO) == DATASETS


def test_digits_loads_with_empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SAL_RAY_DATA", str(tmp_path / "nothing-here"))
    s = load("digits")
    assert (s.name, s.n_classes, s.input_dim) == ("digits", 10, 64)
    assert s.x_train.shape == (1437, 64) and s.x_val.shape == (360, 64)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.x_train.device.type == "cpu"
    assert int(s.y_train.min()) == 0 and int(s.y_train.max()) == 9
    assert not (tmp_path / "nothing-here").exists()  # nothing written


def test_digits_zscore_fitted_on_train_only():
    bunch = load_digits()
    x, y = bunch.data, bunch.target
    i_tr, i_va = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    mean = x[i_tr].mean(0)
    std = x[i_tr].std(0)
    std[std == 0] = 1.0
    s = load("digits")
    np.testing.assert_allclose(s.x_train.numpy(), (x[i_tr] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(s.x_val.numpy(), (x[i_va] - mean) / std, atol=1e-5)
    assert np.array_equal(s.y_val.numpy(), y[i_va])
    # constant features (pixel 0 is always 0) stay exactly 0, never NaN
    assert torch.isfinite(s.x_train).all() and torch.isfinite(s.x_val).all()
    assert (s.x_train[:, 0] == 0).all()
    # stratified: every class in both splits in nearly the dataset's proportion
    assert torch.bincount(s.y_val, minlength=10).min() >= 35
