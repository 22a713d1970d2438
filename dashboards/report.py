"""Build the report: read MLflow, tabulate, draw, write a folder, log it to MLflow.

    build_report(["sal-digits"], "reports/digits", sweep="table2")  -> .../report.html

The folder holds report.html (self-contained: figures inline as base64 PNG),
figures/*.png, table2.csv, table3.csv, runs.csv and summary.json (with every
data problem found). When the runs hang under a sweep's parent run, the folder
is also logged as that parent's artifacts under `report/`, so it opens from the
MLflow UI. Problems (no runs, a missing experiment, runs without final metrics)
never stop a report: they are logged, listed on the page and in summary.json.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from . import page, protocols, sections, tables
from .store import Histories, RunSet, check_readable, load_runs, redact, resolve_uri

log = logging.getLogger("dashboards")
REPORT_NAME = "report.html"
ARTIFACT_PATH = "report"


@dataclass
class ReportResult:
    path: Path                       # the HTML page
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # data problems, in words
    n_runs: int = 0
    logged_to: list[str] = field(default_factory=list)  # parent run ids that got the artifacts
    empty: bool = False
    # seconds per stage of the build (benchmarks/report_speed.py prints them);
    # "(histories, within)" is the part of them spent reading per-epoch metrics
    timings: dict[str, float] = field(default_factory=dict)
    histories_read: int = 0  # runs whose per-epoch metrics were read


def generate(experiments: list[str], out_dir, tracking_uri: str | None = None,
             sweep: str | None = None, *, log_to_parent: bool = True,
             title: str | None = None) -> ReportResult:
    """Everything `build_report` does, returning the notes and paths too."""
    if isinstance(experiments, str):
        experiments = [experiments]
    tracking_uri = resolve_uri(tracking_uri)
    check_readable(tracking_uri)  # before anything is written: never a report of a typo
    out = Path(out_dir).resolve()
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # a previous report's figures must not linger
        stale.unlink()

    timings: dict[str, float] = {}
    clock = _Clock(timings)
    with clock("read runs"):
        runset = load_runs(experiments, tracking_uri, sweep)
    runs = runset.runs
    result = ReportResult(out / REPORT_NAME, out, n_runs=len(runs), timings=timings)
    empty = ""
    if runs.empty:
        empty = ("No runs to report: " + (runset.notes[-1] if runset.notes else "nothing found")
                 + ". The page shows what could be read.")
        result.empty = True

    with clock("protocols"):
        runs, protos = protocols.assign(runs)
        runset.runs = runs
    with clock("tables"):
        conv, dropped = tables.convergence_subset(runs) if len(runs) else (runs, [])
        cell_list = tables.cells(conv)
    with clock("figures"):
        drawn = sections.draw(runs, cell_list, protos, runset.histories) if len(runs) \
            else sections.Drawn()
        for n in drawn.notes:
            runset.note(n)
        plots = drawn.plots
    differences = tables.protocol_differences(conv) if len(conv) else []
    page_sections = sections.sections(runs, cell_list, protos, drawn, differences, dropped)

    # ---- files -----------------------------------------------------------------
    clock.start("write page")
    for p in plots:
        path = fig_dir / f"{p.name}.png"
        path.write_bytes(p.png)
        result.figures.append(path)
    _write_tables(out, cell_list, runs)

    parents = covered_parents(runset) if log_to_parent else []
    artifact_path = artifact_path_for(parents, experiments, sweep)
    where = (", ".join(f"{runset.parents[p]['name']} ({p[:8]})" for p in parents)
             + f" under {artifact_path}/" if parents
             else "none (no parent run)" if log_to_parent else "not requested")
    summary = _summary(runset, experiments, sweep, cell_list, differences, where, protos)
    name = title or ("SAL report: " + ", ".join(experiments) + (f" (sweep {sweep})" if sweep else ""))

    def write_page():
        result.notes = list(runset.notes)
        result.path.write_text(page.render(title=name, summary=summary, notes=runset.notes,
                                           empty=empty, sections=page_sections),
                               encoding="utf-8")
        (out / "summary.json").write_text(json.dumps(_finite({
            "title": name, "summary": dict(summary), "notes": runset.notes, "empty": result.empty,
            "n_runs": result.n_runs, "figures": [f.name for f in result.figures],
            "cells": [asdict(c) for c in cell_list],
            "protocols": [asdict(p) for p in protos]}), indent=1, default=_json_default),
            encoding="utf-8")

    write_page()
    clock.start("log to parents")
    if parents:
        failed = _log_artifacts(runset, parents, out, result, artifact_path)
        if failed:
            write_page()
    clock.stop()
    if isinstance(runset.histories, Histories):
        timings["(histories, within)"] = runset.histories.seconds
        result.histories_read = runset.histories.n_read
    for n in runset.notes:
        log.info("report note: %s", n)
    log.info("report written to %s (%d runs, %d figures)", result.path, result.n_runs,
             len(result.figures))
    return result


def build_report(experiments: list[str], out_dir, tracking_uri: str | None = None,
                 sweep: str | None = None, **options) -> Path:
    """Write the report for `experiments` (names) into `out_dir`; return the HTML
    page's path. Problems are logged (logger "dashboards") and shown on the page;
    `generate` returns them as a list too."""
    return generate(experiments, out_dir, tracking_uri, sweep, **options).path


class _Clock:
    """Seconds per stage of a build, into `timings` (ReportResult.timings)."""

    def __init__(self, timings: dict[str, float]):
        self.timings, self._stage, self._t = timings, None, 0.0

    def start(self, stage: str) -> None:
        self.stop()
        self._stage, self._t = stage, time.perf_counter()

    def stop(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + \
                time.perf_counter() - self._t
            self._stage = None

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.start(stage)
        try:
            yield
        finally:
            self.stop()


def covered_parents(runset: RunSet) -> list[str]:
    """The parent runs of the sweeps this page covers: the top parent of every run
    on the page, and no other (not every sweep of the experiments read)."""
    if runset.runs.empty or "parent_id" not in runset.runs:
        return []
    return sorted({p for p in runset.runs["parent_id"].dropna() if p in runset.parents})


def artifact_path_for(parents: list[str], experiments, sweep) -> str:
    """`report` for a page of one sweep; a page covering several is logged beside
    that under `reports/<experiments>`, so it never replaces a sweep's own page."""
    if len(parents) <= 1:
        return ARTIFACT_PATH
    slug = "+".join(str(e) for e in experiments) + (f"-{sweep}" if sweep else "")
    return "reports/" + "".join(ch if ch.isalnum() or ch in "-_+." else "_" for ch in slug)[:120]


