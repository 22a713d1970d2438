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

import datetime as _dt
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from . import figures, page, tables
from .store import RunSet, check_readable, load_runs, redact, resolve_uri

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

    runset = load_runs(experiments, tracking_uri, sweep)
    runs = runset.runs
    result = ReportResult(out / REPORT_NAME, out, n_runs=len(runs))
    empty = ""
    if runs.empty:
        empty = ("No runs to report: " + (runset.notes[-1] if runset.notes else "nothing found")
                 + ". The page shows what could be read.")
        result.empty = True

    conv, dropped = tables.convergence_subset(runs) if len(runs) else (runs, [])
    cell_list = tables.cells(conv)
    sections, plots, absent = [], [], {}

    def add(key: str, found: list, reason: str = "") -> None:
        plots.extend(found)
        absent[key] = reason or ("" if found else "nothing to draw")

    if len(runs):
        found = figures.accuracy_vs_areas(cell_list)
        add("areas", found, "" if found else "no SAL or MoE cell with final accuracies")
        add("depth", *figures.accuracy_vs(runs, "depth", "2"))
        add("width", *figures.accuracy_vs(runs, "width", "3"))
        add("moe", *figures.sal_vs_moe(cell_list))
        add("curves", *figures.learning_curves(cell_list, runset.histories))
        add("usage", *figures.area_usage(runs))
        search_plots, search_notes = figures.search_views(runs)
        for n in search_notes:
            runset.note(n)
        add("search", search_plots)

    # ---- sections --------------------------------------------------------------
    protocol = tables.protocol_differences(conv) if len(conv) else []
    t2_intro = ("<p>Final-epoch validation accuracy in %, mean ± sample std (ddof 1) over "
                "seeds; ★ marks the best of each row. † marks a cell where several "
                "configurations were run: it shows the one with the best mean (hover for it). "
                "(n=a/b): only a of b seeds have final metrics. Italic rows: the paper's "
                "published numbers (arXiv 2601.21561, Table 2/3).</p>")
    if protocol and any(r in {c.dataset for c in cell_list} for r in ("digits",)):
        t2_intro += ("<p class='small'>These runs do not follow the protocol of the published "
                     "numbers: " + page.esc("; ".join(protocol)) + ". Compare shapes, not "
                     "values.</p>")
    t2_intro += "".join(f"<p class='small'>{page.esc(d)}</p>" for d in dropped)
    sections.append(("table2", "Table 2: final validation accuracy (%)",
                     t2_intro + page.accuracy_table(cell_list)))
    sections.append(("table3", "Table 3: final losses (train / validation), mean over seeds",
                     page.loss_table(cell_list)))

    by_section = [("areas", "Accuracy against n_areas", "accuracy_vs_n_areas"),
                  ("depth", "Accuracy against depth (paper Fig. 2)", "accuracy_vs_depth"),
                  ("width", "Accuracy against width (paper Fig. 3)", "accuracy_vs_width"),
                  ("moe", "SAL against MoE (paper Figs. 4-5)", "sal_vs_moe"),
                  ("curves", "Learning curves", "curves_"),
                  ("usage", "Area usage per layer", "area_usage"),
                  ("search", "Hyperparameter search (Optuna views)", "search_")]
    for key, heading, prefix in by_section:
        mine = [p for p in plots if p.name.startswith(prefix)]
        inner = "".join(page.img_tag(p) for p in mine)
        reason = absent.get(key, "no runs")
        if reason:
            inner += f'<p class="absent">{page.esc(reason)}</p>'
        if key == "search" and not mine and len(runs):
            inner = ('<p class="absent">No group of runs (dataset × method) varies two or more '
                     'options over four or more finished runs: no importance or '
                     'parallel-coordinate view.</p>')
        sections.append((f"sec-{key}", heading, inner))
    sections.append(("sec-runs", "Runs", page.runs_table(runs)))

    # ---- files -----------------------------------------------------------------
    for p in plots:
        path = fig_dir / f"{p.name}.png"
        path.write_bytes(p.png)
        result.figures.append(path)
    _write_tables(out, cell_list, runs)

    parents = _parents_to_log(runset) if log_to_parent else []
    where = (", ".join(f"{runset.parents[p]['name']} ({p[:8]})" for p in parents)
             if parents else "none (no parent run)" if log_to_parent else "not requested")
    summary = _summary(runset, experiments, sweep, cell_list, protocol, where)
    name = title or ("SAL report: " + ", ".join(experiments) + (f" (sweep {sweep})" if sweep else ""))

    def write_page():
        result.notes = list(runset.notes)
        result.path.write_text(page.render(title=name, summary=summary, notes=runset.notes,
                                           empty=empty, sections=sections), encoding="utf-8")
        (out / "summary.json").write_text(json.dumps(_finite({
            "title": name, "summary": dict(summary), "notes": runset.notes, "empty": result.empty,
            "n_runs": result.n_runs, "figures": [f.name for f in result.figures],
            "cells": [asdict(c) for c in cell_list]}), indent=1, default=_json_default),
            encoding="utf-8")

    write_page()
    if parents:
        failed = _log_artifacts(runset, parents, out, result)
        if failed:
            write_page()
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


def _parents_to_log(runset: RunSet) -> list[str]:
    return sorted(p for p in runset.parents if p)


def _log_artifacts(runset: RunSet, parents: list[str], out: Path, result: ReportResult) -> bool:
    client = MlflowClient(tracking_uri=runset.tracking_uri)
    failed = False
    for pid in parents:
        try:
            client.log_artifacts(pid, str(out), artifact_path=ARTIFACT_PATH)
            result.logged_to.append(pid)
        except Exception as exc:  # read-only store, artifact root unreachable
            failed = True
            runset.note(f"could not log the report to parent run {pid}: {exc}")
    return failed


def _summary(runset: RunSet, experiments, sweep, cell_list, protocol, where) -> list[tuple[str, str]]:
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
