"""The driver's Tune callback: it keeps what the sweep needs to know of each trial
(its config, last result, error, storage path) and prints a line as trials end."""

from __future__ import annotations

import math
from typing import Callable

from ray import tune as rt

from .options import print_line
from .plan import Plan
from .trial_state import trial_status


def short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class StopOnStorageError(rt.Stopper):
    """Ends the whole sweep once a trial hit a full or failing disk: every other
    trial writes to the same storage and store."""

    def __init__(self, progress: "SweepProgress"):
        self.progress = progress

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return bool(self.progress.storage_errors)


class SweepProgress(rt.Callback):
    def __init__(self, plan: Plan, echo: Callable = print_line):
        self.plan, self.echo = plan, echo
        self.last: dict[str, dict] = {}
        self.config: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.trial_of_path: dict[str, str] = {}
        self.storage_errors: list[tuple[str, str]] = []  # (trial id, what failed)
        self.order: list[str] = []
        self.done = 0

    def _seen(self, trial) -> str:
        tid = trial.trial_id
        if tid not in self.order:
            self.order.append(tid)
        self.config.setdefault(tid, dict(trial.config))
        try:
            self.trial_of_path[str(trial.path)] = tid
        except Exception:  # noqa: BLE001 - a trial without storage yet: found by id
            pass
        return tid

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = self._seen(trial)
        self.config[tid] = dict(trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = dict(result)
        if result.get("trial_status") == "storage_error":
            if not self.storage_errors:
                self.echo(f"[storage] {result.get('dataset')}/{result.get('method')} trial "
                          f"{trial.trial_id}: {result.get('message')}; the sweep stops")
            self.storage_errors.append((trial.trial_id, str(result.get("message"))))

    def _end(self, trial, trials, error: bool):
        tid = self._seen(trial)
        self.status[tid] = trial_status(self.last.get(tid), error)
        if error:
            self.errors[tid] = str(getattr(trial, "error_msg", "") or "error")[:500]
        # counted over all trials: a resumed sweep's earlier ones are done too
        self.done = max(self.done + 1, 1 + sum(
            t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial))
        cfg, last, plan = self.config[tid], self.last.get(tid, {}), self.plan
        m0 = plan.metrics[0]
        value = last.get(f"final_{m0}_mean", last.get(f"mean_{m0}"))
        shown = "" if value is None or not math.isfinite(value) else f"{m0} {value:.4f}"
        if f"final_{m0}_std" in last and plan.seeds > 1:
            shown += f" ± {last[f'final_{m0}_std']:.4f}"
        params = " ".join(f"{k}={short(v)}" for k, v in cfg.items()
                          if k not in ("dataset", "method"))
        n = len(str(plan.total_trials))
        key = f"{cfg.get('dataset')}/{cfg.get('method')}"
        self.echo(f"[{self.done:>{n}}/{plan.total_trials}] {key:<14} {self.status[tid]:<9} "
                  f"{shown:<26} {params}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, trials, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, trials, error=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        cfg = dict(trial.config)
        epoch = self.last.get(trial.trial_id, {}).get("epoch")
        self.echo(f"[restart] {cfg.get('dataset')}/{cfg.get('method')} trial {trial.trial_id} "
                  f"failed{f' after epoch {int(epoch)}' if epoch else ''}; Tune restarts it "
                  "from its last checkpoint")
