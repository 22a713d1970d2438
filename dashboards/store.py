"""Read a sweep's runs out of MLflow into one typed table.

The layout read here is the project's naming contract (docs/dashboards.md):
one parent run per sweep, trial runs nested under it (`mlflow.parentRunId`),
one run per seed, bare option names as params, per-epoch metrics with
step = epoch, and `final_*` metrics at the end of a completed run.

Only *leaf* runs are results: a run that carries a `method` param and has no
child that does. That holds whether seeds hang directly under the sweep's
parent or under a per-trial run, and it never counts a parent twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
import tempfile
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from mlflow import MlflowClient

from sal_ray.tracking.store import (  # noqa: F401 - StoreError: raised to readers
    StoreError, check_readable, redact, resolve_uri)

log = logging.getLogger("dashboards")

PARENT_TAG = "mlflow.parentRunId"
# Per-epoch metrics read back as histories: those the learning curves draw (one
# store query per run and metric, so none more).
CURVE_KEYS = ("train_loss", "val_loss", "val_acc")
# Final metrics of the contract; a run that diverged or crashed may lack them.
FINAL_KEYS = ("val_acc", "train_loss", "val_loss")

INT_PARAMS = ("depth", "width", "n_areas", "d_f", "batch_size", "epochs", "seed",
              "params_active", "params_total", "params_router", "params_fixed",
              "n_train", "n_val", "input_dim", "n_classes")
FLOAT_PARAMS = ("lr", "lr_sel", "lambda_local", "feedback_scale", "moe_balance")
BOOL_PARAMS = ("output_local",)
NONE_STRINGS = ("none", "null", "")
# Columns of RunSet.runs that are not params (besides "metrics.*" columns).
NON_PARAM_COLUMNS = frozenset({
    "run_id", "run_name", "experiment", "run_state", "status", "sweep", "searched",
    "parent_id", "final_val_acc", "final_train_loss", "final_val_loss", "final_source",
    "last_epoch", "column", "config", "n_configs", "chosen", "protocol"})


@dataclass
class RunSet:
    """Everything a report is built from."""
    tracking_uri: str
    runs: pd.DataFrame                       # one row per leaf run (see module doc)
    histories: Mapping[str, pd.DataFrame]    # run_id -> per-epoch metrics (Histories)
    parents: dict[str, dict]                 # top-level parent run_id -> {name, experiment, sweep}
    experiments: dict[str, str]              # found experiment name -> id
    notes: list[str] = field(default_factory=list)  # every data problem, in words

    def note(self, message: str) -> None:
        message = redact(message)  # notes go to the console, the page and summary.json
        log.warning(message)
        self.notes.append(message)


@contextlib.contextmanager
def tracking(uri: str):
    """`mlflow.search_runs` reads the global tracking URI: set it for the
    duration of a read only, so importing code keeps its own setting."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def parse_value(text):
    """MLflow keeps params as strings: give numbers and booleans back their type."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in NONE_STRINGS:
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _typed(runs: pd.DataFrame) -> pd.DataFrame:
    for name in INT_PARAMS + FLOAT_PARAMS:
        if name in runs:
            runs[name] = pd.to_numeric(runs[name].map(parse_value), errors="coerce")
    for name in BOOL_PARAMS:
        if name in runs:
            runs[name] = runs[name].map(parse_value)
    return runs


def find_experiments(client, names: list[str], runset: RunSet) -> dict[str, str]:
    found = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None and str(name).isdigit():
            with contextlib.suppress(Exception):
                exp = client.get_experiment(str(name))
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            runset.note(f"experiment '{name}' not found in {runset.tracking_uri}"
                        + (f" (it holds: {', '.join(known)})" if known else " (it holds none)"))
            continue
        found[exp.name] = exp.experiment_id
    return found


def _search(uri: str, experiment_ids: list[str], sweep: str | None) -> pd.DataFrame:
    filt = ""
    if sweep:
        filt = "tags.sweep = '{}'".format(sweep.replace("'", "\\'"))
    with tracking(uri):
        df = mlflow.search_runs(experiment_ids=experiment_ids, filter_string=filt,
                                output_format="pandas")
    return df


def _leaves(df: pd.DataFrame) -> pd.DataFrame:
    has_method = df.get("params.method", pd.Series(index=df.index, dtype=object)).notna()
    parent = df.get(f"tags.{PARENT_TAG}", pd.Series(index=df.index, dtype=object))
    parents_of_results = set(parent[has_method].dropna())
    return df[has_method & ~df["run_id"].isin(parents_of_results)].copy()


def _top_parents(client, leaves: pd.DataFrame, all_rows: pd.DataFrame, runset: RunSet) -> pd.Series:
    """Follow mlflow.parentRunId up to the run without a parent: the sweep's run."""
    known: dict[str, str | None] = {}
    col = f"tags.{PARENT_TAG}"
    for _, row in all_rows.iterrows():
        known[row["run_id"]] = row.get(col) if isinstance(row.get(col), str) else None
    info: dict[str, dict] = {}

    def parent_of(run_id: str) -> str | None:
        if run_id not in known:
            try:
                run = client.get_run(run_id)
            except Exception:  # deleted or from another store
                known[run_id] = None
                return None
            known[run_id] = run.data.tags.get(PARENT_TAG)
            info[run_id] = {"name": run.data.tags.get("mlflow.runName", run_id),
                            "experiment_id": run.info.experiment_id,
                            "sweep": run.data.tags.get("sweep")}
        return known[run_id]

    tops = {}
    for rid in leaves["run_id"]:
        node, top, seen = rid, None, set()
        while (up := parent_of(node)) and up not in seen:
            seen.add(up)
            top = node = up
        tops[rid] = top
    for top in {t for t in tops.values() if t}:
        if top not in info:
            row = all_rows[all_rows["run_id"] == top]
            if len(row):
                r = row.iloc[0]
                info[top] = {"name": r.get("tags.mlflow.runName", top),
                             "experiment_id": r["experiment_id"], "sweep": r.get("tags.sweep")}
            else:
                parent_of(top)  # fills info through get_run
                info.setdefault(top, {"name": top, "experiment_id": None, "sweep": None})
        runset.parents[top] = info[top]
    return leaves["run_id"].map(tops)


