"""Two drivers at once: of two started under one sweep name exactly one proceeds;
two creating one new SQLite store both get it (docs/reliability.md)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import pytest

import sal_ray
from sal_ray import ConfigError
from sal_ray.fs import FileLock, Held
from sal_ray.sweep import storage


def test_a_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from sal_ray.fs import FileLock
        FileLock({str(path)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Held) as info:
            FileLock(path).acquire()
        assert info.value.owner == f"pid {holder.pid}"
    finally:
        holder.kill()
        holder.wait()
    with FileLock(path):  # the OS released the killed holder's lock
        assert path.read_text() == f"pid {os.getpid()}"


@pytest.mark.ray
def test_a_sweep_name_another_driver_holds_is_refused_before_any_run_exists(ray_local,
                                                                           tmp_path):
    mlflow = pytest.importorskip("mlflow")
    runs, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = storage.claim(str(runs), "twin")  # the first driver, still running
    try:
        with pytest.raises(ConfigError) as info:
            sal_ray.tune("digits", ["sal"], {"lr": [0.1]}, sampler="grid", name="twin",
                         fixed={"epochs": 1, "width": 16}, storage_path=str(runs),
                         tracking_uri=uri, experiment="races", verbose=0)
        assert info.value.option == "name"
        assert f"being run by another driver (pid {os.getpid()})" in str(info.value)
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("races")
        assert client.search_runs([experiment.experiment_id]) == []  # no parent, no trial
        assert not (runs / "twin").exists()  # and no Tune experiment
    finally:
        other.release()
    assert storage.claim(str(runs), "twin") is not None  # free again once released


def _create(uri, out):
    from sal_ray.tracking.store import check_store
    try:
        out.put(("ok", check_store(uri, "both")))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put(("error", f"{type(e).__name__}: {e}"))


def test_two_drivers_creating_one_new_sqlite_store_both_get_it(tmp_path):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(uri, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]  # one experiment, not two
