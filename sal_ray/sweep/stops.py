"""ASHA for every configuration of a fused trial (`fuse_configs` > 1).

A Tune scheduler stops whole trials, and a fused trial holds several
configurations, each its own Optuna trial. So under `scheduler="asha"` the
driver keeps Ray's own `AsyncHyperBandScheduler` (the one `asha` builds for
unfused sweeps, with the same settings) and feeds it each configuration's
result as if it were a trial of its own (`ConfigASHA`). Its STOP for a
configuration goes on the sweep's `StopBoard`, a named Ray actor. The trial
reads the board after each epoch's report and stops that configuration's seeds
in its pack (`pack.fit_pack`'s after_epoch). Its runs then end "stopped", as an
unfused trial that ASHA stopped does, and its Optuna trial ends PRUNED.

Tune's function API holds `tune.report` until the driver has processed that
result. The driver writes a STOP before it lets the trial go on, so the trial
reads the decision at the end of the epoch it was made for.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .plan import Plan


def asha(p: Plan, settings: dict) -> ASHAScheduler:
    """ASHA over seed-epochs (`seed_epochs`: every epoch of every seed trained, whether
    a trial runs its seeds in turn or as one pack)."""
    max_t = p.seeds * p.max_epochs
    settings = {k: v for k, v in settings.items() if k != "name"}
    settings.setdefault("grace_period", max(1, max_t // 4))
    settings.setdefault("reduction_factor", 3)
    return ASHAScheduler(time_attr="seed_epochs", metric=f"mean_{p.metrics[0]}",
                         mode=p.modes[0], max_t=max_t, stop_last_trials=False, **settings)


@ray.remote(num_cpus=0)
class StopBoard:
    """Which configurations of which Tune trial the driver has stopped."""

    def __init__(self):
        self.stopped: dict[str, set[int]] = {}

    def stop(self, trial_id: str, j: int) -> None:
        self.stopped.setdefault(trial_id, set()).add(j)

    def of(self, trial_id: str) -> list[int]:
        return sorted(self.stopped.get(trial_id, ()))


def board_name(sweep: str) -> str:
    return f"sal_ray-stops-{sweep}"


def board(sweep: str):
    """The sweep's board: the running one, or a new one. Ray collects a named actor
    nobody holds a handle to, so the driver keeps this one (`ConfigASHA`)."""
    return StopBoard.options(name=board_name(sweep), get_if_exists=True).remote()


@dataclass(frozen=True)
class _Member:
    """What Ray's ASHA reads of a trial: its id (here a configuration's)."""
    trial_id: str


class ConfigASHA:
    """Ray's ASHA, deciding for configurations (`<tune id>-c<j>`) instead of Tune
    trials. Picklable with the searcher; the board is found again by name."""

    def __init__(self, p: Plan):
        self.sweep = p.name
        self.scheduler = asha(p, p.scheduler)
        self.stopped: set[str] = set()
        self._board = None

    def __getstate__(self):
        return {**self.__dict__, "_board": None}  # a handle is this driver's alone

    def handle(self):
        """This driver's board handle, made (and given every earlier stop) on first use."""
        if self._board is None:
            self._board = board(self.sweep)
            # a resumed driver's board is new: what it decided before goes on it again,
            # for a trial that restarts from a checkpoint taken before its stop
            for member in self.stopped:
                trial_id, j = member.rsplit("-c", 1)
                ray.get(self._board.stop.remote(trial_id, int(j)))
        return self._board

    def add(self, member: str) -> None:
        self.handle()  # made by the driver, before any trial looks for it
        self.scheduler.on_trial_add(None, _Member(member))

    def result(self, trial_id: str, j: int, member: str, result: dict) -> None:
        """Configuration j of Tune trial `trial_id` reported `result`: stop it if
        ASHA says so (on the board before this returns)."""
        if member in self.stopped:
            return
        if self.scheduler.on_trial_result(None, _Member(member), result) == TrialScheduler.STOP:
            self.stopped.add(member)
            ray.get(self.handle().stop.remote(trial_id, j))

    def complete(self, member: str, result: dict, status: str) -> None:
        """The configuration ended. Only a completed one's last result is recorded
        (Ray's ASHA records a trial's last); one that stopped or diverged earlier
        is forgotten, since the trial's final step is not its own."""
        try:
            if status == "completed":
                self.scheduler.on_trial_complete(None, _Member(member), result)
            else:
                self.scheduler.on_trial_remove(None, _Member(member))
        except KeyError:  # never added (a member restored from before ASHA knew it)
            pass


def stopped_configs(sweep: str, trial_id: str) -> list[int]:
    """The configurations of `trial_id` the driver has stopped (read in the trial:
    no board, nothing stopped yet)."""
    try:
        found = ray.get_actor(board_name(sweep))
    except ValueError:
        return []
    return ray.get(found.of.remote(trial_id))