class Histories(Mapping):
    """run id -> its per-epoch metrics (index = epoch), read from the store the
    first time they are asked for and kept. MLflow's client reads one metric of
    one run per call, so the report asks only for what it draws (the curves of
    each cell's chosen configuration) and for runs that lack final metrics,
    never for all of them."""

    def __init__(self, client, run_ids, keys=CURVE_KEYS):
        self._client, self._keys = client, tuple(keys)
        self._ids = dict.fromkeys(run_ids)
        self._read: dict[str, pd.DataFrame] = {}
        self.seconds = 0.0  # spent reading, for the report's stage timings

    def __getitem__(self, run_id: str) -> pd.DataFrame:
        if run_id not in self._ids:
            raise KeyError(run_id)
        if run_id not in self._read:
            t = time.perf_counter()
            self._read[run_id] = _history(self._client, run_id, self._keys)
            self.seconds += time.perf_counter() - t
        return self._read[run_id]

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def n_read(self) -> int:
        """How many runs' histories were read so far."""
        return len(self._read)


def _history(client, run_id: str, keys=CURVE_KEYS) -> pd.DataFrame:
    cols = {}
    for key in keys:
        points = client.get_metric_history(run_id, key)
        if points:
            # Several values at one step (a resumed run re-logging an epoch): the last wins.
            s = {}
            for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
                s[m.step] = m.value
            cols[key] = pd.Series(s, dtype=float)
    frame = pd.DataFrame(cols)
    frame.index.name = "epoch"
    return frame.sort_index()


AREA_USAGE = "area_usage.json"  # sal_ray.tracking.usage writes it


def _area_usage(client, runs: pd.DataFrame) -> pd.DataFrame:
    """A sweep run logs its per-area shares as the artifact `area_usage.json` (the
    whole matrix per epoch) and only a per-layer summary as metrics: its final
    epoch fills the `metrics.area_share.l<layer>.a<area>` columns that runs
    which logged the shares as metrics have. One download per routed run."""
    summary = [c for c in runs.columns if c.startswith("metrics.area_entropy_bits.l")]
    if not summary:
        return runs
    want = runs[summary].notna().any(axis=1)
    shares = [c for c in runs.columns if c.startswith("metrics.area_share.")]
    if shares:
        want &= runs[shares].isna().all(axis=1)
    fills: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in runs.index[want]:
            try:
                path = client.download_artifacts(runs.at[i, "run_id"], AREA_USAGE, tmp)
                with open(path) as f:
                    data = json.load(f)
                last = data["epochs"][-1]["share"]
                for layer, row in zip(data["layers"], last):
                    for area, value in enumerate(row):
                        fills.setdefault(f"metrics.area_share.l{layer}.a{area}", {})[i] = value
            except Exception:  # noqa: BLE001 - an absent or odd file: no heatmap for it
                continue
    if not fills:
        return runs
    extra = pd.DataFrame(fills, index=runs.index)
    for c in extra.columns:
        runs[c] = runs[c].fillna(extra[c]) if c in runs else extra[c]
    return runs


