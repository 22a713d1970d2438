"""Same-shape configurations fused in one Tune trial (`fuse_configs`,
sal_ray/sweep/trial_configs.py): each configuration keeps its own Optuna trial
(its values, steps and end), its own row and MLflow runs, and the values it
would have had in its own trial; a configuration that diverges ends alone.
Without Ray: what the plan refuses, and how a fused trial's result splits."""

from __future__ import annotations

import math

import pytest

import sal_ray
from sal_ray.config import ConfigError
from sal_ray.sweep import plan
from sal_ray.sweep.console import size
from sal_ray.sweep.results import members
from sal_ray.sweep.trial_state import member_result

FIXED = {"epochs": 2, "width": 32, "batch_size": 64, "n_areas": 4, "dtype": "float64"}


def test_the_plan_counts_tune_trials_and_says_so():
    p = plan("digits", "sal", {"lr": [0.01, 0.05, 0.1], "lr_sel": [0.01, 0.02]},
             sampler="grid", fuse_configs=4, data="skip")
    assert (p.total_trials, p.tune_trials, p.fuse_configs) == (6, 2, 4)
    assert "up to 4 configurations fused per Tune trial (2 Tune trial(s)" in p.describe()
    assert plan("digits", "sal", {"lr": [0.1, 0.2]}, sampler="grid", data="skip").tune_trials == 2


@pytest.mark.parametrize("kwargs, said", [
    ({"fuse_configs": 0}, "must be a positive integer"),
    ({"fuse_configs": True}, "must be a positive integer"),
    ({"fuse_configs": 2, "space": {"lr": [0.1, 0.2], "n_areas": [2, 4]}},
     "digits/sal searches n_areas, which they must share"),
    ({"fuse_configs": 2, "scheduler": "fifo_object"}, "cannot run under a FIFOScheduler"),
    ({"fuse_configs": 2, "resources": {"workers": 2, "cpu": 1}}, "not on Ray Train workers"),
    ({"fuse_configs": 2, "fixed": {"fuse": False}}, "fixes fuse=false"),
])
def test_what_cannot_fuse_is_refused_by_name(kwargs, said):
    args = {"space": {"lr": [0.1, 0.2]}, "sampler": "grid", **kwargs}
    if args.get("scheduler") == "fifo_object":  # a Ray scheduler stops whole trials
        from ray.tune.schedulers import FIFOScheduler
        args["scheduler"] = FIFOScheduler()
    with pytest.raises(ConfigError, match="fuse_configs") as e:
        plan("digits", "sal", data="skip", **args)
    assert said in str(e.value)


def test_a_fused_trials_result_splits_into_its_configurations():
    last = {"dataset": "digits", "method": "sal", "seed_epochs": 4, "trial_status": "completed",
            "mean_val_acc": 0.9, "c0/mean_val_acc": 0.5, "c0/trial_status": "diverged",
            "c1/mean_val_acc": 0.9, "c1/trial_status": "completed", "c10/mean_val_acc": 0.1}
    assert member_result(last, 0) == {"dataset": "digits", "method": "sal", "seed_epochs": 4,
                                      "trial_status": "diverged", "mean_val_acc": 0.5}
    assert member_result(last, 1)["mean_val_acc"] == 0.9
    assert member_result(last, 10)["mean_val_acc"] == 0.1
    assert "mean_val_acc" not in member_result(last, 2)  # not the best configuration's
    rec = {"trial_id": "t1", "config": {"dataset": "digits", "method": "sal",
                                        "configs": [{"lr": 0.1}, {"lr": 0.2}]},
           "last": last, "status": "completed", "error": "", "checkpoint": "ck"}
    split = members(rec, error=False)
    assert [(r["trial_id"], r["config"], r["status"], r["checkpoint"]) for r in split] == [
        ("t1-c0", {"dataset": "digits", "method": "sal", "lr": 0.1}, "diverged", "ck"),
        ("t1-c1", {"dataset": "digits", "method": "sal", "lr": 0.2}, "completed", None)]
    # a trial that crashed before its first report: every configuration crashed
    assert [r["status"] for r in members({**rec, "last": {}}, error=True)] == ["crashed"] * 2
    assert members({**rec, "config": {"lr": 0.1}}, error=False) == [{**rec, "config": {"lr": 0.1}}]
    assert (size(rec["config"]), size({"lr": 0.1})) == (2, 1)


