"""Every file-backed dataset through its real loading path (torchvision class ->
gray -> normalise -> cache), from tiny files in the genuine on-disk formats.

Expected values are computed in tests/data_fixtures.py the way the usual
torchvision pipeline does it (PIL convert('L') -> ToTensor -> Normalize(0.5,
0.5) -> flatten), not with the package's own code. No test touches the network.
"""

import numpy as np
import pytest
import torch

from sal_ray.data import DATASETS_INFO, DataError, load, status
from sal_ray.data import cache as data_cache
from sal_ray.data import sources

try:
    from data_fixtures import WRITERS, expected_splits, write
except ImportError:  # tests/ as a package
    from tests.data_fixtures import WRITERS, expected_splits, write

FILE_BACKED = [n for n in DATASETS_INFO if n != "digits"]


def test_every_file_backed_dataset_has_a_fixture():
    assert set(WRITERS) == set(FILE_BACKED)


def _has_h5py():
    try:
        import h5py  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("name", FILE_BACKED)
def test_load_real_format(name, tmp_path):
    if name == "pcam" and not _has_h5py():
        pytest.skip("h5py is not installed: torchvision's PCAM cannot read HDF5 without it")
    written, n = write(name, tmp_path)
    meta = DATASETS_INFO[name]
    assert status(name, tmp_path) == "raw files"

    s = load(name, root=str(tmp_path), expected_samples=n, verify_md5=False)

    want = expected_splits(written)
    assert (s.name, s.n_classes, s.input_dim) == (name, meta.n_classes, meta.input_dim)
    for split, x, y in (("train", s.x_train, s.y_train), ("val", s.x_val, s.y_val)):
        wx, wy = want[split]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(wy), meta.input_dim) and y.shape == (len(wy),)
        assert x.is_contiguous() and x.device.type == "cpu"
        assert int(y.min()) >= 0 and int(y.max()) < meta.n_classes
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        np.testing.assert_array_equal(y.numpy(), wy)
        np.testing.assert_allclose(x.numpy(), wx, rtol=0, atol=1e-6)

    # the second load comes from the cache, without parsing the raw files
    assert status(name, tmp_path) == "cached"
    assert data_cache.present(tmp_path / name)
    again = _load_without_readers(name, tmp_path, n)
    assert torch.equal(again.x_train, s.x_train) and torch.equal(again.y_val, s.y_val)


def _load_without_readers(name, root, n):
    saved = sources.READERS[name]
    sources.READERS[name] = lambda folder: pytest.fail("raw files parsed despite a valid cache")
    try:
        return load(name, root=str(root), expected_samples=n, verify_md5=False)
    finally:
        sources.READERS[name] = saved


def test_gray_is_pil_luma_not_channel_mean(tmp_path):
    """A pure-red image becomes round(0.299 * 255) = 76, not 85 (channel mean)."""
    written, n = write("cifar10", tmp_path)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    import pickle
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f)
    red = np.zeros((len(batch["labels"]), 3, 32, 32), np.uint8)
    red[:, 0] = 255
    batch["data"] = red.reshape(len(red), -1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    s = load("cifar10", root=str(tmp_path), expected_samples=n, verify_md5=False)
    assert torch.allclose(s.x_val, torch.full_like(s.x_val, 76 / 255 * 2 - 1))


def test_spec_count_mismatch_is_reported(tmp_path):
    write("mnist", tmp_path)
    with pytest.raises(DataError) as e:
        load("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert "'mnist'" in msg and "18 samples" in msg and "70,000" in msg
    assert not data_cache.present(tmp_path / "mnist")  # nothing cached from a bad set


def test_md5_check_rejects_unofficial_files(tmp_path):
    write("cifar10", tmp_path)
    with pytest.raises(DataError, match="MD5") as e:
        load("cifar10", root=str(tmp_path))  # verify_md5 defaults to on
    assert "data_batch_1" in str(e.value) and "c99cafc152244af753f735de768cd75f" in str(e.value)


def test_env_var_root(tmp_path, monkeypatch):
    _, n = write("usps", tmp_path)
    monkeypatch.setenv("SAL_RAY_DATA", str(tmp_path))
    assert load("usps", expected_samples=n, verify_md5=False).n_samples == n


def test_fer2013_icml_file_accepted(tmp_path):
    written, n = write("fer2013", tmp_path)
    base = tmp_path / "fer2013" / "fer2013"
    text = (base / "fer2013.csv").read_text()
    lines = text.splitlines()
    # icml_face_data.csv: same rows, header "emotion, Usage, pixels", columns reordered
    import csv
    import io
    rows = list(csv.reader(io.StringIO(text)))[1:]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["emotion", " Usage", " pixels"])
    w.writerows([r[0], r[2], r[1]] for r in rows)
    (base / "icml_face_data.csv").write_text(out.getvalue())
    (base / "fer2013.csv").unlink()
    assert len(lines) == n + 1
    s = load("fer2013", root=str(tmp_path), expected_samples=n, verify_md5=False)
    want = expected_splits(written)
    np.testing.assert_allclose(s.x_val.numpy(), want["val"][0], atol=1e-6)
