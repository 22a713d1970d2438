"""Real sweeps on Digits: local Ray (2 CPUs, one per session), real Optuna studies,
a real MLflow SQLite store (one per module, an experiment per sweep); then
everything is read back from MLflow.

Three small sweeps, each run once and shared by the tests below (a new Tune run
costs ~10 s of actor start-up here, so they are few and each covers much):
- search: TPE over lr and n_areas for sal, bp and moe, 2 trials each, 2 seeds.
- mixed: multi-objective TPE (val_acc against params_total) for sal; a bp that
  diverges (lr 1e3, seeds in turn); a moe the workers reject (device cuda on a
  CPU machine, seeds fused).
- asha: a grid whose first trials are good, so ASHA must stop the later ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re

import pytest
import torch

import sal_ray
from sal_ray import Config
from sal_ray.sweep import loguniform
from sal_ray.trainer import build

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.ray

BASE = {"epochs": 2, "width": 32, "batch_size": 32}
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "samples_per_s",
              "epoch_time_s", "wall_time_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating one costs seconds (migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('sweeps') / 'mlflow.db'}"


def sweep(tmp_path_factory, store, name, *args, **kwargs):
    root = tmp_path_factory.mktemp(name)
    kwargs.setdefault("verbose", 0)
    res = sal_ray.tune(*args, experiment=f"test-{name}", name=f"t-{name}", tracking_uri=store,
                       storage_path=str(root / "ray"), **kwargs)
    return res, mlflow.MlflowClient(store)


def children(res, client):
    runs = client.search_runs([res.experiment_id], filter_string=f"tags.sweep = '{res.name}'",
                              max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]


def parents(res, client):
    return client.search_runs([res.experiment_id], filter_string="tags.kind = 'sweep'")


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory, store):
    return sweep(tmp_path_factory, store, "search", ["digits"], ["sal", "bp", "moe"],
                 {"lr": loguniform(1e-2, 2e-1), "n_areas": [1, 4]}, fixed=BASE,
                 trials=2, seeds=2)


def test_one_parent_and_one_child_per_seed(search):
    res, client = search
    (parent,) = parents(res, client)
    assert parent.info.run_id == res.parent_run_id
    assert parent.info.run_name == "t-search" and parent.info.status == "FINISHED"
    assert parent.data.tags["status"] == "completed"
    assert "method" not in parent.data.params  # only leaf runs carry options
    kids = children(res, client)
    assert len(res.trials) == 6 and set(res.trials.status) == {"completed"}
    assert len(kids) == 6 * 2
    for (d, m), group in res.trials.groupby(["dataset", "method"]):
        assert len(group) == 2  # identical budgets
    by_trial = {}
    for r in kids:
        by_trial.setdefault(r.data.tags["trial"], []).append(r)
    assert set(by_trial) == set(res.trials.trial_id)
    for runs in by_trial.values():
        assert sorted(int(r.data.params["seed"]) for r in runs) == [0, 1]
        assert len({r.data.tags["config"] for r in runs}) == 1


def test_every_parameter_tag_and_metric_recorded(search):
    res, client = search
    for r in children(res, client):
        p, tags = r.data.params, r.data.tags
        flat = {k: v for k, v in p.items() if k in Config().to_flat()}
        expected = build(Config.from_flat(flat)).params()
        assert set(p) == set(map(str, expected))
        assert all(p[k] == str(v) for k, v in expected.items())
        assert tags["dataset"] == p["dataset"] == "digits" and tags["method"] == p["method"]
        assert tags["sweep"] == res.name and tags["status"] == "completed"
        assert r.info.status == "FINISHED"
        assert tags["git_commit"] and tags["git_dirty"] in ("true", "false", "unknown")
        assert tags["version.torch"] != "absent"
        assert "hw.cpu" in tags and "version.mlflow" in tags
        if p["method"] == "bp":
            assert p["n_areas"] == "1"
        lr = float(p["lr"])
        shown = {"lr": f"lr{lr:.3g}", "n_areas": f"n{p['n_areas']}"}
        assert r.info.run_name == " ".join(
            [p["method"], f"#{tags['trial_number']}",
             *(shown[k] for k in tags["searched"].split(",")), f"s{p['seed']}", "digits"])
        for key in EPOCH_KEYS:
            hist = client.get_metric_history(r.info.run_id, key)
            assert [m.step for m in hist] == [1, 2], key
        if p["n_areas"] == "4":  # the shares are an artifact (tests/test_sweep_answer.py)
            local = client.download_artifacts(r.info.run_id, "area_usage.json")
            shares = json.loads(pathlib.Path(local).read_text())["epochs"][-1]["share"][0]
            assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
            assert [m.step for m in client.get_metric_history(r.info.run_id, "areas_used.l0")] \
                == [1, 2]
        last = {k: client.get_metric_history(r.info.run_id, k)[-1].value for k in EPOCH_KEYS}
        for k in ("val_acc", "val_loss", "train_loss", "train_acc"):
            assert r.data.metrics[f"final_{k}"] == pytest.approx(last[k])
        assert r.data.metrics["mean_samples_per_s"] > 0


def test_best_configuration_is_the_best_in_mlflow(search):
    res, client = search
    kids = children(res, client)
    for (d, m), best in res.best.items():
        per_trial = {}
        for r in kids:
            if r.data.tags["method"] == m:
                per_trial.setdefault(r.data.tags["trial"], []).append(
                    r.data.metrics["final_val_acc"])
        means = {t: sum(v) / len(v) for t, v in per_trial.items()}
        top = max(means.values())
        assert best["mean_val_acc"] == pytest.approx(top, abs=1e-12)
        assert means[best["trial_id"]] == pytest.approx(top, abs=1e-12)
        runs = [r for r in kids if r.data.tags["trial"] == best["trial_id"]]
        assert {r.info.run_id for r in runs} == set(best["mlflow_run_ids"].split(","))
        for r in runs:  # the best trial's weights are in MLflow, and load into its net
            assert r.data.tags.get("model_logged") == "true"
            assert r.data.metrics["trial_final_val_acc_mean"] == pytest.approx(top)
            files = [f.path for f in client.list_artifacts(r.info.run_id, "model")]
            (path,) = [f for f in files if f.endswith(f"s{r.data.params['seed']}.pt")]
            local = client.download_artifacts(r.info.run_id, path)
            net = build(Config.from_flat({k: v for k, v in r.data.params.items()
                                          if k in Config().to_flat()})).net
            net.load_state_dict(torch.load(local, weights_only=True))
        assert best["config"]["method"] == m
        assert best["params"]["lr"] == pytest.approx(float(runs[0].data.params["lr"]))


def test_results_tables_and_studies(search):
    res, client = search
    s = res.summary()
    assert list(s.method) == ["sal", "bp", "moe"] and (s.completed == 2).all()
    text = res.table()
    assert "val acc %" in text and "bp" in text and "±" in text
    assert "127.0.0.1" in res.ui_command and res.tracking_uri in res.ui_command
    for key, study in res.studies.items():
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(done) == 2
        for t in done:
            row = res.trials[res.trials.trial_id == t.user_attrs["tune_trial_id"]].iloc[0]
            assert t.value == pytest.approx(row.mean_val_acc)
    arts = {f.path for f in client.list_artifacts(res.parent_run_id)}
    assert {"trials.csv", "summary.csv", "summary.txt", "best.json"} <= arts
    runs = res.runs()
    assert len(runs) == 12


@pytest.fixture(scope="module")
def mixed(ray_session, tmp_path_factory, store):
    return sweep(tmp_path_factory, store, "mixed", ["digits"], ["sal", "bp", "moe"],
                 {"lr": loguniform(1e-2, 2e-1), "n_areas": [1, 2, 4]},
                 method_spaces={"bp": {"lr": 1e3, "fuse": False},
                                "moe": {"lr": 0.05, "n_areas": 2,
                                                           "device": "cuda"}},
                 fixed={**BASE, "epochs": 1}, trials=3, seeds=2,
                 metric=["val_acc", "params_total"], mode=["max", "min"])


def test_diverged_and_rejected_trials_are_recorded_and_the_sweep_goes_on(mixed):
    if torch.cuda.is_available():
        pytest.skip("device cuda is valid here")
    res, client = mixed
    status = dict(zip(res.trials.method, res.trials.status))
    assert len(res.trials) == 5  # sal 3; bp and moe have nothing to search: 1 each
    assert status == {"sal": "completed", "bp": "diverged", "moe": "failed"}
    kids = children(res, client)
    by_status = {}
    for r in kids:
        by_status.setdefault(r.data.tags["status"], []).append(r)
    assert len(by_status["completed"]) == 3 * 2
    # bp runs its seeds in turn (fuse off): the second is not run once the first diverged
    (div,) = by_status["diverged"]
    assert div.info.status == "FAILED" and "non-finite" in div.data.tags["status_message"]
    assert div.data.params["lr"] == "1000.0" and "final_val_acc" not in div.data.metrics
    assert div.data.params["fuse"] == "False" and "pack_size" not in div.data.tags
    (bad,) = by_status["failed"]
    assert bad.info.status == "FAILED" and "device" in bad.data.tags["status_message"]
    assert bad.data.params["device"] == "cuda"  # the options are there to see what failed
    assert set(res.best) == {("digits", "sal")}
    states = {(k, t.user_attrs["status"], t.state.name) for k, s in res.studies.items()
              for t in s.trials}
    assert states == {("digits/sal", "completed", "COMPLETE"), ("digits/bp", "diverged", "PRUNED"),
                      ("digits/moe", "failed", "FAIL")}
    assert not [r for r in client.search_runs([res.experiment_id]) if r.info.status == "RUNNING"]
    assert "(none completed)" in res.table()


def test_multi_objective_search(mixed):
    res, client = mixed
    study = res.studies["digits/sal"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = res.trials[res.trials.status == "completed"]
    assert len(done) == 3
    for t in study.trials:
        row = done[done.trial_id == t.user_attrs["tune_trial_id"]].iloc[0]
        assert t.values == pytest.approx([row.mean_val_acc, row.mean_params_total])
    front = res.pareto[("digits", "sal")]
    assert 1 <= len(front) <= 3
    for a in front.itertuples():
        assert not any(b.mean_val_acc >= a.mean_val_acc and b.mean_params_total <= a.mean_params_total
                       and (b.mean_val_acc, b.mean_params_total) != (a.mean_val_acc, a.mean_params_total)
                       for b in done.itertuples())
    best = res.best[("digits", "sal")]
    assert best["mean_val_acc"] == done.mean_val_acc.max()


@pytest.fixture(scope="module")
def asha(ray_session, tmp_path_factory, store):
    # one trial at a time, a good learning rate first: ASHA records it at every rung,
    # so the next (poor) one falls below the cutoff at rung 1 and is stopped
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        res, client = sweep(tmp_path_factory, store, "asha", ["digits"], ["sal"],
                            {"lr": [0.1, 1e-6, 2e-6, 3e-6]}, sampler="grid",
                            fixed={**BASE, "epochs": 3, "n_areas": 1}, seeds=1,
                            scheduler={"grace_period": 1, "reduction_factor": 2},
                            max_concurrent=1, verbose=1)
    return res, client, console.getvalue()


def test_asha_stops_poor_trials_and_best_is_among_completed(asha):
    res, client, console = asha
    # a stopped trial's last checkpoint holds metrics that were only buffered; the
    # trial delivered them itself: no outage happened, and none is reported
    assert "outage" not in console and "delivered" not in console
    assert "sweep 't-asha' done" in console and not res.undelivered
    st = dict(zip(res.trials.lr, res.trials.status))
    assert st[0.1] == "completed" and st[1e-6] == "stopped"
    assert set(st.values()) <= {"completed", "stopped"}
    assert res.best[("digits", "sal")]["params"]["lr"] == 0.1
    kids = children(res, client)
    for r in kids:
        lr = float(r.data.params["lr"])
        assert r.data.tags["status"] == st[lr]
        assert r.info.status == ("FINISHED" if st[lr] == "completed" else "KILLED")
        n = len(client.get_metric_history(r.info.run_id, "val_acc"))
        assert n == 3 if st[lr] == "completed" else n < 3
    (study,) = res.studies.values()
    assert sorted(t.state.name for t in study.trials) == sorted(
        "COMPLETE" if s == "completed" else "PRUNED" for s in st.values())


def test_the_documented_search_filters_work(search):
    """Every filter docs/sweeps.md shows parses against a real store."""
    res, client = search
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    block = re.search(r"Search filters.*?```\n(.*?)```", doc, re.S).group(1)
    filters = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(filters) >= 6
    for f in filters:
        f = re.sub(r"tags.sweep = '[^']*'", f"tags.sweep = '{res.name}'", f)
        client.search_runs([res.experiment_id], filter_string=f)  # raises if malformed
    hits = client.search_runs([res.experiment_id],
                              filter_string="params.method = 'sal' and params.dataset = 'digits'")
    assert len(hits) == 4
    assert len(client.search_runs([res.experiment_id],
                                  filter_string="tags.model_logged = 'true'")) >= 3 * 2
