"""The driver's Tune callbacks: SweepProgress keeps what the sweep needs to know
of each trial (its config, last result, error, storage path) and prints a line as
trials end; LiveConsole prints, while they run, where each one is and an ETA."""

from __future__ import annotations

import math
import time
from typing import Callable

from ray import tune as rt

from .options import print_line
from .plan import Plan
from .trial_state import member_result, trial_status


def short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def size(config: dict) -> int:
    """Configurations a Tune trial holds: one, or a fused trial's (`fuse_configs`)."""
    return len(config.get("configs") or [None])


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
        cfg, last = self.config[tid], self.last.get(tid, {})
        # counted over all trials (a resumed sweep's earlier ones are done too), in
        # configurations: a fused trial ends several
        self.done = max(self.done + size(cfg), size(cfg) + sum(
            size(t.config) for t in trials if t is not trial
            and t.status in ("TERMINATED", "ERROR")))
        if "configs" not in cfg:
            return self._line(self.done, cfg, last, self.status[tid])
        common = {k: v for k, v in cfg.items() if k != "configs"}
        first = self.done - len(cfg["configs"]) + 1
        for j, params in enumerate(cfg["configs"]):
            mine = member_result(last, j) if last else {}
            self._line(first + j, {**common, **params}, mine, trial_status(mine, error))

    def _line(self, done: int, cfg: dict, last: dict, status: str) -> None:
        plan, m0 = self.plan, self.plan.metrics[0]
        value = last.get(f"final_{m0}_mean", last.get(f"mean_{m0}"))
        shown = "" if value is None or not math.isfinite(value) else f"{m0} {value:.4f}"
        if f"final_{m0}_std" in last and plan.seeds > 1:
            shown += f" ± {last[f'final_{m0}_std']:.4f}"
        params = " ".join(f"{k}={short(v)}" for k, v in cfg.items()
                          if k not in ("dataset", "method"))
        n = len(str(plan.total_trials))
        key = f"{cfg.get('dataset')}/{cfg.get('method')}"
        self.echo(f"[{done:>{n}}/{plan.total_trials}] {key:<14} {status:<9} "
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


def clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LiveConsole(rt.Callback):
    """While trials run, every `every_s` seconds: one line per running trial (its
    seed, epoch and current objective) and a progress line for the sweep with an
    ETA. A sweep quicker than `every_s` prints none; the lines as trials end are
    SweepProgress's. (Tune's own table stays off below verbose 2: it would say the
    same, every few seconds, in columns of every result key.)

    Progress counts seed-epochs (`seed_epochs` in each report): a trial that ended
    counts whole, however early ASHA stopped it; the ETA is the rate seen in this
    session over what is left, so a resumed sweep's earlier trials do not flatter it."""

    def __init__(self, plan: Plan, every_s: float = 15.0, echo: Callable = print_line,
                 clock: Callable[[], float] = time.monotonic):
        self.plan, self.every_s, self.echo, self.clock = plan, every_s, echo, clock
        self.latest: dict[str, dict] = {}
        self.started = self.next_at = None
        self.done_at_start = 0.0
        self.epochs = {s.key: s.fixed.get("epochs", plan.max_epochs) for s in plan.studies}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.latest[trial.trial_id] = dict(result)

    def _work(self, trial) -> float:
        """How much of `trial` is done, in configurations (a fused trial holds several)."""
        if trial.status in ("TERMINATED", "ERROR"):
            return float(size(trial.config))
        r = self.latest.get(trial.trial_id) or trial.last_result or {}
        key = f"{trial.config.get('dataset')}/{trial.config.get('method')}"
        total = self.plan.seeds * (trial.config.get("epochs") or self.epochs.get(key)
                                   or self.plan.max_epochs)
        done = r.get("seed_epochs", r.get("training_iteration")) or 0
        return size(trial.config) * min(1.0, done / max(1, total))

    def on_step_end(self, iteration, trials, **info):
        if not self.every_s:
            return
        now = self.clock()
        if self.started is None:
            self.started, self.next_at = now, now + self.every_s
            self.done_at_start = sum(self._work(t) for t in trials)
            return
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        running = [t for t in trials if t.status == "RUNNING"]
        if running:
            self.status_lines(trials, running, now)

    def status_lines(self, trials, running, now: float) -> None:
        plan, m0 = self.plan, self.plan.metrics[0]
        done = sum(self._work(t) for t in trials)
        ended = sum(size(t.config) for t in trials if t.status in ("TERMINATED", "ERROR"))
        elapsed = now - self.started
        rate = (done - self.done_at_start) / elapsed if elapsed > 0 else 0.0
        left = plan.total_trials - done
        eta = f"ETA {clock_text(left / rate)}" if rate > 0 else "ETA — (no epoch done yet)"
        self.echo(f"[{clock_text(elapsed)}] {ended}/{plan.total_trials} trials ended, "
                  f"{len(running)} running; {100 * done / plan.total_trials:.0f}% of the "
                  f"sweep's epochs; {eta}")
        for t in running:
            r = self.latest.get(t.trial_id) or {}
            key = f"{t.config.get('dataset')}/{t.config.get('method')}"
            if "epoch" not in r:
                self.echo(f"    {key:<14} {t.trial_id}  starting")
                continue
            epochs = t.config.get("epochs") or self.epochs.get(key) or plan.max_epochs
            value = r.get(m0)
            shown = f"{m0} {value:.4f}" if isinstance(value, (int, float)) else ""
            seed = f"{size(t.config)} configs x {plan.seeds} seeds fused " \
                if "configs" in t.config else "" if plan.seeds == 1 else \
                f"{plan.seeds} seeds fused " if r.get("pack_size") \
                else f"seed {int(r.get('seed_index', 0)) + 1}/{plan.seeds} "
            self.echo(f"    {key:<14} {t.trial_id}  {seed}epoch {int(r['epoch'])}/{epochs}  "
                      f"{shown}")
