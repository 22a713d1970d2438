"""The MLflow sink on its own: a real trainer run into a real SQLite store, read back."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from sal_ray import Config, fit
from sal_ray.tracking import provenance, writes
from sal_ray.tracking import store as tracking_store
from sal_ray.tracking.sink import MLflowSink
from sal_ray.trainer import build

mlflow = pytest.importorskip("mlflow")

CFG = Config().replace(epochs=3, width=32, n_areas=4, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: creating a SQLite store runs MLflow's migrations (seconds)."""
    uri = tracking_store.resolve_uri(f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}")
    return uri, tracking_store.check_store(uri, "tracking-test"), mlflow.MlflowClient(uri)


def test_resolve_uri_is_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_store.resolve_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_store.resolve_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_store.resolve_uri() == f"sqlite:///{tmp_path / 'env.db'}"
    assert tracking_store.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    cmd = tracking_store.ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cmd.startswith("mlflow ui --backend-store-uri sqlite:////") and "--host 127.0.0.1" in cmd


def test_a_run_records_params_metrics_tags_and_final(store):
    uri, exp, client = store
    sink = MLflowSink(uri, exp, tags={"sweep": "unit"}, flush_every_s=0.0)
    result = fit(CFG, [sink])
    run = client.get_run(sink.run_id)
    expected = build(CFG).params()
    assert run.data.params == {k: str(v) for k, v in expected.items()}
    assert run.info.run_name == "sal n4 lr0.05 s0 digits" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["dataset"], tags["method"], tags["status"], tags["sweep"]) == \
        ("digits", "sal", "completed", "unit")
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert {"version.torch", "version.mlflow", "hw.cpu", "hw.cpu_count", "hw.gpu"} <= set(tags)
    assert not any("secret" in k.lower() or "token" in k.lower() for k in tags)
    # the per-area shares are one artifact, the whole matrix per epoch (tracking.usage)
    usage = json.loads(pathlib.Path(client.download_artifacts(
        sink.run_id, "area_usage.json")).read_text())
    assert [e["epoch"] for e in usage["epochs"]] == [1, 2, 3] and usage["layers"] == [0]
    for key, value in result.final.items():
        if key == "epoch":
            continue
        if key.startswith("area_share."):
            area = int(key.rsplit(".a", 1)[1])
            assert [e["share"][0][area] for e in usage["epochs"]] == \
                pytest.approx([h[key] for h in result.history]), key
            assert not client.get_metric_history(sink.run_id, key)  # not a chart per area
            continue
        hist = client.get_metric_history(sink.run_id, key)
        assert [m.step for m in hist] == [1, 2, 3], key
        assert [m.value for m in hist] == pytest.approx([h[key] for h in result.history])
        if not key.startswith("area_share."):
            assert run.data.metrics[f"final_{key}"] == pytest.approx(value)
    assert run.data.metrics["epochs_done"] == 3


def test_metrics_are_buffered(store, monkeypatch):
    uri, exp, client = store
    calls = []
    real, real_batch = writes.log_metrics, writes.log_batch
    monkeypatch.setattr(writes, "log_metrics", lambda *a: (calls.append(len(a[1])), real(*a)))
    # the end's status tags join the metrics in one log_batch (Outbox merges them)
    monkeypatch.setattr(writes, "log_batch", lambda run_id, uri, **kw: (
        kw["metrics"] and calls.append(len(kw["metrics"])), real_batch(run_id, uri, **kw)))
    sink = MLflowSink(uri, exp, flush_every_s=3600)
    fit(CFG, [sink])
    assert len(calls) == 1  # three epochs and the final metrics in one write
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"


def test_params_go_in_batches_and_long_values_are_cut(store):
    uri, exp, client = store
    extra = {f"extra_{i:03d}": i for i in range(250)}
    extra["long"] = "x" * 10_000
    sink = MLflowSink(uri, exp, extra_params=extra)
    fit(CFG.replace(epochs=1), [sink])
    params = client.get_run(sink.run_id).data.params
    assert all(params[k] == str(v) for k, v in extra.items() if k != "long")
    assert params["long"] == "x" * writes.MAX_PARAM_CHARS


def test_a_diverged_run_is_marked_and_has_no_final_metrics(store):
    uri, exp, client = store
    sink = MLflowSink(uri, exp)
    result = fit(Config().replace(method="bp", lr=1e3, width=32, epochs=2), [sink])
    assert result.status == "diverged"
    run = client.get_run(sink.run_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
    assert "non-finite" in run.data.tags["status_message"]
    assert not any(k.startswith("final_") for k in run.data.metrics)


def test_close_ends_a_run_the_trainer_never_ended(store):
    uri, exp, client = store
    sink = MLflowSink(uri, exp)
    sink.open(CFG.to_flat())
    sink.close("stopped", "stopped by the scheduler")
    sink.close("crashed")  # a second ending is ignored
    run = client.get_run(sink.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status"] == "stopped"


def test_code_version_is_this_checkout():
    v = provenance.code_version()
    repo = pathlib.Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        assert len(v["git_commit"]) == 40 and v["git_dirty"] in ("true", "false")
    env = provenance.environment()
    assert env["version.python"] and env["hw.cpu_count"] == str(os.cpu_count())


def test_store_check_creates_the_experiment_once(store):
    uri, _, client = store
    first = tracking_store.check_store(uri, "exp 2")
    assert tracking_store.check_store(uri, "exp 2") == first
    folder = pathlib.Path(uri[len("sqlite:///"):]).parent
    # next to the store, absolute, one folder per experiment
    assert client.get_experiment(first).artifact_location == \
        (folder / "mlartifacts" / "exp_2").as_uri()
