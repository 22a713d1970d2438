"""`sal-ray report`: one HTML page of sweeps, read from what they wrote to MLflow.

    sal-ray report --experiment sal-table2 --out reports/table2 [--sweep table2]

mlflow, matplotlib and the `dashboards` package load only when the command runs,
so `sal-ray train` stays free of them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..tracking.store import check_readable, resolve_uri
from .options import check_folder, refuses_bad_input


def register(subparsers) -> None:
    rep = subparsers.add_parser(
        "report", help="HTML report (Tables 2-3, figures) of sweeps, read from MLflow",
        description="Build one self-contained HTML page (plus PNGs, CSVs and summary.json) "
                    "from the runs of MLflow experiments: Table 2 accuracies, Table 3 losses, "
                    "accuracy against n_areas, depth and width, SAL against MoE, learning "
                    "curves, area usage, and Optuna search views, one figure per protocol "
                    "(runs differing in a fixed setting are never pooled), the paper's row "
                    "beside every dataset it reports. The report is also logged as artifacts "
                    "into the parent run of each sweep whose runs it shows, and no other "
                    "(report/report.html; a page of several sweeps under "
                    "reports/<experiments>/).")
    rep.add_argument("--experiment", action="append", required=True, metavar="NAME",
                     help="MLflow experiment name; repeat for several")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder to write the report to")
    rep.add_argument("--tracking-uri", default=None, metavar="URI",
                     help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                          "sqlite:///<cwd>/mlflow.db)")
    rep.add_argument("--sweep", default=None, metavar="NAME",
                     help="only runs tagged sweep=NAME (default: every run of the experiments)")
    rep.add_argument("--no-log", dest="log_to_parent", action="store_false",
                     help="do not log the report as artifacts of the covered sweeps' parent runs")
    rep.add_argument("--strict", action="store_true",
                     help="exit with status 1 when the report found data problems")
    rep.set_defaults(func=cmd_report)



def import_dashboards(module: str = "report"):
    """`dashboards` is a top-level package beside `sal_ray`: installed with it by
    pyproject, or found in a source checkout next to this package."""
    name = f"dashboards.{module}"
    try:
        return importlib.import_module(name)
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        if not (root / "dashboards" / "__init__.py").exists():
            raise
        sys.path.insert(0, str(root))
        return importlib.import_module(name)


@refuses_bad_input("sal-ray report")
def cmd_report(args) -> int:
    uri = resolve_uri(args.tracking_uri)
    check_readable(uri)  # before anything is read or written
    check_folder("out", args.out)
    report = import_dashboards()
    result = report.generate(args.experiment, args.out, uri, args.sweep,
                             log_to_parent=args.log_to_parent)
    for note in result.notes:
        print(f"sal-ray report: note: {note}", file=sys.stderr)
    print(f"report: {result.path} ({result.n_runs} runs, {len(result.figures)} figures)")
    if result.logged_to:
        print("logged as artifacts 'report/' of parent run(s) " + ", ".join(result.logged_to))
    if result.empty:
        print("sal-ray report: the report is empty: no runs matched", file=sys.stderr)
        return 1
    return 1 if (args.strict and result.notes) else 0


