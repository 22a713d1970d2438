"""SIGTERM and SIGHUP end a sweep as Ctrl-C does (sal_ray/sweep/signals.py): the
handlers in this process first, then a real sweep driver sent SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from sal_ray.sweep import signals

try:
    from test_faults import DRIVER, child_runs, wait_for
except ImportError:  # tests/ as a package
    from tests.test_faults import DRIVER, child_runs, wait_for


@pytest.fixture
def sigint_spy():
    """A SIGINT handler standing in for Tune's, counting its calls."""
    calls = []
    previous = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    yield calls
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_inside_the_block_the_signal_reaches_the_sigint_handler(sigint_spy, sig):
    # a handled signal, whatever this test process was started with: under nohup
    # SIGHUP arrives ignored, and an ignored SIGHUP is rightly left alone (below)
    outer = signal.signal(sig, lambda s, f: None)
    try:
        before = signal.getsignal(sig)
        lines = []
        with signals.as_ctrl_c(lines.append):
            os.kill(os.getpid(), sig)  # Python runs the handler before the next line
        assert sigint_spy == [signal.SIGINT]
        assert lines == [f"[{sig.name}] ending the sweep as Ctrl-C would: running trials "
                         "checkpoint and stop"]
        assert signal.getsignal(sig) is before  # put back
    finally:
        signal.signal(sig, outer)


def test_with_python_s_own_sigint_handler_it_is_a_keyboard_interrupt():
    # Python's own, whatever an earlier test's Ray Train or Tune run left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals.as_ctrl_c(lambda line: None):
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_sigint_handler_a_run_installs_is_taken_away_after_it(sigint_spy):
    before = signal.getsignal(signal.SIGINT)
    with signals.as_ctrl_c(lambda line: None):
        signal.signal(signal.SIGINT, lambda s, f: None)  # as Tune's run does, for good
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_hangup_stays_ignored(sigint_spy):
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with signals.as_ctrl_c(lambda line: None):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
        assert sigint_spy == []
    finally:
        signal.signal(signal.SIGHUP, previous)


def started(client) -> bool:
    """A trial's run exists: the sweep is inside Tune's loop."""
    try:
        return bool(child_runs(client, "signals", "sigterm"))
    except Exception:  # noqa: BLE001 - the store or the experiment may not exist yet
        return False


@pytest.mark.ray
def test_a_sweep_driver_sent_sigterm_ends_interrupted_and_prints_its_resume(tmp_path, mlflow_uri):
    mlflow = pytest.importorskip("mlflow")
    kw = dict(datasets="digits", methods="sal", space={"lr": [0.01, 0.02, 0.04, 0.08]},
              sampler="grid", fixed={"width": 64, "batch_size": 8, "n_areas": 4, "epochs": 20},
              experiment="signals", max_concurrent=1, tracking_uri=mlflow_uri,
              storage_path=str(tmp_path / "ray"), name="sigterm", num_cpus=1)
    client = mlflow.MlflowClient(mlflow_uri)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(kw)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: started(client), 240, "a trial started", driver)
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-3000:]
    assert "[SIGTERM] ending the sweep as Ctrl-C would" in out, out[-3000:]
    assert "sweep 'sigterm' INTERRUPTED" in out, out[-3000:]
    assert "Resume it: sal_ray.tune(<same arguments>, name='sigterm', resume=True), or the " \
           "sweep script with --resume sigterm." in out
    exp = client.get_experiment_by_name("signals")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parent) == 1 and parent[0].data.tags["status"] == "interrupted"
    assert parent[0].info.status == "KILLED"
    assert 1 <= len(runs) - 1 < 4                                  # it stopped early
    assert {r.data.tags["status"] for r in runs if r is not parent[0]} <= {"stopped", "crashed"}
    assert all(r.info.status != "RUNNING" for r in runs)           # nothing left open
