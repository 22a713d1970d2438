"""A full disk mid-sweep, for real: a small tmpfs under Tune's storage, or under
the MLflow store, filled until writes fail. The sweep stops with one line naming
the path and the cause, and the parent run says it is incomplete
(docs/reliability.md). Needs root (mount); skipped elsewhere."""

from __future__ import annotations

import os
import subprocess

import pytest

import sal_ray
from sal_ray.sweep.storage import StorageError

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.ray
SMALL = {"width": 256, "n_areas": 4, "batch_size": 64, "epochs": 4}


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int) -> None:
    """Leave `leave` bytes free on `disk`."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "ballast", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def parent_of(uri, name):
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                f"tags.sweep = '{name}' and tags.kind = 'sweep'")
    return run


def test_a_full_disk_under_the_storage_stops_the_sweep_and_says_where(ray_local, tmp_path,
                                                                      small_disk, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store is on a healthy disk
    fill(small_disk, leave=1 << 20)  # room for Tune's state, not for many checkpoints
    with pytest.raises(StorageError) as info:
        sal_ray.tune("digits", ["sal"], {"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]},
                     sampler="grid", fixed=SMALL, tracking_uri=uri,
                     storage_path=small_disk / "ray", name="full", experiment="full-disk",
                     max_concurrent=1, verbose=1,
                     checkpoint_every_s=0)  # every trial's end checkpoints: the disk fills
    assert "No space left on device" in str(info.value)
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("[storage]")]
    assert "No space left on device" in line and "the sweep stops" in line
    assert "sweep 'full' INCOMPLETE" in out
    parent = parent_of(uri, "full")
    assert parent.data.tags["status"] == "incomplete" and parent.info.status == "FAILED"
    assert "No space left on device" in parent.data.tags["status_message"]


def test_a_full_disk_under_the_store_stops_the_sweep_and_names_the_store(ray_local, tmp_path,
                                                                        small_disk):
    from sal_ray.tracking.store import check_store
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    check_store(uri, "full-store")  # the store exists (its tables take room too)
    fill(small_disk, leave=96 << 10)
    with pytest.raises(StorageError) as info:
        sal_ray.tune("digits", ["sal"], {"lr": [0.01, 0.02, 0.03, 0.04]}, sampler="grid",
                     fixed=SMALL, tracking_uri=uri, storage_path=tmp_path / "ray",
                     name="full-store", experiment="full-store", max_concurrent=1, verbose=0)
    text = str(info.value)
    assert str(small_disk / "mlflow.db") in text
    assert "database or disk is full" in text or "No space left on device" in text
