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
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sal_ray
from sal_ray import Config, fit

pytestmark = pytest.mark.ray
mlflow = pytest.importorskip("mlflow")
rt = pytest.importorskip("ray.tune")

try:
    from mlflow_server import MLflowServer
except ImportError:  # tests/ as a package
    from tests.mlflow_server import MLflowServer

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
    # cost_* and peak_rss_mb: once, when the run ends; system/*: MLflow's samples
    keys = [k for k in run.data.metrics if not k.startswith(("final_", "trial_", "cost_",
                                                            "system/"))
            and k not in ("mean_samples_per_s", "epochs_done", "peak_rss_mb")]
    assert "val_loss" in keys and any(k.startswith("area_entropy_bits.") for k in keys) or \
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


def killed_sweep(tmp_path, mlflow_uri, name: str, cfg: dict, epochs: int, seeds: int = 1):
    """A one-trial sweep of `cfg` (experiment `faults-<name>`) whose trial process is
    SIGKILLed after reporting epoch 3, with a checkpoint every epoch: the trial's
    row, once checked to have completed from a checkpoint in another process."""
    killer = KillTrial(epoch=3)
    res = sal_ray.tune("digits", "sal", space={"n_areas": [4]}, sampler="grid",
                       fixed={**{k: v for k, v in cfg.items() if k != "n_areas"},
                              "epochs": epochs}, seeds=seeds,
                       tracking_uri=mlflow_uri, storage_path=tmp_path / "ray", name=name,
                       experiment=f"faults-{name}", callbacks=[killer], verbose=0,
                       checkpoint_every_s=0)  # one per epoch: the restart resumes epoch 3
    assert killer.killed is not None
    row = res.trials.iloc[0]
    assert row.trial_id == killer.killed and row.status == "completed"
    # restarted from a checkpoint, not from scratch: fewer reports since the restore
    # than epochs (Tune counts them), and the process that ended it is another one
    last = rt.ExperimentAnalysis(str(tmp_path / "ray" / name)).trials[0].last_result
    assert 0 < last["iterations_since_restore"] < epochs
    assert last["pid"] != killer.pid
    return row


def test_a_killed_trial_resumes_from_its_checkpoint_with_the_same_result(
        ray_local, tmp_path, mlflow_uri):
    epochs = 6
    row = killed_sweep(tmp_path, mlflow_uri, "kill", BASE, epochs)

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


def assert_pack_runs(client, runs, references, epochs: int, pack_size: int):
    """Each resumed pack member's run ended, tagged with its pack's size, with every
    metric at each epoch once and the val_loss history of its uninterrupted
    separate `fit` (`references`, in the same order) to 1e-9."""
    assert len(runs) == len(references)
    for run, reference in zip(runs, references):
        assert run.info.status == "FINISHED" and run.data.tags["pack_size"] == str(pack_size)
        assert_complete_history(client, run, epochs)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
            pytest.approx([h["val_loss"] for h in reference.history], rel=0, abs=1e-9)


def test_a_killed_trial_of_fused_seeds_resumes_its_pack_with_the_same_result(
        ray_local, tmp_path, mlflow_uri):
    """The seeds of a trial train as one stacked model (fuse, the default): a SIGKILL
    mid-run restarts the whole pack from its checkpoint, and each seed's run ends
    as its uninterrupted separate run (float64)."""
    epochs, cfg = 6, {**BASE, "dtype": "float64"}
    row = killed_sweep(tmp_path, mlflow_uri, "kill-pack", cfg, epochs, seeds=2)
    references = [fit(Config().replace(**cfg, epochs=epochs, seed=s)) for s in (0, 1)]
    for key in FINAL:
        assert row[f"final_{key}_mean"] == pytest.approx(
            sum(r.final[key] for r in references) / 2, rel=0, abs=1e-9), key

    client = mlflow.MlflowClient(mlflow_uri)
    runs = sorted(child_runs(client, "faults-kill-pack", "kill-pack"),
                  key=lambda r: int(r.data.params["seed"]))
    assert [r.data.params["seed"] for r in runs] == ["0", "1"]  # re-attached, not doubled
    assert_pack_runs(client, runs, references, epochs, pack_size=2)


