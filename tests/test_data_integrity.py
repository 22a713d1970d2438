"""Missing, corrupt and truncated data; the cache's atomic write and checks."""

import os
import urllib.error
import warnings

import numpy as np
import pytest
import torch

from sal_ray.data import DATASETS_INFO, DataError, check_available, load, status
from sal_ray.data import cache as data_cache
from sal_ray.data import sources

try:
    from data_fixtures import write, write_usps
except ImportError:  # tests/ as a package
    from tests.data_fixtures import write, write_usps


def _load(name, root, n, **kw):
    return load(name, root=str(root), expected_samples=n, verify_md5=False, **kw)


# ---- missing data -------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in DATASETS_INFO if n != "digits"])
def test_missing_data_message_names_dataset_files_and_directory(name, tmp_path):
    with pytest.raises(DataError) as e:
        load(name, root=str(tmp_path))
    msg = str(e.value)
    folder = tmp_path.resolve() / name
    assert f"'{name}'" in msg
    assert f"Put these files in the directory {folder}:" in msg
    for f in DATASETS_INFO[name].files:
        assert f in msg
    assert "download is off" in msg
    with pytest.raises(DataError):
        check_available(name, root=str(tmp_path))
    assert status(name, str(tmp_path)) == "missing"
    assert not folder.exists()  # a failed load creates nothing


def test_missing_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_digits_needs_nothing_on_disk(tmp_path):
    check_available("digits", root=str(tmp_path / "absent"))
    assert status("digits", str(tmp_path)) == "bundled"


def test_partial_files_are_missing_data(tmp_path):
    write("mnist", tmp_path)
    (tmp_path / "mnist" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load("mnist", root=str(tmp_path))
    assert "t10k-labels-idx1-ubyte   [missing]" in str(e.value)
    assert "train-images-idx3-ubyte\n" in str(e.value)  # present files are not flagged


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(meta, folder):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(sources, "download", offline)
    with pytest.raises(DataError) as e:
        load("cifar10", root=str(tmp_path), download=True)
    msg = str(e.value)
    assert "download failed" in msg and "no network" in msg
    assert str(tmp_path.resolve() / "cifar10") in msg
    with pytest.raises(DataError, match="download failed"):
        check_available("svhn", root=str(tmp_path), download=True)


def test_not_downloadable_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "download", lambda *a: pytest.fail("tried to download"))
    with pytest.raises(DataError, match="cannot be downloaded automatically"):
        load("fer2013", root=str(tmp_path), download=True)


def test_check_available_accepts_raw_files_or_cache(tmp_path):
    _, n = write("usps", tmp_path)
    check_available("usps", root=str(tmp_path))
    _load("usps", tmp_path, n)
    for f in DATASETS_INFO["usps"].files:
        os.unlink(tmp_path / "usps" / f)
    check_available("usps", root=str(tmp_path))  # the cache alone is enough
    assert _load("usps", tmp_path, n).n_samples == n


# ---- corrupt and truncated raw files ------------------------------------------

def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name,rel", [
    ("cifar10", "cifar-10-batches-py/data_batch_3"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
    ("svhn", "test_32x32.mat"),
    ("stl10", "stl10_binary/train_X.bin"),
    ("pcam", "pcam/camelyonpatch_level_2_split_valid_x.h5"),
    ("usps", "usps.t.bz2"),
    ("semeion", "semeion.data"),
    ("fer2013", "fer2013/fer2013.csv"),
])
def test_truncated_file_is_a_clear_error(name, rel, tmp_path):
    if name == "pcam":
        pytest.importorskip("h5py", reason="torchvision's PCAM needs h5py")
    _, n = write(name, tmp_path)
    _truncate(tmp_path / name / rel, keep=0.37)
    with pytest.raises(DataError) as e:
        _load(name, tmp_path, n)
    assert f"'{name}'" in str(e.value)
    assert not data_cache.present(tmp_path / name)


