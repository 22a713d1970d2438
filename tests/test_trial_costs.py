"""A trial's checkpoint clock and its cost timers (sal_ray.sweep.costs), and the
trainer's `save_due` hook they drive. No Ray: the clock is plain Python."""

from __future__ import annotations

import os

import pytest
import torch

from sal_ray import Config, checkpoint, fit
from sal_ray.sweep import costs as costs_mod
from sal_ray.sweep.costs import CheckpointClock, Costs, Timed
from sal_ray.trainer import Callback

CFG = Config().replace(epochs=4, width=16, n_areas=2, batch_size=128, lr=0.05)


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(costs_mod, "time", fake)
    return fake


def test_the_clock_checkpoints_at_most_once_per_interval_and_at_each_seed_end(clock_time):
    clock = CheckpointClock(every=1, every_s=10.0)
    shipped = []
    for epoch in range(1, 7):  # 4 s per epoch: due at 12 s (epoch 3), then at 24 s (epoch 6)
        clock_time.now += 4.0
        saved = clock.due(epoch)
        assert clock.ship(epoch, last=False) == saved
        shipped += [epoch] if saved else []
    assert shipped == [3, 6]
    # a seed's last epoch always ships (the trainer saves it whatever the clock says)
    clock_time.now += 1.0
    assert not clock.due(7) and clock.ship(7, last=True)
    clock_time.now += 1.0  # ... and restarts the interval
    assert not clock.due(8) and not clock.ship(8, last=False)


def test_the_trials_last_report_carries_a_checkpoint_only_where_one_is_worth_it(clock_time):
    """A trial that ends within the interval of the clock's last checkpoint (or of
    its start) carries none, unless MLflow writes still wait in it: a crash
    before Tune saves its state redoes no more than the clock allows anyway."""
    clock = CheckpointClock(every=1, every_s=10.0)
    clock_time.now += 3.0
    assert not clock.final(pending=False)
    assert clock.final(pending=True)  # the driver delivers what waits in it
    clock_time.now += 9.0  # 9 s since that one
    assert not clock.final(pending=False)
    clock_time.now += 1.0
    assert clock.final(pending=False)
    never = CheckpointClock(every=0, every_s=0.0)
    clock_time.now += 100.0
    assert not never.final(pending=False) and never.final(pending=True)


def test_the_clock_keeps_the_epoch_interval_and_zero_means_never(clock_time):
    every2 = CheckpointClock(every=2, every_s=0.0)
    assert [e for e in range(1, 7) if every2.due(e) and every2.ship(e, last=False)] == [2, 4, 6]
    never = CheckpointClock(every=0, every_s=0.0)
    assert not any(never.due(e) for e in range(1, 5))
    assert not never.ship(4, last=True)  # checkpoint_every=0: not even at a seed's end


def test_fit_saves_only_when_save_due_says_so_and_always_the_last_epoch(tmp_path):
    asked, seen = [], {}

    class SavedEpoch(Callback):
        def on_epoch(self, m):
            state = checkpoint.read(str(tmp_path))
            seen[int(m["epoch"])] = None if state is None else state["epoch"]

    def due(epoch):
        asked.append(epoch)
        return epoch == 2

    result = fit(CFG, [SavedEpoch()], checkpoint_dir=str(tmp_path), save_due=due)
    assert result.status == "completed"
    assert asked == [1, 2, 3]               # never asked about the last epoch
    assert seen == {1: None, 2: 2, 3: 2, 4: 4}


def test_costs_add_up_per_part_and_time_a_callbacks_hooks(clock_time):
    costs = Costs()

    class Slow(Callback):
        def on_start(self, run):
            clock_time.now += 0.5

        def on_epoch(self, m):
            clock_time.now += 0.25

    timed = Timed(Slow(), costs, "mlflow")
    timed.on_start(None)
    timed.on_epoch({})
    timed.on_epoch({})
    with costs.timed("report"):
        clock_time.now += 0.125
    out = costs.report()
    assert out["cost_mlflow_start_s"] == 0.5 and out["cost_mlflow_epoch_s"] == 0.5
    assert out["cost_report_s"] == 0.125 and costs.counts["mlflow_epoch"] == 2
    assert out["cost_trial_s"] == pytest.approx(1.125)


# ---- a worker reads its dataset once ----------------------------------------------

def test_a_process_loads_digits_once_and_training_leaves_the_shared_tensors_alone():
    from sal_ray.data import load_shared
    first = load_shared("digits")
    kept = [t.clone() for t in (first.x_train, first.y_train, first.x_val, first.y_val)]
    assert fit(CFG.replace(epochs=1)).status == "completed"
    again = load_shared("digits")
    assert again is first  # not read again
    for t, k in zip((again.x_train, again.y_train, again.x_val, again.y_val), kept):
        assert torch.equal(t, k)


def test_a_dataset_whose_files_change_is_read_again(tmp_path, monkeypatch):
    try:
        from data_fixtures import write
    except ImportError:  # tests/ as a package
        from tests.data_fixtures import write
    from sal_ray.data import loading
    _, n = write("usps", tmp_path)
    real, calls = loading.load, []

    def counted(name, root=None, download=False):
        calls.append(name)  # the fixture's files: their own count, no official MD5
        return real(name, root, download, expected_samples=n, verify_md5=False)
    monkeypatch.setattr(loading, "load", counted)
    first = loading.load_shared("usps", str(tmp_path))
    assert loading.load_shared("usps", str(tmp_path)) is first and calls == ["usps"]
    raw = next(p for p in tmp_path.rglob("*") if p.is_file() and "sal_ray_cache" not in p.parts)
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # the file was replaced
    with pytest.warns(UserWarning, match="raw files changed"):  # its cache is stale too
        again = loading.load_shared("usps", str(tmp_path))
    assert calls == ["usps", "usps"] and again is not first
    assert torch.equal(again.x_train, first.x_train)
