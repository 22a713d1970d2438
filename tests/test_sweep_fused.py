"""A trial's seeds fused in a real sweep (sal_ray/sweep/trial_pack.py): the same
configuration swept with fuse on and off gives each seed the same MLflow run
(name, tags, every epoch's metrics, to float64 rounding), and Tune one report
per epoch for the pack with the seed-epochs as its time. Without Ray: the pack's
reports to Tune, read off a stand-in for `tune.report`."""

from __future__ import annotations

import math

import pytest

import sal_ray
from sal_ray import Config
from sal_ray.sweep import trial_pack
from sal_ray.sweep.costs import CheckpointClock, Costs
from sal_ray.sweep.trial_state import TrialContext, TrialFolder
from sal_ray.tracking.sink import MLflowSink

mlflow = pytest.importorskip("mlflow")

FIXED = {"epochs": 3, "width": 32, "batch_size": 64, "n_areas": 4, "dtype": "float64",
         "lr": 0.05}
PER_EPOCH = ("train_loss", "train_acc", "val_loss", "val_acc")


def seed_runs(client, res):
    runs = client.search_runs([res.experiment_id], filter_string=f"tags.sweep = '{res.name}'")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    return sorted(kids, key=lambda r: int(r.data.tags["seed_index"]))


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                              key=lambda m: m.step)]


@pytest.mark.ray
def test_fused_seeds_are_the_runs_they_would_be_one_by_one(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    out = {}
    for fuse in (True, False):
        res = sal_ray.tune("digits", "sal", space={"lr_sel": [0.01]}, sampler="grid",
                           fixed={**FIXED, "fuse": fuse}, seeds=3, experiment="fused",
                           name=f"fuse-{fuse}", tracking_uri=uri, num_cpus=1,
                           storage_path=str(tmp_path / "ray"), verbose=0)
        assert len(res.trials) == 1 and res.trials.iloc[0]["status"] == "completed"
        out[fuse] = res, seed_runs(client, res)
    (fused, packed), (apart, alone) = out[True], out[False]
    assert len(packed) == len(alone) == 3
    for p, a in zip(packed, alone):
        assert p.info.status == a.info.status == "FINISHED"
        assert p.info.run_name == a.info.run_name  # "sal #.. s<seed> digits": names unchanged
        assert p.data.params["seed"] == a.data.params["seed"]
        assert (p.data.params["fuse"], a.data.params["fuse"]) == ("True", "False")
        assert p.data.tags["pack_size"] == "3" and "pack_size" not in a.data.tags
        for key in PER_EPOCH:
            hp, ha = history(client, p, key), history(client, a, key)
            assert [s for s, _ in hp] == [s for s, _ in ha] == [1, 2, 3]
            assert all(math.isclose(x, y, rel_tol=0, abs_tol=1e-9) for (_, x), (_, y) in zip(hp, ha))
        assert math.isclose(p.data.metrics["trial_final_val_acc_mean"],
                            a.data.metrics["trial_final_val_acc_mean"], abs_tol=1e-12)
    # Tune: one report per epoch for the pack, each seed's epoch per report apart;
    # the seed-epochs trained are the same (ASHA's and Optuna's time)
    assert fused.trials.iloc[0]["seed_epochs"] == apart.trials.iloc[0]["seed_epochs"] == 9
    assert math.isclose(fused.trials.iloc[0]["mean_val_acc"], apart.trials.iloc[0]["mean_val_acc"],
                        abs_tol=1e-12)


class PackTrial:
    """A two-seed trial's context, folder and MLflow sinks on a fresh SQLite store,
    with `tune.report` replaced by a list of (result, carried a checkpoint)."""

    def __init__(self, tmp_path, monkeypatch, checkpoint_every: int):
        from sal_ray.tracking import store
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.exp = store.check_store(self.uri, "pack-trial")
        self.ctx = TrialContext(sweep="unit", tracking_uri=self.uri, experiment_id=self.exp,
                                parent_run_id="", fixed={}, searched={}, metrics=("val_acc",),
                                modes=("max",), seeds=2, base_seed=0, log_model="none",
                                flush_every_s=0.0, checkpoint_every=checkpoint_every)
        self.folder = TrialFolder(self.ctx)
        self.reports, self.sinks = [], []
        monkeypatch.setattr(trial_pack.rt, "report", lambda m, checkpoint=None:
                            self.reports.append((m, checkpoint is not None)))

    def make_sink(self, i, cfg_flat, fallback):
        self.sinks.append(MLflowSink(self.uri, self.exp, key=f"unit/s{i}",
                                     outbox=self.folder.outbox, flush_every_s=0.0))
        return self.sinks[-1]

    def fit(self, flat: dict):
        every = self.ctx.checkpoint_every
        return trial_pack.fit_seeds_fused(self.ctx, self.folder, flat, {"dataset": "digits"},
                                          CheckpointClock(every, 0.0), Costs(), self.make_sink,
                                          "unit")


@pytest.fixture
def pack_trial(tmp_path, monkeypatch):
    trials = []

    def make(checkpoint_every: int) -> PackTrial:
        trials.append(PackTrial(tmp_path, monkeypatch, checkpoint_every))
        return trials[-1]
    yield make
    for t in trials:
        t.folder.remove()


def test_the_pack_reports_each_epoch_once_with_the_mean_over_its_seeds(pack_trial):
    t = pack_trial(checkpoint_every=2)
    flat = {**FIXED, "dataset": "digits", "method": "sal", "epochs": 4}
    assert trial_pack.fuses(t.ctx, Config.from_flat(flat), t.folder)
    assert not trial_pack.fuses(t.ctx, Config.from_flat({**flat, "fuse": False}), t.folder)
    results, reporter, why = t.fit(flat)
    assert why is None and [r.status for r in results] == ["completed", "completed"]
    # epochs 1-3 reported (the 4th is the trial's own last report), a checkpoint
    # with epoch 2, the pack's seed-epochs as the time
    assert [m["epoch"] for m, _ in t.reports] == [1, 2, 3]
    assert [shipped for _, shipped in t.reports] == [False, True, False]
    assert [m["seed_epochs"] for m, _ in t.reports] == [2, 4, 6]
    for m, _ in t.reports:
        e = int(m["epoch"]) - 1
        each = [r.history[e]["val_acc"] for r in results]
        assert m["mean_val_acc"] == m["val_acc"] == sum(each) / 2
        assert m["pack_size"] == m["members_training"] == 2
    assert reporter.last["epoch"] == 4 and (t.folder.trainer_dir / "pack.pt").exists()
    assert [s.status for s in t.sinks] == ["completed", "completed"]


def test_a_pack_whose_seeds_diverge_ends_each_run_diverged_and_reports_no_more(pack_trial):
    t = pack_trial(checkpoint_every=0)
    results, reporter, why = t.fit({**FIXED, "dataset": "digits", "method": "bp",
                                    "n_areas": 1, "lr": 1e3})
    assert why is None and [r.status for r in results] == ["diverged", "diverged"]
    assert all("exploded past 100 (diverge_loss) in epoch 1" in r.message for r in results)
    assert t.reports == [] and reporter.last is None  # no epoch of theirs was reported
    t.folder.outbox.deliver(force=True)
    client = mlflow.MlflowClient(t.uri)
    for sink in t.sinks:
        run = client.get_run(sink.run_id)
        assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
        assert run.data.tags["pack_size"] == "2"