def test_a_killed_trial_of_fused_configurations_resumes_every_one(
        ray_local, tmp_path, mlflow_uri):
    """Two learning rates fused in one trial (fuse_configs), two seeds each: a
    SIGKILL mid-run restarts the pack of four from its checkpoint, and each
    configuration ends as its uninterrupted separate runs (float64)."""
    epochs, cfg, lrs = 6, {**BASE, "dtype": "float64"}, [0.02, 0.05]
    killer = KillTrial(epoch=3)
    res = sal_ray.tune("digits", "sal", space={"lr": lrs}, sampler="grid",
                       fixed={k: v for k, v in {**cfg, "epochs": epochs}.items() if k != "lr"},
                       seeds=2, fuse_configs=2, tracking_uri=mlflow_uri,
                       storage_path=tmp_path / "ray", name="kill-configs",
                       experiment="faults-kill-configs", callbacks=[killer], verbose=0,
                       checkpoint_every_s=0)
    assert killer.killed is not None
    last = rt.ExperimentAnalysis(str(tmp_path / "ray" / "kill-configs")).trials[0].last_result
    assert 0 < last["iterations_since_restore"] < epochs and last["pid"] != killer.pid
    rows = res.trials.sort_values("lr")
    assert list(rows.trial_id) == [f"{killer.killed}-c0", f"{killer.killed}-c1"]
    assert list(rows.status) == ["completed"] * 2
    client = mlflow.MlflowClient(mlflow_uri)
    runs = child_runs(client, "faults-kill-configs", "kill-configs")
    assert len(runs) == 4  # re-attached, not doubled
    for row, lr in zip(rows.itertuples(), lrs):
        references = [fit(Config().replace(**{**cfg, "lr": lr}, epochs=epochs, seed=s))
                      for s in (0, 1)]
        assert row.final_val_loss_mean == pytest.approx(
            sum(r.final["val_loss"] for r in references) / 2, rel=0, abs=1e-9)
        mine = sorted((r for r in runs if r.data.tags["trial"] == row.trial_id),
                      key=lambda r: int(r.data.params["seed"]))
        assert_pack_runs(client, mine, references, epochs, pack_size=4)


class CorruptAndKill(KillTrial):
    """As KillTrial, after writing garbage over the trial's checkpoints of the
    trainer in Tune's storage: the restarted trial cannot read the one it gets."""

    def __init__(self, epoch: int, storage: Path):
        super().__init__(epoch)
        self.storage, self.corrupted = storage, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed is None and result.get("epoch") == self.epoch:
            # every one the trial has: the epoch's own may not be Tune's latest yet
            self.corrupted = sorted(self.storage.rglob("checkpoint_*/trainer/checkpoint.pt"))
            for path in self.corrupted:
                path.write_bytes(b"not a checkpoint" * 64)
        super().on_trial_result(iteration, trials, trial, result, **info)

    def __reduce__(self):  # Tune pickles its callbacks; this one stays in this process
        return (object, ())


def test_a_trial_whose_checkpoint_is_unreadable_restarts_its_seed_and_says_so(
        ray_local, tmp_path, mlflow_uri):
    epochs = 5
    killer = CorruptAndKill(epoch=3, storage=tmp_path / "ray")
    res = sal_ray.tune("digits", "sal", space={"n_areas": [4]}, sampler="grid",
                       fixed={**{k: v for k, v in BASE.items() if k != "n_areas"},
                              "epochs": epochs},
                       tracking_uri=mlflow_uri, storage_path=tmp_path / "ray", name="corrupt",
                       experiment="faults-corrupt", callbacks=[killer], verbose=0,
                       checkpoint_every_s=0)
    assert killer.killed is not None and killer.corrupted
    row = res.trials.iloc[0]
    assert row.status == "completed"  # not a crash after every retry on the same file
    reference = fit(Config().replace(**BASE, epochs=epochs, seed=0))
    for key in FINAL:  # the seed ran again from scratch: the same deterministic result
        assert row[f"final_{key}_mean"] == reference.final[key], key
    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = child_runs(client, "faults-corrupt", "corrupt")  # taken up again, not doubled
    fallback = run.data.tags["checkpoint_fallback"]
    assert fallback.startswith("seed 0 restarted from scratch: cannot read checkpoint")
    assert "checkpoint.pt" in fallback
    assert_complete_history(client, run, epochs)


# ---- the driver interrupted, then resumed ------------------------------------------

SWEEP = dict(datasets="digits", methods=["sal", "bp"], space={"lr": [0.01, 0.02, 0.04]},
             sampler="grid", fixed={"width": 64, "batch_size": 8, "n_areas": 4, "epochs": 8},
             experiment="faults-resume", max_concurrent=1)
