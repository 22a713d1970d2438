"""Reports over SAL sweeps, read from MLflow alone.

    MLflow store -> store.load_runs -> tables / figures -> page.render -> HTML + PNG

Nothing here trains or imports the trainer: the report is built from what the
tracker wrote (the naming contract in docs/dashboards.md), so it works on a
laptop with only the MLflow database of a sweep run elsewhere.
"""

from __future__ import annotations

__all__ = ["build_report", "generate"]


def build_report(*args, **kwargs):
    """See `dashboards.report.build_report` (imported lazily: matplotlib loads only here)."""
    from .report import build_report as _build  # matplotlib and mlflow load here
    return _build(*args, **kwargs)


def generate(*args, **kwargs):
    """See `dashboards.report.generate`."""
    from .report import generate as _generate  # matplotlib and mlflow load here
    return _generate(*args, **kwargs)