def test_truncation_at_a_record_boundary_fails_the_count(tmp_path):
    """Text formats cut at a line end parse fine; the sample count catches them."""
    _, n = write("fer2013", tmp_path)
    path = tmp_path / "fer2013" / "fer2013" / "fer2013.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    with pytest.raises(DataError, match=f"{n - 2} samples, but expected_samples says {n}"):
        _load("fer2013", tmp_path, n)


def test_garbage_file_is_a_clear_error(tmp_path):
    _, n = write("cifar10", tmp_path)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="corrupt, truncated or not in the expected format"):
        _load("cifar10", tmp_path, n)


def test_labels_out_of_range_are_rejected(tmp_path):
    _, n = write("stl10", tmp_path)
    (tmp_path / "stl10" / "stl10_binary" / "test_y.bin").write_bytes(bytes([11] * 5))
    with pytest.raises(DataError, match="labels outside"):
        _load("stl10", tmp_path, n)


# ---- the cache ----------------------------------------------------------------

def _cache_files(tmp_path, name):
    return [data_cache.cache_path(tmp_path / name, s) for s in data_cache.SPLITS]


def test_truncated_cache_is_rebuilt(tmp_path):
    _, n = write("mnist", tmp_path)
    first = _load("mnist", tmp_path, n)
    train_cache = _cache_files(tmp_path, "mnist")[0]
    _truncate(train_cache, keep=0.6)
    with pytest.warns(UserWarning, match="ignoring cache"):
        again = _load("mnist", tmp_path, n)
    assert torch.equal(again.x_train, first.x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: loads quietly now
        _load("mnist", tmp_path, n)


def test_cache_with_flipped_bits_is_rebuilt(tmp_path):
    _, n = write("usps", tmp_path)
    first = _load("usps", tmp_path, n)
    path = _cache_files(tmp_path, "usps")[1]
    blob = torch.load(path, weights_only=True)
    blob["x"][0, 0] ^= 1
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="checksum mismatch"):
        again = _load("usps", tmp_path, n)
    assert torch.equal(again.x_val, first.x_val)


def test_interrupted_cache_write_leaves_no_readable_cache(tmp_path, monkeypatch):
    _, n = write("mnist", tmp_path)
    real_save = torch.save

    def dies_halfway(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 partial zip")  # some bytes reach the temp file...
        raise KeyboardInterrupt             # ...then the process is interrupted

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        _load("mnist", tmp_path, n)
    cache_dir = tmp_path / "mnist" / data_cache.CACHE_DIR
    assert not any(p.exists() for p in _cache_files(tmp_path, "mnist"))
    assert list(cache_dir.iterdir()) == []  # the temp file was removed
    monkeypatch.setattr(torch, "save", real_save)
    # a writer killed outright (SIGKILL) leaves its temp file: it is never read
    (cache_dir / ".train-v1.pt.abc123.tmp").write_bytes(b"PK\x03\x04 partial zip")
    s = _load("mnist", tmp_path, n)
    assert s.n_samples == n and all(p.exists() for p in _cache_files(tmp_path, "mnist"))


def test_changed_raw_files_invalidate_the_cache(tmp_path):
    _, n = write("usps", tmp_path)
    _load("usps", tmp_path, n)
    other = tmp_path / "other"
    write_usps(other, np.random.default_rng(1), n_train=20)
    os.replace(other / "usps.bz2", tmp_path / "usps" / "usps.bz2")
    with pytest.warns(UserWarning, match="raw files changed"):
        s = _load("usps", tmp_path, 20 + 6)
    assert len(s.y_train) == 20


def test_cache_from_another_preprocessing_version_is_not_read(tmp_path, monkeypatch):
    _, n = write("usps", tmp_path)
    _load("usps", tmp_path, n)
    monkeypatch.setattr(data_cache, "PREPROC_VERSION", 999)
    assert not data_cache.present(tmp_path / "usps")


def test_read_only_root_still_loads(tmp_path, monkeypatch):
    _, n = write("usps", tmp_path)

    def no_space(obj, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data_cache, "atomic_save", no_space)
    with pytest.warns(UserWarning, match="continuing without it"):
        assert _load("usps", tmp_path, n).n_samples == n
