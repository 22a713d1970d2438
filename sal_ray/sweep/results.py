"""What a sweep found: the trials table, the best configuration and the Pareto
front per study, read from Tune's ResultGrid and the Optuna studies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import mlflow
import pandas as pd

from ..config import DEFAULTS, option_type
from ..tracking import store
from .checks import COUNT_METRICS
from .console import short
from .plan import Plan
from .trial_state import FINAL_KEYS, member_result, trial_status


def trial_records(grid, progress) -> list[dict]:
    """Every trial of the Tune run, in order: those of an earlier session of a
    resumed sweep too (`progress` saw only this session's). A trial that never
    reported is known to `progress` by its storage path."""
    out = []
    for result in grid:
        last = dict(result.metrics or {})
        tid = last.get("trial_id") or progress.trial_of_path.get(str(result.path), "")
        error = result.error is not None
        message = progress.errors.get(tid, "")
        if error and not message:
            message = str(result.error or "error")[:500]
        rec = {"trial_id": tid, "config": dict(result.config or progress.config.get(tid, {})),
               "last": last, "status": trial_status(last, error), "error": message,
               "checkpoint": result.checkpoint}
        out += members(rec, error)
    return out


def members(rec: dict, error: bool) -> list[dict]:
    """A trial's records: itself, or one per configuration of a fused trial
    (`fuse_configs`), each as if it had had its own trial (id `<id>-c<j>`, its
    own configuration and last result); the first carries the trial's checkpoint
    (its pending MLflow writes are the whole trial's)."""
    cfg = rec["config"]
    if "configs" not in cfg:
        return [rec]
    common = {k: v for k, v in cfg.items() if k != "configs"}
    out = []
    for j, params in enumerate(cfg["configs"]):
        last = member_result(rec["last"], j) if rec["last"] else {}
        out.append({**rec, "trial_id": f"{rec['trial_id']}-c{j}",
                    "config": {**common, **params}, "last": last,
                    "status": trial_status(last, error),
                    "checkpoint": rec["checkpoint"] if j == 0 else None})
    return out


def trials_table(plan: Plan, records: list[dict]) -> pd.DataFrame:
    """One row per trial: its searched options, status, objectives, mean ± std over
    seeds of the final metrics, parameter counts and MLflow run ids."""
    searched = list(dict.fromkeys(k for s in plan.studies for k in s.space))
    fixed_of = {s.key: s.fixed for s in plan.studies}
    rows = []
    for rec in records:
        tid, cfg, last, status = rec["trial_id"], rec["config"], rec["last"], rec["status"]
        row = {"trial_id": tid, "dataset": cfg.get("dataset"), "method": cfg.get("method"),
               "status": status}
        study_fixed = fixed_of.get(f"{row['dataset']}/{row['method']}", {})
        # an option another method searches shows this trial's fixed value (bp: n_areas 1)
        row.update({k: study_fixed.get(k, DEFAULTS.get(k)) for k in searched})
        row.update({k: v for k, v in cfg.items() if k not in ("dataset", "method")})
        for m in plan.metrics:
            v = last.get(f"mean_{m}")
            row[f"mean_{m}"] = v if status in ("completed", "stopped") else math.nan
        for k in FINAL_KEYS:
            for stat in ("mean", "std"):
                row[f"final_{k}_{stat}"] = last.get(f"final_{k}_{stat}", math.nan)
        for k in COUNT_METRICS:
            if k in last:
                row[k] = last[k]
        row["seed_epochs"] = last.get("seed_epochs", last.get("training_iteration", 0))
        row["mlflow_run_ids"] = last.get("mlflow_run_ids", "")
        row["message"] = last.get("message", rec["error"])
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in searched:  # an option one method does not search is missing there, not NaN-float
        if k in df and option_type(k) == "int" and df[k].dtype.kind == "f":
            df[k] = df[k].astype("Int64")
    return df


def best_and_pareto(plan: Plan, df: pd.DataFrame, records: list[dict], studies: dict):
    """Per study: the best completed trial on the first objective, and the Pareto
    front over all objectives as Optuna's `Study.best_trials` has it."""
    configs = {r["trial_id"]: r["config"] for r in records}
    best, pareto = {}, {}
    for s in plan.studies:
        if df.empty:
            continue
        done = df[(df.dataset == s.dataset) & (df.method == s.method) & (df.status == "completed")]
        if done.empty:
            continue
        m0, sign = plan.metrics[0], (1 if plan.modes[0] == "max" else -1)
        row = done.loc[(sign * done[f"mean_{m0}"]).idxmax()].to_dict()
        cfg = configs.get(row["trial_id"], {})
        row["params"] = {k: cfg[k] for k in s.space if k in cfg}
        row["config"] = {**s.fixed, **row["params"]}
        best[(s.dataset, s.method)] = row
        study = studies.get(s.key)
        if study is not None:
            front = {t.user_attrs.get("tune_trial_id") for t in study.best_trials}
            pareto[(s.dataset, s.method)] = done[done.trial_id.isin(front)]
    return best, pareto


def spread(std, seeds: int, scale: float = 1.0, digits: int = 2) -> str:
    """A std over seeds as a table shows it: "—" where one seed has none (not 0.00)."""
    if seeds < 2 or std is None or (isinstance(std, float) and math.isnan(std)):
        return "—"
    return f"{scale * std:.{digits}f}"


def column_label(by: Sequence[str], values: tuple) -> str:
    """A protocol table's column: the method, then each swept option by name
    (`sal depth=4`, never `sal-4`, which reads as n_areas)."""
    return " ".join(short(v) if k == "method" else f"{k}={short(v)}" for k, v in zip(by, values))


@dataclass
class SweepResults:
    """What a sweep found. `trials`: one row per trial (configuration) with its
    searched options, status, mean/std over seeds of the final metrics and its MLflow
    run ids; `best`: per (dataset, method), the best completed trial on the first
    objective; `pareto`: per study, the completed trials no other completed trial
    dominates (all objectives), from Optuna's `Study.best_trials`."""
    name: str
    plan: Plan
    trials: Any                      # pandas.DataFrame
    best: dict[tuple[str, str], dict]
    pareto: dict[tuple[str, str], Any]
    studies: dict[str, Any]
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    elapsed_s: float
    undelivered: bool = False        # MLflow writes still wait in trial checkpoints
    storage_error: str = ""          # what stopped the sweep, if a disk failed
    optuna_storage: str = ""         # the studies' Optuna storage URL (optuna-dashboard URL)
    ui_link: str = ""                # the MLflow UI on this sweep's runs (tracking.ui_link)

    @property
    def metric(self) -> str:
        return self.plan.metrics[0]

    @property
    def ui_command(self) -> str:
        return store.ui_command(self.tracking_uri)

    def summary(self) -> pd.DataFrame:
        """One row per (dataset, method): the best configuration and its scores."""
        rows = []
        for s in self.plan.studies:
            b = self.best.get((s.dataset, s.method))
            t = self.trials[(self.trials.dataset == s.dataset) & (self.trials.method == s.method)] \
                if len(self.trials) else self.trials
            counts = t.status.value_counts().to_dict() if len(t) else {}
            row = {"dataset": s.dataset, "method": s.method, "trials": len(t),
                   "completed": counts.get("completed", 0),
                   "stopped": counts.get("stopped", 0), "diverged": counts.get("diverged", 0),
                   "failed": counts.get("failed", 0) + counts.get("crashed", 0)}
            if b:
                for k in ("val_acc", "train_loss", "val_loss"):
                    row[f"{k}_mean"] = b.get(f"final_{k}_mean")
                    row[f"{k}_std"] = b.get(f"final_{k}_std")
                for m in self.plan.metrics:
                    if m in COUNT_METRICS:
                        row[m] = b.get(f"mean_{m}")
                row["best"] = " ".join(f"{k}={short(v)}" for k, v in b["params"].items())
            for k in ("cost_wall_s", "cost_cpu_s", "cost_gpu_s"):  # every trial, from MLflow
                if k in t:
                    row[k] = float(t[k].sum())
            rows.append(row)
        return pd.DataFrame(rows)

    def table(self) -> str:
        """The comparison table, as text: mean ± std over seeds of the best configuration."""
        s, seeds = self.summary(), self.plan.seeds
        lines = [f"{'dataset':<14}{'method':<7}{'val acc %':>16}{'train loss':>17}"
                 f"{'val loss':>17}{'trials':>8}  best configuration"]
        for _, r in s.iterrows():
            def pm(k, scale=1.0, digits=2):
                mean = r.get(f"{k}_mean")
                if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                    return "-"
                return f"{scale * mean:.{digits}f} ± {spread(r.get(f'{k}_std'), seeds, scale, digits)}"
            ok = f"{r['completed']}/{r['trials']}"
            lines.append(f"{r['dataset']:<14}{r['method']:<7}{pm('val_acc', 100):>16}"
                         f"{pm('train_loss', 1, 3):>17}{pm('val_loss', 1, 3):>17}{ok:>8}  "
                         f"{r.get('best') if isinstance(r.get('best'), str) else '(none completed)'}")
        return "\n".join(lines)

    def grid(self, by: Sequence[str] = ("method", "n_areas"), metric: str = "val_acc") -> str:
        """Every completed configuration as text: datasets down, the values of `by`
        across, mean ± std over seeds of the final `metric` (accuracies in %): the
        layout of the paper's protocol tables."""
        done = self.trials[self.trials.status == "completed"] if len(self.trials) else self.trials
        if not len(done):
            return "(no completed trial)"
        scale = 100 if metric.endswith("_acc") else 1
        cols = list(dict.fromkeys(tuple(r[k] for k in by) for _, r in done.iterrows()))
        labels = [column_label(by, c) for c in cols]
        width = max(16, *(len(x) + 2 for x in labels))
        lines = [f"final {metric}{' %' if scale == 100 else ''}, mean ± std over seeds",
                 f"{'dataset':<14}" + "".join(f"{x:>{width}}" for x in labels)]
        for dataset in dict.fromkeys(done.dataset):
            cells = []
            for c in cols:
                hit = done[(done.dataset == dataset)
                           & (done[list(by)].apply(tuple, axis=1) == c)]
                if len(hit):
                    r = hit.iloc[0]
                    cells.append(f"{scale * r[f'final_{metric}_mean']:.2f} ± "
                                 + spread(r[f'final_{metric}_std'], self.plan.seeds, scale))
                else:
                    cells.append("-")
            lines.append(f"{dataset:<14}" + "".join(f"{x:>{width}}" for x in cells))
        return "\n".join(lines)

    def runs(self) -> pd.DataFrame:
        """Every seed run of this sweep, read back from MLflow (one row per run)."""
        before = mlflow.get_tracking_uri()  # search_runs reads the global URI: set it once
        mlflow.set_tracking_uri(store.real_uri(self.tracking_uri))
        try:
            return mlflow.search_runs([self.experiment_id], max_results=50000,
                                      filter_string="tags.`mlflow.parentRunId` = "
                                                    f"'{self.parent_run_id}'")
        finally:
            mlflow.set_tracking_uri(before)
