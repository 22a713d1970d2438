"""sal_ray.checkpoint: reads never run code, an unreadable file is one clear error
naming it, writes are atomic, and the configuration check merges the defaults."""

import os
import pickle

import pytest
import torch

from sal_ray import Config, fit
from sal_ray import checkpoint
from sal_ray.checkpoint import CHECKPOINT_NAME, CheckpointError
from sal_ray.config import ConfigError

TINY = Config().replace(width=16, epochs=1, batch_size=64)


class MakesAFile:
    """Unpickling this creates the file `path`: what a hostile checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    fit(TINY, checkpoint_dir=str(folder))
    return folder / CHECKPOINT_NAME


def test_a_checkpoint_holds_only_plain_values(written):
    state = torch.load(written, weights_only=True)  # would raise on any other object
    assert set(state) == {"epoch", "history", "config", "net", "optimizer", "rng"}
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert all(isinstance(v, (int, float)) for m in state["history"] for v in m.values())
    assert state["config"] == TINY.to_flat()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_file_is_one_error_naming_it(written, tmp_path, damage):
    folder = tmp_path / damage
    folder.mkdir()
    path = folder / CHECKPOINT_NAME
    good = written.read_bytes()
    path.write_bytes({"garbage": os.urandom(256), "truncated": good[:len(good) // 2],
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        checkpoint.read(str(folder))
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)
    assert "weights_only" not in str(info.value)  # not torch's advice to load it unsafely
    with pytest.raises(CheckpointError, match=str(path)):  # and through the trainer
        fit(TINY.replace(epochs=2), checkpoint_dir=str(folder))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "marker"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / CHECKPOINT_NAME
    payload = {"epoch": 1, "net": MakesAFile(marker)}
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as info:
        checkpoint.read(str(folder))
    assert not marker.exists()
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        fit(TINY, checkpoint_dir=str(folder))
    assert not marker.exists()
    # the file is what it claims: unpickling it does run its code
    pickle.loads(path.read_bytes()) if fmt == "pickle" else torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_dict_that_is_not_a_checkpoint_is_named(tmp_path):
    torch.save({"epoch": 3}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="lacks history, config, net, optimizer"):
        checkpoint.read(str(tmp_path))
    assert checkpoint.read(str(tmp_path / "none")) is None


def test_a_failed_write_leaves_the_previous_checkpoint(written, tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(written.read_bytes())

    def fails(obj, f):
        open(f, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert checkpoint.read(str(tmp_path))["epoch"] == 1


def test_the_config_check_merges_the_defaults():
    cfg = Config().replace(n_areas=4, epochs=9, lr_sel=0.1)
    saved = cfg.replace(epochs=2, device="cuda").to_flat()
    checkpoint.check_config(saved, cfg, "here")  # epochs and device may change
    del saved["precision"]  # older than the option: counts as its default, fp32
    checkpoint.check_config(saved, cfg, "here")
    del saved["lr_sel"]  # its default (None) is not this run's 0.1
    with pytest.raises(ConfigError) as info:
        checkpoint.check_config(saved, cfg, "here")
    assert info.value.option == "lr_sel" and "checkpoint in here" in str(info.value)
