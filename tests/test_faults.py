"""Fault injection with real Ray, real MLflow and real processes, on the CPU.

- a trial's process is SIGKILLed mid-epoch: Tune restarts it from its last
  checkpoint, it ends with the metrics of an unbroken run, in one MLflow run;
- the driver is interrupted (SIGINT, as Ctrl-C) mid-sweep, then resumed: trials
  that had finished are not run again, every trial appears once, every metric
  history is complete and has no point twice;
- the MLflow server is stopped mid-sweep and started again: training goes on,
  no metric is lost or doubled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import sal_ray
from sal_ray import Config, fit

pytestmark = pytest.mark.ray
mlflow = pytest.importorskip("mlflow")
rt = pytest.importorskip("ray.tune")

REPO = Path(__file__).resolve().parents[1]
# small and deterministic; batch 4 makes an epoch ~360 steps, long enough to die in
BASE = {"width": 64, "batch_size": 4, "n_areas": 4, "lr": 0.02}
FINAL = ("val_loss", "val_acc", "train_loss", "train_acc")


def child_runs(client, experiment: str, sweep: str):
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], f"tags.sweep = '{sweep}'",
                                          max_results=1000)
            if r.data.tags.get("kind") != "sweep"]


def assert_complete_history(client, run, epochs: int):
    """Every per-epoch metric has exactly the steps 1..epochs, each once."""
    keys = [k for k in run.data.metrics if not k.startswith(("final_", "trial_"))
            and k not in ("mean_samples_per_s", "epochs_done")]
    assert "val_loss" in keys and any(k.startswith("area_share.") for k in keys) or \
        run.data.tags["method"] == "bp"
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
    for key in ("final_val_acc", "final_val_loss", "epochs_done", "trial_objective_val_acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == 1, (run.info.run_name, key, steps)


class KillTrial(rt.Callback):
    """SIGKILLs the process of the first trial to report epoch `epoch` (once): the
    trial is then in its next epoch."""

    def __init__(self, epoch: int):
        self.epoch, self.killed, self.pid = epoch, None, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed is None and result.get("epoch") == self.epoch:
            self.killed, self.pid = trial.trial_id, result["pid"]
            os.kill(result["pid"], signal.SIGKILL)


def test_a_killed_trial_resumes_from_its_checkpoint_with_the_same_result(
        ray_local, tmp_path, mlflow_uri):
    epochs = 6
    killer = KillTrial(epoch=3)
    res = sal_ray.tune("digits", "sal", space={"n_areas": [4]}, sampler="grid",
                       fixed={**{k: v for k, v in BASE.items() if k != "n_areas"},
                              "epochs": epochs},
                       tracking_uri=mlflow_uri, storage_path=tmp_path / "ray", name="kill",
                       experiment="faults-kill", callbacks=[killer], verbose=0)
    assert killer.killed is not None
    row = res.trials.iloc[0]
    assert row.trial_id == killer.killed and row.status == "completed"

    # the uninterrupted run: the same configuration and seed, in this process
    reference = fit(Config().replace(**BASE, epochs=epochs, seed=0))
    for key in FINAL:
        assert row[f"final_{key}_mean"] == reference.final[key], key

    client = mlflow.MlflowClient(mlflow_uri)
    runs = child_runs(client, "faults-kill", "kill")
    assert len(runs) == 1  # re-attached, not a second run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert_complete_history(client, run, epochs)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        pytest.approx([h["val_loss"] for h in reference.history], rel=0, abs=1e-12)

    # restarted from a checkpoint, not from scratch: fewer reports since the restore
    # than epochs (Tune counts them), and the process that ended it is another one
    last = rt.ExperimentAnalysis(str(tmp_path / "ray" / "kill")).trials[0].last_result
    assert 0 < last["iterations_since_restore"] < epochs
    assert last["pid"] != killer.pid