def _log_artifacts(runset: RunSet, parents: list[str], out: Path, result: ReportResult,
                   artifact_path: str = ARTIFACT_PATH) -> bool:
    client = MlflowClient(tracking_uri=runset.tracking_uri)
    failed = False
    for pid in parents:
        try:
            client.log_artifacts(pid, str(out), artifact_path=artifact_path)
            result.logged_to.append(pid)
        except Exception as exc:  # read-only store, artifact root unreachable
            failed = True
            runset.note(f"could not log the report to parent run {pid}: {exc}")
    return failed


def _summary(runset: RunSet, experiments, sweep, cell_list, protocol, where,
             protos=()) -> list[tuple[str, str]]:
    runs = runset.runs
    found = ", ".join(f"{n} (id {i})" for n, i in runset.experiments.items()) or "none"
    rows = [("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
            ("tracking URI", redact(runset.tracking_uri)),
            ("experiments asked", ", ".join(map(str, experiments)) or "none"),
            ("experiments found", found),
            ("sweep", sweep or "all runs of the experiments"),
            ("runs (one per seed)", str(len(runs)))]
    if len(runs):
        rows.append(("by status", ", ".join(f"{s}: {n}" for s, n in
                                            runs["status"].value_counts().items())))
        rows.append(("datasets", ", ".join(sorted(runs["dataset"].dropna().unique(),
                                                  key=tables.dataset_sort_key))))
        rows.append(("methods", ", ".join(sorted(runs["method"].dropna().unique(),
                                                 key=lambda m: tables.METHOD_ORDER.get(m, 9)))))
        rows.append(("table cells", str(len(cell_list))))
        rows.append(("protocols", "; ".join(p.name for p in protos) or "none"))
    if runset.parents:
        rows.append(("sweep parent runs", ", ".join(f"{v['name']} ({k[:8]})"
                                                    for k, v in runset.parents.items())))
    rows.append(("report logged to", where))
    if protocol:
        rows.append(("differs from the paper's protocol", "; ".join(protocol)))
    rows.append(("statistics", "mean ± sample std (ddof 1) over seeds of final-epoch values"))
    return rows


def _write_tables(out: Path, cell_list, runs: pd.DataFrame) -> None:
    frame = pd.DataFrame([{"dataset": c.dataset, "column": c.column, "val_acc_mean": c.acc_mean,
                           "val_acc_std": c.acc_std, "n": c.n, "n_runs": c.n_runs,
                           "configs": c.n_configs, "chosen": c.chosen} for c in cell_list])
    frame.to_csv(out / "table2.csv", index=False)
    pd.DataFrame([{"dataset": c.dataset, "column": c.column, "final_train_loss": c.train_loss,
                   "final_val_loss": c.val_loss, "n": c.n} for c in cell_list]) \
        .to_csv(out / "table3.csv", index=False)
    keep = [c for c in page.RUN_COLUMNS if c in runs] + (["run_id"] if "run_id" in runs else [])
    runs[keep].to_csv(out / "runs.csv", index=False) if len(runs) else \
        (out / "runs.csv").write_text("")


def _finite(value):
    """JSON has no NaN: missing numbers become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
