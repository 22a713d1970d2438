"""Engine starts that fail: Ray (a dead address, a start that raises), the store
(a server nobody runs, a folder that is missing or read-only). Each is one line that
names the option, what failed and what to try, before any trial; and the niceness
our local Ray gives its workers, and the warning when the driver itself is niced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
runtime = pytest.importorskip("sal_ray.sweep.runtime")
from sal_ray.tracking import provenance, store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket goes


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray_compat, "cluster_on_this_machine", lambda: False)


def test_a_dead_ray_address_is_one_line_before_ray_init(no_ray, monkeypatch):
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be tried"))
    port = closed_port()
    with pytest.raises(runtime.EngineError) as err:
        runtime.init_ray(f"127.0.0.1:{port}", None)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("option 'address': no Ray cluster answers at 127.0.0.1:")
    assert "ray start --head" in msg and "RAY_ADDRESS" in msg
    with pytest.raises(runtime.EngineError, match="expected host:port"):
        runtime.init_ray("not an address", None)


def test_a_ray_start_that_raises_is_one_line_with_what_to_try(no_ray, monkeypatch):
    def boom(**kw):
        raise RuntimeError("Failed to start the GCS\n  Traceback (most recent call last): ...")
    monkeypatch.setattr(ray, "init", boom)
    with pytest.raises(runtime.EngineError) as err:
        runtime.init_ray(None, 2)
    msg = str(err.value)
    assert msg == ("option 'address': a local Ray did not start (Failed to start the GCS); "
                   "check free space under /tmp (Ray's session folder) and `ray status`, or "
                   "pass a smaller num_cpus / --num-cpus")
    assert isinstance(err.value, runtime.ConfigError)  # the boundaries print it as one line


def test_our_local_ray_runs_its_workers_at_niceness_0(no_ray, monkeypatch):
    seen = []
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get("RAY_worker_niceness")))
    runtime.init_ray(None, 2)
    assert seen == ["0"]
    monkeypatch.setenv("RAY_worker_niceness", "7")  # the user's own choice holds
    runtime.init_ray(None, 2)
    assert seen == ["0", "7"]


def test_a_niced_driver_is_warned_and_runs_say_their_niceness(monkeypatch):
    lines = []
    monkeypatch.setattr(os, "nice", lambda inc: 5)
    runtime.warn_if_starved(lines.append)
    (line,) = lines
    assert line.startswith("[nice] this driver runs at niceness 5") and "process.nice" in line
    assert provenance.environment()["process.nice"] == "5"
    lines.clear()
    monkeypatch.setattr(os, "nice", lambda inc: 0)
    runtime.warn_if_starved(lines.append)
    assert lines == []


def test_store_failures_say_what_to_try(tmp_path):
    port = closed_port()
    with pytest.raises(store.StoreError) as err:
        store.check_readable(f"http://127.0.0.1:{port}", timeout_s=2)
    assert "\n" not in str(err.value)
    assert f"start it (`mlflow server --host 127.0.0.1 --port {port}`)" in str(err.value)
    with pytest.raises(store.StoreError, match="create it, or pass another tracking URI"):
        store.check_sqlite_folder(f"sqlite:///{tmp_path}/missing/m.db")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user writes read-only folders (root): no unwritable folder to test")
        with pytest.raises(store.StoreError, match="pass a tracking URI in a folder you can write"):
            store.check_sqlite_folder(f"sqlite:///{ro}/m.db")
    finally:
        ro.chmod(0o700)


def test_a_study_script_on_a_dead_ray_address_prints_one_line(tmp_path):
    """The whole path, as a user meets it: the script exits 2 with one line on
    stderr, before any trial (no Tune folder, no parent run left running)."""
    port = closed_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "depth.py"), "--quick", "--address",
         f"127.0.0.1:{port}", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
         "--storage-path", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "option 'address': no Ray cluster answers" in errors[0], \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    trials = list((tmp_path / "runs").rglob("params.json")) if (tmp_path / "runs").exists() else []
    assert trials == []