@pytest.mark.ray
def test_fused_configurations_are_the_trials_they_would_be_apart(ray_session, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    space = {"lr": [0.02, 0.1, 1e3], "lr_sel": [0.01]}  # lr 1e3 diverges
    out = {}
    for k in (2, 1):
        out[k] = sal_ray.tune("digits", "sal", space=space, sampler="grid", fixed=FIXED,
                              seeds=2, experiment="fused-configs", name=f"fc-{k}",
                              tracking_uri=uri, num_cpus=2, storage_path=str(tmp_path / "ray"),
                              verbose=0, fuse_configs=k, log_model="all")
    fused, apart = out[2], out[1]
    tf, ta = (r.trials.sort_values("lr").reset_index(drop=True) for r in (fused, apart))
    # one row per configuration, as apart; ids <tune trial>-c<j>
    assert list(tf.lr) == list(ta.lr) == [0.02, 0.1, 1e3]
    assert list(tf.status) == list(ta.status) == ["completed", "completed", "diverged"]
    assert all(t.rsplit("-c", 1)[1] in ("0", "1") for t in tf.trial_id)
    assert len({t.rsplit("-c", 1)[0] for t in tf.trial_id}) == 2  # 3 configurations, 2 trials
    for col in ("mean_val_acc", "final_val_acc_mean", "final_val_acc_std", "final_train_loss_mean"):
        for x, y in zip(tf[col][:2], ta[col][:2]):
            assert math.isclose(x, y, rel_tol=0, abs_tol=1e-12), col
    assert list(tf.seed_epochs[:2]) == list(ta.seed_epochs[:2]) == [4, 4]
    assert fused.best[("digits", "sal")]["trial_id"] in set(tf.trial_id)
    assert fused.best[("digits", "sal")]["params"] == apart.best[("digits", "sal")]["params"]
    # Optuna: one trial per configuration, told its own value and steps, the diverged PRUNED
    (study,) = fused.studies.values()
    told = sorted((t.params["lr"], t.state.name, t.values, sorted(t.intermediate_values),
                   t.user_attrs["tune_trial_id"]) for t in study.get_trials())
    assert [(lr, state) for lr, state, *_ in told] == [(0.02, "COMPLETE"), (0.1, "COMPLETE"),
                                                       (1e3, "PRUNED")]
    for (lr, _, values, steps, mid), row in zip(told[:2], tf.itertuples()):
        assert values == [pytest.approx(row.mean_val_acc, abs=1e-12)] and steps == [2, 4]
        assert mid == row.trial_id
    # MLflow: every configuration's seeds their own runs, tagged with its id
    runs = client.search_runs([fused.experiment_id], filter_string="tags.sweep = 'fc-2'")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == fused.parent_run_id]
    assert len(kids) == 6 and len({r.info.run_name for r in kids}) == 6
    assert {r.data.tags["pack_configs"] for r in kids} == {"2", "1"}  # 2 + 1 configurations
    for row in tf.itertuples():
        mine = [r for r in kids if r.data.tags["trial"] == row.trial_id]
        assert sorted(r.data.params["seed"] for r in mine) == ["0", "1"]
        assert {r.data.params["lr"] for r in mine} == {str(row.lr)}
        assert {r.data.tags["trial_status"] for r in mine} == {row.status}
        assert set(row.mlflow_run_ids.split(",")) == {r.info.run_id for r in mine}
        if row.status == "completed":
            for r in mine:
                assert r.data.metrics["trial_final_val_acc_mean"] == pytest.approx(
                    row.final_val_acc_mean, abs=1e-12)
                assert r.data.tags.get("model_logged") == "true"
                assert r.info.status == "FINISHED"


