"""The sweep's parent run in MLflow: opened at the start (or reopened on resume),
closed with the outcome, the comparison table and the trials as artifacts.
Every trial's seed runs hang under it (`mlflow.parentRunId`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..config import ConfigError
from ..tracking import store, ui_link, writes
from ..tracking.provenance import run_tags
from ..tracking.writes import metric_list
from .plan import Plan

# Cost metrics of a trial run (tracking.cost): summed over runs, the peak is the largest.
COST_SUMS = ("cost_wall_s", "cost_cpu_s", "cost_gpu_s")
COST_PEAK = "peak_rss_mb"
# Besides the objectives, the best configuration's mean ± std of these on the parent run.
BEST_FINALS = ("val_acc", "val_loss", "train_loss")


def fingerprint(p: Plan) -> str:
    """What a resumed sweep must share with its first run: the studies, their
    budgets, spaces and fixed options, the objectives, seeds and sampler."""
    shape = {
        "pairs": [[s.key, s.budget, {k: v.describe() for k, v in s.space.items()}, s.fixed]
                  for s in p.studies],
        "metrics": p.metrics, "modes": p.modes, "seeds": p.seeds,
        "sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__}
    if p.fuse_configs > 1:  # (absent at 1: a sweep from before the option keeps its print)
        shape["fuse_configs"] = p.fuse_configs
    text = json.dumps(shape, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def sweep_params(p: Plan) -> dict:
    """The sweep's own settings, as the parent run's params."""
    params = {"sweep.metric": ",".join(p.metrics), "sweep.mode": ",".join(p.modes),
              "sweep.sampler": p.sampler if isinstance(p.sampler, str) else type(p.sampler).__name__,
              "sweep.scheduler": json.dumps(p.scheduler, default=str) if p.scheduler else "none",
              "sweep.seeds": p.seeds, "sweep.total_trials": p.total_trials,
              "sweep.resources": json.dumps(p.resources),
              "sweep.fuse_configs": p.fuse_configs}
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


def share_sweep_view(uri: str, experiment_id: str, p: Plan, parent_run_id: str) -> str:
    """Store the sweep's comparison view in its experiment (tracking.ui_link) and
    return the link that opens it; the parent run carries the link too."""
    searched = list(dict.fromkeys(k for s in p.studies for k in s.space))
    datasets = len({s.dataset for s in p.studies})
    state = ui_link.view_state(
        p.name, ui_link.sweep_columns(searched, p.metrics[0], datasets), p.metrics[0],
        ascending=p.modes[0] == "min", group_by="method",
        groups=list(dict.fromkeys(s.method for s in p.studies)))
    c = store.client(uri)
    key = ui_link.share_view(uri, experiment_id, p.name, state)
    if "mlflow.experimentKind" not in store.with_retry(c.get_experiment, experiment_id).tags:
        # the runs table, not the GenAI traces view MLflow 3 opens an untyped experiment on
        store.with_retry(c.set_experiment_tag, experiment_id, "mlflow.experimentKind",
                         "custom_model_development")
    link = ui_link.experiment_link(ui_link.ui_base(uri), experiment_id, key)
    writes.log_tags(parent_run_id, {"ui_link": link}, uri)
    return link


def add_costs(trials, children: list) -> None:
    """Each trial's cost, from its seed runs in the store: sums of wall, CPU and GPU
    seconds, the largest peak memory."""
    by_trial: dict[str, list] = {}
    for r in children:
        by_trial.setdefault(r.data.tags.get("trial"), []).append(r.data.metrics)
    for k in COST_SUMS:
        trials[k] = [sum(m.get(k, 0.0) for m in by_trial.get(t, [])) for t in trials.trial_id]
    trials[COST_PEAK] = [max([m.get(COST_PEAK, 0.0) for m in by_trial.get(t, [])] or [0.0])
                         for t in trials.trial_id]


def best_run(b: dict, children: list, metric: str, mode: str):
    """The best trial's seed run with the best final objective (the first if none has it)."""
    ids = [i for i in str(b.get("mlflow_run_ids", "")).split(",") if i]
    runs = [r for r in children if r.info.run_id in ids]
    if not runs:
        return None
    sign = 1 if mode == "max" else -1
    have = [r for r in runs if f"final_{metric}" in r.data.metrics]
    if not have:
        return min(runs, key=lambda r: int(r.data.tags.get("seed_index", 0)))
    return max(have, key=lambda r: sign * r.data.metrics[f"final_{metric}"])


