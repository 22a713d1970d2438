"""What a trial spends besides training, timed where it is spent: the sweep's own
price, reported with the trial's last result (`cost_<part>_s`) so that a benchmark
or a user can see where a trial's time goes (benchmarks/trial_cost.py).

    costs = Costs()
    with costs.timed("mlflow"):
        sink.flush()
    costs.report()    # {"cost_mlflow_s": ..., "cost_trial_s": ...}

And the trial's checkpoint clock: a checkpoint at most every `every_s` seconds
(the trainer asks `due(epoch)`), so a short epoch does not pay for one each.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from ..trainer import Callback


class Costs:
    """Seconds per part of a trial, accumulated (perf_counter: ~100 ns a timing)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def timed(self, part: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - t)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds
        self.counts[part] = self.counts.get(part, 0) + 1

    def report(self) -> dict[str, float]:
        """`cost_<part>_s` for every part, and `cost_trial_s`: the trial's whole time
        in this process so far (a restarted trial counts from its restart)."""
        out = {f"cost_{k}_s": v for k, v in self.seconds.items()}
        out["cost_trial_s"] = time.perf_counter() - self.t0
        return out


class Timed(Callback):
    """A trainer callback whose hooks are timed under `part` (the MLflow sink's)."""

    def __init__(self, inner: Callback, costs: Costs, part: str):
        self.inner, self.costs, self.part = inner, costs, part

    def on_start(self, run) -> None:
        with self.costs.timed(f"{self.part}_start"):
            self.inner.on_start(run)

    def on_epoch(self, metrics: dict) -> None:
        with self.costs.timed(f"{self.part}_epoch"):
            self.inner.on_epoch(metrics)

    def on_end(self, result) -> None:
        with self.costs.timed(f"{self.part}_end"):
            self.inner.on_end(result)


class CheckpointClock:
    """When a trial checkpoints: every `every` epochs (0: never), but at most once
    per `every_s` seconds; a seed's last epoch always (the trainer saves it, the
    reporter ships it). A trial whose process dies loses at most `every_s` seconds
    of training, plus the epoch it was in."""

    def __init__(self, every: int, every_s: float):
        self.every, self.every_s = every, every_s
        self.last = time.monotonic()  # the trial's start counts as a checkpoint
        self.saved: int | None = None  # the epoch the trainer was last told to save

    def due(self, epoch: int) -> bool:
        """Asked by the trainer after `epoch`: save now? (a yes is remembered)"""
        ok = self.every > 0 and epoch % self.every == 0 and \
            time.monotonic() - self.last >= self.every_s
        if ok:
            self.saved = epoch
        return ok

    def final(self, pending: bool) -> bool:
        """Does the trial's last report carry a checkpoint? Where MLflow writes still
        wait in it (`pending`: the driver delivers them), or where `every_s` has
        passed since the last one; otherwise not, and a sweep killed before Tune saves
        its state redoes the trial, which loses no more than this clock allows. Each
        trial checkpoint makes Tune save the whole experiment's state at once
        (`CheckpointConfig(num_to_keep=1)`, O(trials) a save): one per trial made a
        sweep of N tiny trials cost O(N^2)."""
        if not pending and (self.every <= 0 or time.monotonic() - self.last < self.every_s):
            return False
        self.last = time.monotonic()
        return True

    def ship(self, epoch: int, last: bool) -> bool:
        """Asked by the reporter after `epoch`: does this report carry a checkpoint?"""
        if self.every <= 0 or not (last or self.saved == epoch):
            return False
        self.saved, self.last = None, time.monotonic()
        return True