@pytest.mark.ray
def test_asha_stops_each_fused_configuration_on_its_own(ray_session, tmp_path):
    # one Tune trial of two configurations; at the first rung ASHA stops the one
    # that barely learns (lr 1e-7): its seeds stop in the pack, the other trains on
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = sal_ray.tune("digits", "sal", space={"lr": [0.1, 1e-7]}, sampler="grid",
                       fixed={**FIXED, "epochs": 4}, seeds=1, experiment="fused-asha",
                       name="fc-asha", tracking_uri=uri, num_cpus=2,
                       storage_path=str(tmp_path / "ray"), verbose=0, fuse_configs=2,
                       scheduler={"grace_period": 1, "reduction_factor": 2})
    t = res.trials.sort_values("lr", ascending=False).reset_index(drop=True)
    assert len({tid.rsplit("-c", 1)[0] for tid in t.trial_id}) == 1  # one Tune trial
    assert list(t.status) == ["completed", "stopped"]
    assert list(t.seed_epochs) == [4, 1]
    assert t.mean_val_acc[0] > t.mean_val_acc[1]  # what each reached, its own
    (study,) = res.studies.values()
    told = {tr.params["lr"]: (tr.state.name, sorted(tr.intermediate_values))
            for tr in study.get_trials()}
    assert told == {0.1: ("COMPLETE", [1, 2, 3, 4]), 1e-7: ("PRUNED", [1])}
    client = mlflow.MlflowClient(uri)
    runs = {r.data.tags["trial"]: r for r in client.search_runs(
        [res.experiment_id], filter_string="tags.sweep = 'fc-asha'")
        if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id}
    good, bad = runs[t.trial_id[0]], runs[t.trial_id[1]]
    assert (good.info.status, good.data.tags["trial_status"]) == ("FINISHED", "completed")
    assert (bad.info.status, bad.data.tags["trial_status"]) == ("KILLED", "stopped")
    assert len(client.get_metric_history(good.info.run_id, "val_acc")) == 4
    assert len(client.get_metric_history(bad.info.run_id, "val_acc")) == 1


@pytest.mark.ray
def test_a_resumed_driver_puts_its_stops_on_a_new_board(ray_session):
    # the decisions travel with the searcher's pickle; the board is the driver's
    # and dies with it, so the next driver's board gets them again
    import pickle
    import time

    import ray

    from sal_ray.sweep.stops import ConfigASHA, board_name, stopped_configs
    p = plan("digits", "sal", {"lr": [0.1, 1e-7]}, sampler="grid", fuse_configs=2,
             data="skip", fixed={"epochs": 4}, name="asha-board",
             scheduler={"grace_period": 1, "reduction_factor": 2})
    first = ConfigASHA(p)
    for j in (0, 1):
        first.add(f"t1-c{j}")
    first.result("t1", 0, "t1-c0", {"seed_epochs": 1, "mean_val_acc": 0.9})
    first.result("t1", 1, "t1-c1", {"seed_epochs": 1, "mean_val_acc": 0.1})
    assert stopped_configs(p.name, "t1") == [1] and first.stopped == {"t1-c1"}
    again = pickle.loads(pickle.dumps(first))
    ray.kill(first.handle())
    del first
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(board_name(p.name))
        except ValueError:
            break
        time.sleep(0.1)
    assert stopped_configs(p.name, "t1") == []  # the old driver's board is gone
    again.handle()  # the new driver's
    assert stopped_configs(p.name, "t1") == [1]
    again.result("t1", 1, "t1-c1", {"seed_epochs": 2, "mean_val_acc": 0.1})  # decided once
    assert again.stopped == {"t1-c1"}