def answer(res, children: list) -> tuple[dict, dict, str]:
    """The parent run's answer: per (dataset, method) the best configuration's mean
    and std over seeds (metrics `best/<dataset>/<method>/<name>_mean|_std`), tags
    naming its best seed run by MLflow run id, and a Markdown description that
    links to it; plus the sweep's summed cost (`cost_*`, `cost/<dataset>/<method>/*`)."""
    metrics, tags = {}, {}
    m0, mode = res.plan.metrics[0], res.plan.modes[0]
    lines = [f"**Sweep `{res.name}`**: the best configuration per (dataset, method), "
             f"mean ± std over seeds of the final `{m0}`.", "",
             f"| dataset | method | {m0} | best run | configuration |", "|---|---|---|---|---|"]
    for (d, m), b in res.best.items():
        for k in dict.fromkeys([*res.plan.metrics, *BEST_FINALS]):
            mean = b.get(f"final_{k}_mean", b.get(f"mean_{k}"))
            std = b.get(f"final_{k}_std", 0.0)  # a parameter count is the same for every seed
            if isinstance(mean, (int, float)) and math.isfinite(mean):
                metrics[f"best/{d}/{m}/{k}_mean"] = mean
                metrics[f"best/{d}/{m}/{k}_std"] = std if math.isfinite(std) else 0.0
        tags[f"best.{d}.{m}.trial_id"] = b["trial_id"]
        tags[f"best.{d}.{m}.run_ids"] = b.get("mlflow_run_ids", "")
        run = best_run(b, children, m0, mode)
        config = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in b["params"].items())
        shown = f"{metrics.get(f'best/{d}/{m}/{m0}_mean', math.nan):.4f} ± " \
                f"{metrics.get(f'best/{d}/{m}/{m0}_std', math.nan):.4f}"
        link = "-"
        if run is not None:
            tags[f"best.{d}.{m}.run_id"] = run.info.run_id
            tags[f"best.{d}.{m}.run_name"] = run.info.run_name
            link = f"[{run.info.run_name}](#/experiments/{res.experiment_id}/runs/{run.info.run_id})"
        lines.append(f"| {d} | {m} | {shown} | {link} | {config} |")
    t = res.trials
    if len(t):
        diverged = t[t.status == "diverged"]
        metrics["trials_completed"] = float((t.status == "completed").sum())
        metrics["trials_diverged"] = float(len(diverged))
        if len(diverged):
            tags["diverged_trials"] = ",".join(diverged.trial_id)
            lines += ["", f"{len(diverged)} trial(s) diverged (a loss past diverge_loss or not "
                      "finite; never chosen best): tag `trial_status = 'diverged'` on their runs."]
    runs = [r.data.metrics for r in children]
    for k in COST_SUMS:
        metrics[k] = sum(r.get(k, 0.0) for r in runs)
    metrics[COST_PEAK] = max([r.get(COST_PEAK, 0.0) for r in runs] or [0.0])
    if len(t) and COST_SUMS[0] in t:
        for (d, m), g in t.groupby(["dataset", "method"], sort=False):
            for k in COST_SUMS:
                metrics[f"cost/{d}/{m}/{k}"] = float(g[k].sum())
    lines += ["", f"Cost: {metrics['cost_wall_s']:.1f} s wall, {metrics['cost_cpu_s']:.1f} "
              f"CPU-s, {metrics['cost_gpu_s']:.1f} GPU-s over {len(runs)} run(s); peak "
              f"memory {metrics[COST_PEAK]:.0f} MB."]
    tags["mlflow.note.content"] = "\n".join(lines)
    return metrics, tags, "\n".join(lines)


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
                 message: str = "", children: list = ()) -> None:
    """Outcome, the answer (`answer`), cost and the tables on the parent run; then end it."""
    tags = {"status": outcome, "elapsed_s": f"{res.elapsed_s:.1f}",
            "trials_ended": f"{ended}/{res.plan.total_trials}"}
    if message:
        tags["status_message"] = message[:500]
    metrics, answer_tags, note = answer(res, list(children))
    tags.update(answer_tags)
    best_json = {}
    for (d, m), b in res.best.items():
        best_json[f"{d}/{m}"] = {
            "trial_id": b["trial_id"], "params": b["params"], "config": b["config"],
            "mlflow_run_ids": b["mlflow_run_ids"].split(","),
            **{k: b[k] for k in b if k.startswith(("mean_", "final_"))}}
    writes.log_tags(res.parent_run_id, tags, uri)
    writes.log_metrics(res.parent_run_id, metric_list(metrics, 0), uri)
    c = store.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        res.trials.to_csv(os.path.join(tmp, "trials.csv"), index=False)
        res.summary().to_csv(os.path.join(tmp, "summary.csv"), index=False)
        Path(tmp, "summary.txt").write_text(
            res.table() + "\n" + (f"\n{res.grid(table_by)}\n" if table_by else ""))
        Path(tmp, "answer.md").write_text(note + "\n")
        Path(tmp, "best.json").write_text(json.dumps(best_json, indent=2, default=str))
        store.with_retry(c.log_artifacts, res.parent_run_id, tmp)
    store.with_retry(c.set_terminated, res.parent_run_id, {
        "completed": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED"))
