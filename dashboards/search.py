"""The Optuna views of a search: parameter importance and parallel coordinates,
for each (dataset, method) of one protocol that searched two or more options
(tables.search_groups)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import tables
from .figures import COLORS, WHOLE, Plot, Scope, png, safe


def search_views(runs: pd.DataFrame, scope: Scope = WHOLE) -> tuple[list[Plot], list[str]]:
    plots, notes = [], []
    for dataset, method, g, params in tables.search_groups(runs):
        try:
            imp = tables.param_importances(g, params)
        except Exception as exc:  # too few distinct trials for fANOVA, ...
            notes.append(f"{dataset}/{method}: parameter importance not computed ({exc})")
            imp = {}
        fig = Figure(figsize=(13, 4.0))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.14, top=0.82, wspace=0.3)
        ax_imp = fig.add_subplot(1, 3, 1)
        ax_pc = fig.add_subplot(1, 3, (2, 3))
        if imp:
            names = list(imp)[::-1]
            ax_imp.barh(names, [imp[n] for n in names], color=COLORS.get(method, "#1f77b4"))
            ax_imp.set_xlabel("importance (fANOVA, normalised)")
        else:
            ax_imp.text(0.5, 0.5, "not computed", ha="center", va="center")
        ax_imp.set_title("parameter importance for final val acc", fontsize=9)
        _parallel(ax_pc, g, params)
        fig.suptitle(f"{dataset} / {method}: {len(g)} runs"
                     + (f"; {scope.label}" if scope.label else ""))
        plots.append(Plot(scope.name(f"search_{safe(dataset)}_{safe(method)}"),
                          scope.title(f"Search: {dataset} / {method}"),
                          "Left: fANOVA importance (Optuna's FanovaImportanceEvaluator, 16 trees, seed 0) "
                          "on an in-memory study with one trial per run, objective final "
                          "val accuracy. Right: parallel coordinates, one line per run, "
                          "coloured by final val accuracy.", png(fig)))
    return plots, notes


def _parallel(ax, g: pd.DataFrame, params: list[str]) -> None:
    axes_data, ticks = [], []
    for p in params + ["final_val_acc"]:
        col = g[p]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.to_numpy(dtype=float)
            if p != "final_val_acc" and vals.min() > 0 and vals.max() / vals.min() >= 20:
                vals, shown = np.log10(vals), (lambda v: f"{10 ** v:.2g}")
            else:
                shown = (lambda v: f"{v:.3g}")
            lo, hi = vals.min(), vals.max()
            span = hi - lo or 1.0
            axes_data.append((vals - lo) / span)
            ticks.append([(0.0, shown(lo)), (1.0, shown(hi))])
        else:
            cats = sorted({str(v) for v in col})
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            axes_data.append(np.array([pos[str(v)] for v in col]))
            ticks.append([(pos[c], c) for c in cats])
    mat = np.vstack(axes_data).T
    score = g["final_val_acc"].to_numpy(dtype=float)
    norm = matplotlib.colors.Normalize(score.min(), score.max() if score.max() > score.min()
                                       else score.min() + 1e-9)
    cmap = matplotlib.colormaps["viridis"]
    x = np.arange(mat.shape[1])
    for row, s in zip(mat, score):
        ax.plot(x, row, color=cmap(norm(s)), alpha=0.7, lw=1.2)
    for i, tk in enumerate(ticks):
        ax.axvline(i, color="#333333", lw=0.8)
        for y, text in tk:
            ax.annotate(text, (i, y), xytext=(3, 0), textcoords="offset points", fontsize=7,
                        va="center")
    ax.set_xticks(x, params + ["final val acc"], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("parallel coordinates (each axis min-max scaled; log where it spans 20x)",
                 fontsize=9)
