"""The sweep's parent run in MLflow: opened at the start (or reopened on resume),
closed with the outcome, the comparison table and the trials as artifacts.
Every trial's seed runs hang under it (`mlflow.parentRunId`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..config import ConfigError
from ..tracking import store, writes
from ..tracking.provenance import run_tags
from .plan import Plan


def fingerprint(p: Plan) -> str:
    """What a resumed sweep must share with its first run: the studies, their
    budgets, spaces and fixed options, the objectives, seeds and sampler."""
    text = json.dumps({
        "pairs": [[s.key, s.budget, {k: v.describe() for k, v in s.space.items()}, s.fixed]
                  for s in p.studies],
        "metrics": p.metrics, "modes": p.modes, "seeds": p.seeds,
        "sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__},
        sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def sweep_params(p: Plan) -> dict:
    """The sweep's own settings, as the parent run's params."""
    params = {"sweep.metric": ",".join(p.metrics), "sweep.mode": ",".join(p.modes),
              "sweep.sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__,
              "sweep.scheduler": json.dumps(p.scheduler, default=str) if p.scheduler else "none",
              "sweep.seeds": p.seeds, "sweep.total_trials": p.total_trials,
              "sweep.resources": json.dumps(p.resources)}
    for s in p.studies:
        params[f"budget.{s.key}"] = s.budget
        for k, spec in s.space.items():
            params[f"space.{s.method}.{k}"] = spec.describe()
    for k, v in p.studies[0].fixed.items():
        if k not in ("dataset", "method"):
            params[f"fixed.{k}"] = v
    return params


def open_parent(uri: str, experiment_id: str, p: Plan, storage: str) -> str:
    """A new parent run, tagged and with the sweep's params; returns its id."""
    run_id = writes.start_run(uri, experiment_id, p.name, {
        "sweep": p.name, "kind": "sweep", "status": "running", "plan": fingerprint(p),
        "storage": storage, "datasets": ",".join(dict.fromkeys(s.dataset for s in p.studies)),
        "methods": ",".join(dict.fromkeys(s.method for s in p.studies)), **run_tags()})
    try:
        writes.log_params(run_id, sweep_params(p), uri)
    except BaseException as e:
        mark_crashed(uri, run_id, e)
        raise
    return run_id


def reopen_parent(uri: str, experiment_id: str, p: Plan, echo: Callable) -> str:
    """The parent run of the sweep being resumed, marked running again; ConfigError
    if this store has none or it was started with another plan."""
    c = store.client(uri)
    found = store.with_retry(
        c.search_runs, [experiment_id],
        filter_string=f"tags.sweep = '{p.name}' and tags.kind = 'sweep'", max_results=2)
    if not found:
        raise ConfigError("resume", f"sweep '{p.name}' has no parent run in MLflow experiment "
                          f"'{p.experiment}' of {store.redact(uri)}: resume with the "
                          "tracking_uri and experiment it started with")
    parent = found[0]
    if parent.data.tags.get("plan") != fingerprint(p):
        raise ConfigError("resume", f"sweep '{p.name}' was started with a different plan "
                          "(datasets, methods, space, fixed options, trials, seeds, metric or "
                          "sampler); resume it with the arguments it started with")
    writes.log_tags(parent.info.run_id, {"status": "running"}, uri)
    store.with_retry(c.update_run, parent.info.run_id, status="RUNNING")
    echo(f"resuming sweep '{p.name}' (MLflow parent run {parent.info.run_id})")
    return parent.info.run_id


def mark_crashed(uri: str, run_id: str, error: BaseException) -> None:
    """The sweep failed: say so on its parent run, without hiding the error."""
    try:
        writes.set_status(run_id, "crashed", uri, f"{type(error).__name__}: {error}"[:500])
    except Exception:  # noqa: BLE001 - the original error matters more
        pass


def child_runs(uri: str, experiment_id: str, sweep: str, parent_run_id: str) -> list:
    return [r for r in store.with_retry(
        store.client(uri).search_runs, [experiment_id], filter_string=f"tags.sweep = '{sweep}'",
        max_results=50000) if r.info.run_id != parent_run_id]


def close_open_children(uri: str, children: list, status_of_trial: dict) -> None:
    """End the runs a stopped or crashed trial left RUNNING."""
    for r in children:
        if r.info.status != "RUNNING":
            continue
        s = status_of_trial.get(r.data.tags.get("trial"), "crashed")
        writes.set_status(r.info.run_id, s if s != "completed" else "crashed", uri,
                          "ended by the sweep: the trial stopped before this run finished")


def run_ids_by_trial(children: list) -> dict[str, list[str]]:
    """Each trial's seed runs, in seed order."""
    by_trial: dict[str, list] = {}
    for r in children:
        by_trial.setdefault(r.data.tags.get("trial"), []).append(
            (int(r.data.tags.get("seed_index", 0)), r.info.run_id))
    return {t: [rid for _, rid in sorted(runs)] for t, runs in by_trial.items()}


def close_parent(uri: str, res, outcome: str, ended: int, table_by=None,
                 message: str = "") -> None:
    """Outcome, best trials and the tables on the parent run; then end it."""
    tags = {"status": outcome, "elapsed_s": f"{res.elapsed_s:.1f}",
            "trials_ended": f"{ended}/{res.plan.total_trials}"}
    if message:
        tags["status_message"] = message[:500]
    best_json = {}
    for (d, m), b in res.best.items():
        tags[f"best.{d}.{m}"] = b["trial_id"]
        best_json[f"{d}/{m}"] = {
            "trial_id": b["trial_id"], "params": b["params"], "config": b["config"],
            "mlflow_run_ids": b["mlflow_run_ids"].split(","),
            **{k: b[k] for k in b if k.startswith(("mean_", "final_"))}}
    writes.log_tags(res.parent_run_id, tags, uri)
    c = store.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        res.trials.to_csv(os.path.join(tmp, "trials.csv"), index=False)
        res.summary().to_csv(os.path.join(tmp, "summary.csv"), index=False)
        Path(tmp, "summary.txt").write_text(
            res.table() + "\n" + (f"\n{res.grid(table_by)}\n" if table_by else ""))
        Path(tmp, "best.json").write_text(json.dumps(best_json, indent=2, default=str))
        store.with_retry(c.log_artifacts, res.parent_run_id, tmp)
    store.with_retry(c.set_terminated, res.parent_run_id, {
        "completed": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED"))