def _finals(runs: pd.DataFrame, histories: Mapping[str, pd.DataFrame], runset: RunSet) -> None:
    """final_<m>: the run's final_<m> metric; else, only if the run reached its last
    epoch, the last logged <m>; else missing (the run is named in the notes). A
    run's history is read only when a final metric is missing: the tracker logs
    them at the last epoch, so `last_epoch` is then `epochs`."""
    sources = []
    for key in FINAL_KEYS:
        runs[f"final_{key}"] = float("nan")
    runs["last_epoch"] = 0
    for i, row in runs.iterrows():
        finals = [row.get(f"metrics.final_{key}") for key in FINAL_KEYS]
        if all(v is not None and v == v and math.isfinite(v) for v in finals):
            for key, value in zip(FINAL_KEYS, finals):
                runs.at[i, f"final_{key}"] = value
            epochs = row.get("epochs")
            runs.at[i, "last_epoch"] = int(epochs) if epochs == epochs and epochs else 0
            sources.append("final")
            continue
        hist = histories.get(row["run_id"], pd.DataFrame()) if histories else pd.DataFrame()
        last_epoch = int(hist.index.max()) if len(hist) else 0
        runs.at[i, "last_epoch"] = last_epoch
        epochs = row.get("epochs")
        reached_end = bool(len(hist)) and epochs == epochs and last_epoch >= epochs
        source = "final"
        for key in FINAL_KEYS:
            value = row.get(f"metrics.final_{key}")
            if value is not None and value == value and math.isfinite(value):
                runs.at[i, f"final_{key}"] = value
            elif reached_end and key in hist and hist[key].notna().any():
                runs.at[i, f"final_{key}"] = hist[key].dropna().iloc[-1]
                source = "last epoch" if source == "final" else source
            else:
                source = "missing"
        sources.append(source)
        label = f"run '{row['run_name']}' ({row['run_id'][:8]}, status {row['status']})"
        of = f" of {int(epochs)}" if epochs == epochs else ""
        if source == "missing" and row["status"] == "running":
            runset.note(f"{label} is still running (epoch {last_epoch}{of} logged); "
                        "left out of the tables")
        elif source == "missing":
            runset.note(f"{label} has no final metrics (stopped after epoch "
                        f"{last_epoch}{of}); left out of the tables")
        elif source == "last epoch":
            runset.note(f"{label} lacks final_* metrics; its last logged epoch "
                        f"({last_epoch}) is used")
    runs["final_source"] = sources


def load_runs(experiments: list[str], tracking_uri: str | None = None,
              sweep: str | None = None, with_histories: bool = True) -> RunSet:
    """Every leaf run of `experiments` (optionally one sweep), typed, with histories."""

    uri = resolve_uri(tracking_uri)
    runset = RunSet(uri, pd.DataFrame(), {}, {}, {})
    client = MlflowClient(tracking_uri=uri)
    runset.experiments = find_experiments(client, list(experiments), runset)
    if not runset.experiments:
        runset.note("no experiment to read: the report is empty")
        return runset
    rows = _search(uri, list(runset.experiments.values()), sweep)
    where = f"experiment(s) {', '.join(runset.experiments)}" + (f", sweep '{sweep}'" if sweep else "")
    if rows.empty:
        runset.note(f"no runs in {where}")
        return runset
    leaves = _leaves(rows)
    if leaves.empty:
        runset.note(f"{len(rows)} run(s) in {where}, but none carries a 'method' param: "
                    "nothing to tabulate")
        return runset
    leaves["parent_id"] = _top_parents(client, leaves, rows, runset)
    names = {v: k for k, v in runset.experiments.items()}
    out = pd.DataFrame({
        "run_id": leaves["run_id"],
        "run_name": leaves.get("tags.mlflow.runName", leaves["run_id"]).fillna(leaves["run_id"]),
        "experiment": leaves["experiment_id"].map(names),
        "run_state": leaves["status"],
        "status": leaves.get("tags.status", pd.Series(index=leaves.index, dtype=object))
        .fillna("unknown"),
        "sweep": leaves.get("tags.sweep", pd.Series(index=leaves.index, dtype=object)),
        # the options a sweep searched, comma-separated (sal_ray.sweep sets it)
        "searched": leaves.get("tags.searched", pd.Series(index=leaves.index, dtype=object)),
        "parent_id": leaves["parent_id"],
    })
    for col in leaves.columns:
        # params no leaf run has are the parents' (sweep settings): not options
        if col.startswith("params.") and leaves[col].notna().any():
            out[col[len("params."):]] = leaves[col]
        elif col.startswith("metrics."):
            out[col] = leaves[col]
    for tag in ("dataset", "method"):  # params are the contract; tags fill a gap
        if f"tags.{tag}" in leaves:
            out[tag] = out.get(tag, pd.Series(index=out.index, dtype=object)).fillna(
                leaves[f"tags.{tag}"])
    out = _typed(out)
    if "n_areas" not in out:
        out["n_areas"] = 1
    out["n_areas"] = out["n_areas"].fillna(1).astype(int)
    out = _area_usage(client, out.reset_index(drop=True))
    if with_histories:
        runset.histories = Histories(client, out["run_id"])
    _finals(out, runset.histories, runset)
    odd = out[~out["status"].isin(["completed"])]
    for status, group in odd.groupby("status"):
        runset.note(f"{len(group)} run(s) with status '{status}': "
                    + ", ".join(group["run_name"].astype(str).head(8))
                    + (" ..." if len(group) > 8 else ""))
    runset.runs = out
    return runset