DRIVER = """
import json, sys
import sal_ray
kw = json.loads(sys.argv[1])
sal_ray.tune(**kw)
"""


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited first ({proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.5)


def finished(client, experiment, sweep):
    try:
        return [r for r in child_runs(client, experiment, sweep) if r.info.status == "FINISHED"]
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return []


def test_an_interrupted_sweep_resumes_without_rerunning_or_losing_anything(
        ray_local, tmp_path, mlflow_uri):
    kw = {**SWEEP, "tracking_uri": mlflow_uri, "storage_path": str(tmp_path / "ray"),
          "name": "resume", "verbose": 0}
    client = mlflow.MlflowClient(mlflow_uri)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(kw)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(finished(client, "faults-resume", "resume")) >= 2, 240,
                 "two trials finished", driver)
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {r.info.run_id: r for r in finished(client, "faults-resume", "resume")}
    assert 2 <= len(before) < 6, out[-3000:]
    parent = client.search_runs([client.get_experiment_by_name("faults-resume").experiment_id],
                                "tags.kind = 'sweep'")
    assert len(parent) == 1 and parent[0].data.tags["status"] == "interrupted", out[-3000:]

    # a new sweep under the same name is refused; a resumed one finishes the rest
    with pytest.raises(sal_ray.ConfigError, match="name"):
        sal_ray.tune(**kw)
    res = sal_ray.tune(**kw, resume=True)

    runs = child_runs(client, "faults-resume", "resume")
    assert len(runs) == 6 == len(res.trials)                     # every trial once
    assert sorted(r.data.tags["trial"] for r in runs) == sorted(res.trials.trial_id)
    assert set(res.trials.status) == {"completed"}
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
        assert_complete_history(client, r, 8)
        if r.info.run_id in before:  # finished before Ctrl-C: not run again
            assert r.info.end_time == before[r.info.run_id].info.end_time
            assert r.info.start_time == before[r.info.run_id].info.start_time
    parents = client.search_runs([client.get_experiment_by_name("faults-resume").experiment_id],
                                 "tags.kind = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent[0].info.run_id]  # reused
    assert parents[0].data.tags["status"] == "completed"
    assert parents[0].info.status == "FINISHED"
    # every configuration of the grid once: the restored searcher did not repeat any
    assert sorted(zip(res.trials.method, res.trials.lr)) == \
        sorted((m, lr) for m in ("sal", "bp") for lr in (0.01, 0.02, 0.04))


# ---- the tracking server goes away mid-sweep and comes back ------------------------

def outage_server(folder: Path) -> MLflowServer:
    """A SQLite store served over HTTP, with its artifacts beside it."""
    return MLflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder,
                        ("--artifacts-destination", str(folder / "artifacts")))


class Outage(rt.Callback):
    """Stops the server at the first epoch-2 result; starts it again, in the
    background, `down_s` seconds later."""

    def __init__(self, server: MLflowServer, down_s: float):
        self.server, self.down_s = server, down_s
        self.stopped_at = self.back_at = None
        self.thread, self.results_while_down = None, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.stopped_at is not None and self.back_at is None:
            self.results_while_down += 1
        if self.stopped_at is None and result.get("epoch") == 2:
            self.server.stop()
            self.stopped_at = time.monotonic()
            self.thread = threading.Thread(target=self._back, daemon=True)
            self.thread.start()

    def _back(self):
        time.sleep(self.down_s)
        self.server.start()
        self.back_at = time.monotonic()

    def __reduce__(self):  # Tune pickles its callbacks; this one stays in this process
        return (object, ())


def test_a_tracking_outage_mid_sweep_loses_no_metric(ray_local, tmp_path):
    server = outage_server(tmp_path)
    server.start()
    outage = Outage(server, down_s=6.0)
    epochs = 12
    try:
        res = sal_ray.tune("digits", ["sal", "bp"], space={"lr": [0.02]}, sampler="grid",
                           fixed={"width": 64, "batch_size": 8, "n_areas": 4, "epochs": epochs},
                           tracking_uri=server.url, storage_path=tmp_path / "ray",
                           name="outage", experiment="faults-outage", flush_every_s=0.0,
                           callbacks=[outage], verbose=0, finish_wait_s=120)
        if outage.thread is not None:
            outage.thread.join(timeout=160)
        assert outage.stopped_at is not None and outage.back_at is not None
        assert outage.results_while_down >= 3  # training went on without the store
        assert set(res.trials.status) == {"completed"} and not res.undelivered
        client = mlflow.MlflowClient(server.url)
        runs = child_runs(client, "faults-outage", "outage")
        assert len(runs) == 2
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
            assert_complete_history(client, r, epochs)
            assert r.data.metrics["final_val_acc"] == pytest.approx(
                res.trials.set_index("method").loc[r.data.tags["method"], "final_val_acc_mean"])
        logged = [r for r in runs if r.data.tags.get("model_logged") == "true"]
        assert len(logged) == 2  # the best weights of each method reached the store too
        for r in logged:
            assert [a.path for a in client.list_artifacts(r.info.run_id, "model")]
    finally:
        server.stop()
