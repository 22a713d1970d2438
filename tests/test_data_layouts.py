"""The two data-root layouts (sal_ray/data/layouts.py): the project's
`<root>/<name>/...` and torchvision's own `<root>/...`, searched in that order,
from tiny files in each dataset's genuine format; and the cache when the
layout its files came from changes."""

import warnings

import numpy as np
import pytest
import torch

from sal_ray.data import DATASETS_INFO, DataError, check_available, load, status
from sal_ray.data import cache as data_cache
from sal_ray.data import sources
from sal_ray.data.layouts import LAYOUTS, PROJECT, TORCHVISION, closest, locate
from sal_ray.data.loading import describe_source, raw_files

try:
    from data_fixtures import expected_splits, write
except ImportError:  # tests/ as a package
    from tests.data_fixtures import expected_splits, write

FILE_BACKED = [n for n in DATASETS_INFO if n != "digits"]

# Where each torchvision 0.29 class looks under its `root` (read from its
# source: base_folder, raw_folder, _base_folder, or the root itself).
TORCHVISION_FOLDER = {
    "cifar10": "cifar-10-batches-py", "pcam": "pcam", "stl10": "stl10_binary",
    "svhn": "", "mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw",
    "usps": "", "semeion": "", "fer2013": "fer2013",
}


def _load(name, root, n):
    return load(name, root=str(root), expected_samples=n, verify_md5=False)


def _same(splits, want):
    for split, x, y in (("train", splits.x_train, splits.y_train),
                        ("val", splits.x_val, splits.y_val)):
        np.testing.assert_array_equal(y.numpy(), want[split][1])
        np.testing.assert_allclose(x.numpy(), want[split][0], rtol=0, atol=1e-6)


def _skip_pcam_without_h5py(name):
    if name == "pcam":
        pytest.importorskip("h5py", reason="torchvision's PCAM needs h5py")


def test_search_order_is_project_then_torchvision():
    assert LAYOUTS == (PROJECT, TORCHVISION)


@pytest.mark.parametrize("name", FILE_BACKED)
def test_file_paths_are_where_each_torchvision_class_looks(name):
    for files in DATASETS_INFO[name].file_sets:
        for f in files:
            assert f.rpartition("/")[0] == TORCHVISION_FOLDER[name]


@pytest.mark.parametrize("name", FILE_BACKED)
def test_torchvision_layout_loads(name, tmp_path):
    _skip_pcam_without_h5py(name)
    written, n = write(name, tmp_path, layout="torchvision")
    assert not (tmp_path / name / "sal_ray_cache").exists()
    assert status(name, tmp_path) == "raw files (torchvision layout)"
    assert raw_files(name, tmp_path).folder == tmp_path.resolve()
    assert describe_source(name, tmp_path) == f"{tmp_path.resolve()} (torchvision layout)"
    check_available(name, root=str(tmp_path))

    s = _load(name, tmp_path, n)
    _same(s, expected_splits(written))
    # the cache goes where the project layout keeps it, whichever layout was read
    assert data_cache.present(tmp_path / name)
    assert status(name, tmp_path) == "cached"
    saved = sources.READERS[name]
    sources.READERS[name] = lambda folder: pytest.fail("raw files parsed despite a valid cache")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "ignoring cache" warning
            again = _load(name, tmp_path, n)
    finally:
        sources.READERS[name] = saved
    assert torch.equal(again.x_train, s.x_train) and torch.equal(again.y_val, s.y_val)


def test_project_layout_wins_when_both_are_complete(tmp_path):
    project, n = write("mnist", tmp_path, seed=1, layout="project")
    write("mnist", tmp_path, seed=2, layout="torchvision")
    assert status("mnist", tmp_path) == "raw files"
    assert raw_files("mnist", tmp_path).layout == PROJECT
    _same(_load("mnist", tmp_path, n), expected_splits(project))


def test_cache_from_project_files_is_not_taken_for_torchvision_files(tmp_path):
    """Cache built from the project layout; then those files go and only the
    torchvision layout's (different) files are found: the cache's recorded
    source no longer matches, so it is rebuilt from the files found now."""
    write("usps", tmp_path, seed=1, layout="project")
    tv, n = write("usps", tmp_path, seed=2, layout="torchvision")
    _load("usps", tmp_path, n)
    for f in DATASETS_INFO["usps"].files:
        (tmp_path / "usps" / f).unlink()
    assert status("usps", tmp_path) == "cached"
    with pytest.warns(UserWarning, match=r"built from other raw files \(usps.bz2, usps.t.bz2\) "
                                         r"than those found now \(../usps.bz2, ../usps.t.bz2\)"):
        s = _load("usps", tmp_path, n)
    _same(s, expected_splits(tv))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache now matches
        _same(_load("usps", tmp_path, n), expected_splits(tv))


def test_cache_from_torchvision_files_is_rebuilt_when_project_files_appear(tmp_path):
    write("semeion", tmp_path, seed=1, layout="torchvision")
    _load("semeion", tmp_path, 60)
    project, n = write("semeion", tmp_path, seed=2, layout="project")
    with pytest.warns(UserWarning, match="built from other raw files"):
        _same(_load("semeion", tmp_path, n), expected_splits(project))


def test_cache_from_torchvision_files_serves_alone(tmp_path):
    tv, n = write("usps", tmp_path, layout="torchvision")
    _load("usps", tmp_path, n)
    for f in DATASETS_INFO["usps"].files:
        (tmp_path / f).unlink()
    check_available("usps", root=str(tmp_path))
    assert describe_source("usps", tmp_path) == str(tmp_path.resolve() / "usps" / "sal_ray_cache")
    _same(_load("usps", tmp_path, n), expected_splits(tv))


def test_missing_error_names_both_folders(tmp_path):
    with pytest.raises(DataError) as e:
        load("mnist", root=str(tmp_path))
    root = tmp_path.resolve()
    assert (f"Searched: {root / 'mnist'} (this project's layout), then {root} (torchvision's, "
            f"as torchvision.datasets.MNIST(root={root}) leaves it).") in str(e.value)


def test_partial_torchvision_layout_is_listed_where_it_is(tmp_path):
    write("mnist", tmp_path, layout="torchvision")
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    near = closest(DATASETS_INFO["mnist"], tmp_path)
    assert near.layout == TORCHVISION and near.missing == ("MNIST/raw/train-labels-idx1-ubyte",)
    assert locate(DATASETS_INFO["mnist"], tmp_path) is None
    assert status("mnist", tmp_path) == \
        "partial (torchvision layout): missing MNIST/raw/train-labels-idx1-ubyte"
    with pytest.raises(DataError) as e:
        load("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert f"Put these files in the directory {tmp_path.resolve()}:" in msg
    assert "MNIST/raw/train-labels-idx1-ubyte   [missing]" in msg
    assert "MNIST/raw/train-images-idx3-ubyte\n" in msg


def test_partial_project_layout_names_the_missing_file(tmp_path):
    write("usps", tmp_path)
    (tmp_path / "usps" / "usps.bz2").unlink()
    assert status("usps", tmp_path) == "partial: missing usps.bz2"


def test_a_complete_layout_beats_a_fuller_partial_one(tmp_path):
    """A complete torchvision-layout set is used even when the project layout
    holds part of a set."""
    write("mnist", tmp_path, seed=1)
    (tmp_path / "mnist" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    tv, n = write("mnist", tmp_path, seed=2, layout="torchvision")
    assert status("mnist", tmp_path) == "raw files (torchvision layout)"
    _same(_load("mnist", tmp_path, n), expected_splits(tv))
