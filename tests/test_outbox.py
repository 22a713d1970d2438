"""The outbox on its own, in-process, on a real SQLite store: a store that stops
answering mid-run loses nothing and doubles nothing; a restarted process takes
up the run an earlier one made."""

from __future__ import annotations

import pytest

from sal_ray import Config, fit
from sal_ray.tracking import writes
from sal_ray.tracking import store as tracking_store
from sal_ray.tracking.sink import MLflowSink
from sal_ray.trainer import Callback
from sal_ray.tracking.outbox import Outbox

mlflow = pytest.importorskip("mlflow")

CFG = Config().replace(epochs=4, width=32, n_areas=4, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = tracking_store.resolve_uri(f"sqlite:///{tmp_path_factory.mktemp('outbox') / 'mlflow.db'}")
    return uri, tracking_store.check_store(uri, "outbox-test"), mlflow.MlflowClient(uri)


class Down:
    """Makes tracking's writes fail while `down` (as an unreachable server does);
    `partial`: the failing metrics write first stores half of its points."""

    def __init__(self, monkeypatch, partial: bool = False):
        self.down, self.partial, self.calls = False, partial, 0
        real_metrics, real_params = writes.log_metrics, writes.log_params

        def log_metrics(run_id, metrics, uri):
            self.calls += 1
            if self.down:
                if self.partial:
                    real_metrics(run_id, metrics[:len(metrics) // 2], uri)
                raise ConnectionError("store unreachable (test)")
            real_metrics(run_id, metrics, uri)

        def log_params(run_id, params, uri):
            if self.down:
                raise ConnectionError("store unreachable (test)")
            real_params(run_id, params, uri)
        real_batch = writes.log_batch

        def log_batch(run_id, uri, params, tags, metrics):  # merged writes (Outbox)
            self.calls += 1
            if self.down:
                if self.partial:
                    real_batch(run_id, uri, params={}, tags={}, metrics=metrics[:len(metrics) // 2])
                raise ConnectionError("store unreachable (test)")
            real_batch(run_id, uri, params=params, tags=tags, metrics=metrics)
        monkeypatch.setattr(writes, "log_metrics", log_metrics)
        monkeypatch.setattr(writes, "log_params", log_params)
        monkeypatch.setattr(writes, "log_batch", log_batch)


class Outage(Callback):
    """The store is down for the writes of epochs `at` to `back` - 1."""

    def __init__(self, down: Down, at: int, back: int):
        self.d, self.at, self.back = down, at, back

    def on_epoch(self, m):
        e = int(m["epoch"])
        self.d.down = self.at <= e < self.back


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("partial", [False, True])
def test_an_outage_mid_run_loses_and_doubles_nothing(store, monkeypatch, partial):
    uri, exp, client = store
    down = Down(monkeypatch, partial)
    sink = MLflowSink(uri, exp, flush_every_s=0.0)
    # the outage callback runs first: epochs 1 and 2 are written while the store is down
    result = fit(CFG, [Outage(down, at=1, back=3), sink])
    assert result.status == "completed" and sink.outbox.pending == 0
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    for key in ("val_loss", "val_acc", "train_loss", "areas_used.l0", "area_entropy_bits.l0",
                "area_max_share.l0"):
        assert steps(client, sink.run_id, key) == [1, 2, 3, 4], key
    assert steps(client, sink.run_id, "final_val_acc") == [4]
    vals = sorted(client.get_metric_history(sink.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.value for m in vals] == pytest.approx([h["val_loss"] for h in result.history])


def test_writes_wait_while_the_store_is_down_and_training_goes_on(store, monkeypatch):
    uri, exp, client = store
    down = Down(monkeypatch)
    sink = MLflowSink(uri, exp, flush_every_s=0.0)
    result = fit(CFG, [Outage(down, at=2, back=99), sink])  # never back during the run
    assert result.status == "completed" and len(result.history) == 4
    assert sink.outbox.pending > 0 and "unreachable" in sink.outbox.error
    assert steps(client, sink.run_id, "val_loss") == [1]  # only what went before
    down.down = False
    assert sink.outbox.deliver(force=True)
    assert steps(client, sink.run_id, "val_loss") == [1, 2, 3, 4]
    assert client.get_run(sink.run_id).data.tags["status"] == "completed"


def test_a_restarted_process_takes_up_its_run(store, tmp_path):
    """A first process creates the run and sends epochs 1-2, saves its outbox at a
    checkpoint after epoch 1 and dies; the second, from that outbox, re-sends what
    was pending and finishes the run: one run, every point once."""
    uri, exp, client = store
    box = Outbox(uri, exp, tmp_path / "outbox")
    first = MLflowSink(uri, exp, key="outbox-test/trial_1/s0", outbox=box,
                               flush_every_s=3600)
    cfg = CFG.replace(epochs=2)
    ckpt = tmp_path / "trainer"

    class SaveAt1(Callback):
        def on_epoch(self, m):
            if m["epoch"] == 1:
                box.save()  # the checkpoint: epoch 1's metrics are still pending
    fit(cfg, [first, SaveAt1()], checkpoint_dir=str(ckpt), checkpoint_every=1)
    assert box.pending == 0  # the first process got everything through before "dying"

    restored = Outbox.load(uri, tmp_path / "outbox")
    assert restored.pending > 0 and restored.uncertain
    again = MLflowSink(uri, exp, key="outbox-test/trial_1/s0", outbox=restored,
                               flush_every_s=0.0)
    # the epoch-1 checkpoint of the trainer is gone: resume from scratch with 4 epochs
    fit(CFG, [again])
    runs = client.search_runs([exp], "tags.run_key = 'outbox-test/trial_1/s0'")
    assert len(runs) == 1 and runs[0].info.run_id == first.run_id == again.run_id
    assert steps(client, again.run_id, "val_loss") == [1, 2, 3, 4]
    assert runs[0].info.status == "FINISHED"


def test_a_write_the_store_refuses_for_good_is_dropped_and_reported(store, monkeypatch):
    uri, exp, client = store
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    sink = MLflowSink(uri, exp, flush_every_s=0.0)
    fit(CFG.replace(epochs=1), [sink])

    def refuse(*a, **k):
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)
    monkeypatch.setattr(writes, "log_tags", refuse)
    sink.outbox.tags(sink.key, {"x": "y"})
    assert sink.outbox.deliver(force=True)
    assert sink.outbox.pending == 0 and "bad value" in sink.outbox.dropped[-1]


def test_writes_of_one_run_go_in_one_batch_and_a_refused_one_drops_alone(store, monkeypatch):
    uri, exp, client = store
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    sink = MLflowSink(uri, exp, flush_every_s=3600, hold_end=True)
    fit(CFG.replace(epochs=2), [sink])
    box = sink.outbox
    # held: nothing sent yet (a routed net's area usage matrix is a file of its own)
    assert [op["op"] for op in box.ops] == ["metrics", "artifact", "end"]
    box.metrics(sink.key, writes.metric_list({"trial_x": 1.0}, 0))
    box.tags(sink.key, {"model_logged": "true"})
    box.artifact_text(sink.key, "{}", "model/reference.json")
    box.tags(sink.key, {"after_the_file": "1"})
    batches, single, files = [], [], []
    real_batch, real_tags, real_metrics = writes.log_batch, writes.log_tags, writes.log_metrics
    monkeypatch.setattr(writes, "log_batch", lambda *a, **kw: (batches.append(kw),
                                                              real_batch(*a, **kw)))
    monkeypatch.setattr(writes, "log_tags", lambda *a: (single.append(a), real_tags(*a)))
    monkeypatch.setattr(writes, "log_metrics", lambda *a: (single.append(a), real_metrics(*a)))
    real_file = mlflow.MlflowClient.log_artifact
    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", lambda self, run_id, path, where:
                        (files.append((len(batches), where)), real_file(self, run_id, path, where)))
    before = box.written  # the create and the params, at the start
    assert box.deliver(force=True) and box.written == before + 7
    # metrics, end, metrics and both tags in one batch; the run's files after it
    assert len(batches) == 1 and not single
    assert batches[0]["tags"] == {"status": "completed", "model_logged": "true",
                                  "after_the_file": "1"}
    assert {m.key for m in batches[0]["metrics"]} >= {"val_loss", "trial_x"}
    assert files == [(1, ""), (1, "model")]
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.tags["model_logged"] == "true" and run.data.metrics["trial_x"] == 1.0
    assert steps(client, sink.run_id, "val_loss") == [1, 2]
    assert [a.path for a in client.list_artifacts(sink.run_id)] == ["area_usage.json", "model"]

    # a merged write the store refuses for good: sent again one by one, only the bad
    # op is dropped (the run is uncertain: nothing it holds is sent twice)
    def refuse_bad(run_id, tags, uri):
        if "bad" in tags:
            raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)
        real_tags(run_id, tags, uri)
    monkeypatch.setattr(writes, "log_batch", lambda *a, **kw: (_ for _ in ()).throw(
        MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)))
    monkeypatch.setattr(writes, "log_tags", refuse_bad)
    box.tags(sink.key, {"bad": "x"})
    box.tags(sink.key, {"good": "y"})
    assert box.deliver(force=True) and box.pending == 0
    assert len(box.dropped) == 1 and box.dropped[0].startswith("tags for") and \
        "bad value" in box.dropped[0]
    assert client.get_run(sink.run_id).data.tags["good"] == "y"


def test_a_checkpoints_copy_of_writes_the_live_process_delivered_counts_as_none(store, tmp_path):
    """A checkpoint taken mid-run holds the per-epoch metrics that were only
    buffered then (no outage); a trial the scheduler stops takes no later one,
    and delivers them itself on the way out. Delivering the checkpoint's copy at
    the sweep's end writes nothing twice and counts nothing: no false outage."""
    uri, exp, client = store
    box = Outbox(uri, exp, tmp_path / "outbox")
    live = MLflowSink(uri, exp, key="outbox-test/trial_9/s0", outbox=box, flush_every_s=3600)

    class CheckpointAt2(Callback):
        def on_epoch(self, m):
            if m["epoch"] == 2:
                box.save()  # buffered, not failed: epochs 1-2's metrics wait here
    fit(CFG, [live, CheckpointAt2()])
    assert box.pending == 0  # the live process delivered everything itself
    copy = Outbox.load(uri, tmp_path / "outbox")
    assert copy.pending > 0
    before = {k: steps(client, live.run_id, k) for k in ("val_loss", "train_loss")}
    assert copy.deliver(force=True) and copy.written == 0 and copy.pending == 0
    assert {k: steps(client, live.run_id, k) for k in before} == before
    # a write the store really lacks is delivered and counted
    client.delete_tag(live.run_id, "method")
    copy.tags(live.key, {"method": "sal"})
    assert copy.deliver(force=True) and copy.written == 1
    assert client.get_run(live.run_id).data.tags["method"] == "sal"


def test_an_artifact_written_on_another_node_is_dropped_not_left_to_block(tmp_path):
    here = Outbox("sqlite:///unused.db", "0", tmp_path / "box")
    (tmp_path / "box" / "files" / "s1").mkdir(parents=True)
    (tmp_path / "box" / "files" / "s1" / "area_usage.json").write_text("{}")
    here.absorb({"run_ids": {"k": "r1"}, "ops": [
        {"op": "artifact", "key": "k", "file": "files/s2/area_usage.json", "artifact_path": ""},
        {"op": "artifact", "key": "k", "file": "files/s1/area_usage.json", "artifact_path": ""},
        {"op": "tags", "key": "k", "tags": {"a": "1"}}]})
    assert [op.get("file") for op in here.ops] == ["files/s1/area_usage.json", None]
    assert here.dropped == ["artifact files/s2/area_usage.json for k: written on another node"]


def test_a_short_runs_system_metrics_sample_goes_with_its_last_writes(store, monkeypatch):
    """A run shorter than the sampling interval still gets MLflow's system metrics
    sample (MLflow's own loop would drop it), written in the run's last batch
    rather than by a write of its own."""
    pytest.importorskip("psutil")
    uri, exp, client = store
    batches = []
    real = mlflow.MlflowClient.log_batch
    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", lambda self, run_id, *a, **kw: (
        batches.append({m.key for m in kw.get("metrics", ())}), real(self, run_id, *a, **kw)))
    sink = MLflowSink(uri, exp, flush_every_s=3600, system_metrics_s=5.0)
    fit(CFG.replace(epochs=1), [sink])
    run = client.get_run(sink.run_id)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert [m.step for m in client.get_metric_history(
        sink.run_id, "system/cpu_utilization_percentage")] == [0]
    sampled = [b for b in batches if any(k.startswith("system/") for k in b)]
    assert len(sampled) == 1 and "final_val_acc" in sampled[0]
