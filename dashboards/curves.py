"""Learning curves and area usage, one figure per protocol (see figures.py).

Learning curves: per protocol and dataset, val accuracy, train loss and val
loss per epoch, a mean line and a ± std band over seeds for each cell. Area
usage: per protocol, one figure of layers x areas heatmaps, one per routed
configuration, on one colour scale with one colour bar (a colour bar per panel
was an extra axes each, and axes are what a figure's build time goes to).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import tables
from .figures import WHOLE, Plot, Scope, column_colors, grid, png, safe


KEYS = ("val_acc", "train_loss", "val_loss")


def learning_curves(cell_list: list[tables.Cell], histories, scope: Scope = WHOLE
                    ) -> tuple[list[Plot], str]:
    """One figure per protocol, a row per dataset. `histories`: run id -> per-epoch
    frame (store.Histories reads them on use)."""
    rows = []
    for dataset in sorted({c.dataset for c in cell_list}, key=tables.dataset_sort_key):
        cs = sorted((c for c in cell_list if c.dataset == dataset),
                    key=lambda c: tables.column_sort_key(c.column))
        stats = {c.column: {k: tables.curve_stats(histories, c.run_ids, k) for k in KEYS}
                 for c in cs}
        if any(len(s[k]) for s in stats.values() for k in KEYS):
            rows.append((dataset, stats))
    if not rows:
        return [], "no per-epoch metric histories in the runs"
    fig, axes = grid(3 * len(rows), width=4.4, height=3.4, title=scope.label)
    for r, (dataset, stats) in enumerate(rows):
        cmap = column_colors(list(stats))
        for ax, key in zip(axes[3 * r:3 * r + 3], KEYS):
            scale = 100.0 if key.endswith("acc") else 1.0
            for column, s in stats.items():
                st = s[key]
                if not len(st):
                    continue
                x = st.index.to_numpy(dtype=float)
                mean = st["mean"].to_numpy() * scale
                std = np.nan_to_num(st["std"].to_numpy() * scale, nan=0.0)
                ax.plot(x, mean, color=cmap[column], label=column, marker="." if len(x) < 6 else None)
                ax.fill_between(x, mean - std, mean + std, color=cmap[column], alpha=0.15)
            ax.set_xlabel("epoch")
            ax.set_ylabel(key.replace("_", " ") + (" %" if scale == 100 else ""))
            ax.set_title(dataset, fontsize=9)
            ax.grid(alpha=0.3)
        axes[3 * r].legend(fontsize=7, ncol=2)
    names = [d for d, _ in rows]
    return [Plot(scope.name("curves_" + "_".join(safe(d) for d in names)),
                 scope.title(f"Learning curves: {', '.join(names)}"),
                 "Per epoch, mean over seeds (line) ± std (band), for each Table 2 cell's "
                 "configuration; a row per dataset.", png(fig))], ""


MAX_HEATMAPS = 12
# A cell run in more configurations than this (a search) shows its best one only.
MAX_CONFIGS = 4


def area_usage(runs: pd.DataFrame, scope: Scope = WHOLE) -> tuple[list[Plot], str]:
    routed = runs[(runs["n_areas"] > 1) & (runs["method"] != "bp")] if len(runs) else runs
    if routed.empty:
        return [], "no routed runs (n_areas > 1)"
    keyed = tables.with_columns(routed)
    n_configs = keyed.groupby(["dataset", "column"])["config"].transform("nunique")
    notes = []
    if (n_configs > MAX_CONFIGS).any():
        many = keyed[n_configs > MAX_CONFIGS]
        best = tables.select_best_configs(many, ["dataset", "column"])
        keyed = pd.concat([keyed[n_configs <= MAX_CONFIGS],
                           best.drop(columns=["n_configs", "chosen"])], ignore_index=True)
        notes.append("cells run in more than " f"{MAX_CONFIGS} configurations show their best")
    # per column, the options whose value differs between its configurations
    varying_in = {}
    for column, g in keyed.groupby("column", sort=False):
        varying_in[column] = tables.varying_options(g["config"].unique())
    groups = []
    for (dataset, column, config), g in keyed.groupby(["dataset", "column", "config"], sort=False):
        found = tables.area_share_matrix(g)
        if found is None:
            continue
        varying = varying_in[column]
        label = f"{dataset} {column}" + (f" ({tables.describe_config(config, varying)})"
                                          if varying else "")
        groups.append((tables.dataset_sort_key(dataset), tables.column_sort_key(column), label,
                       found, len(g)))
    if not groups:
        return [], "routed runs logged no area usage (area_usage.json or area_share metrics)"
    groups.sort(key=lambda t: (t[0], t[1], t[2]))
    if len(groups) > MAX_HEATMAPS:
        notes.append(f"{len(groups)} routed configurations; the first {MAX_HEATMAPS} are drawn")
        groups = groups[:MAX_HEATMAPS]
    note = "; ".join(notes)
    most_layers = max(len(g[3][1]) for g in groups)
    top = max(float(np.nanmax(g[3][0])) for g in groups)
    fig, axes = grid(len(groups), width=4.0, height=1.7 + min(0.12 * most_layers, 3.0),
                     max_cols=3, title=scope.label, left=0.85, right=0.9 if len(groups) < 3
                     else 0.25)
    im = None
    for ax, (_, _, label, (mat, layers), n) in zip(axes, groups):
        im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=max(top, 1e-9),
                       interpolation="nearest")
        ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers] if len(layers) <= 12
                      else [str(l) if i % max(1, len(layers) // 8) == 0 else ""
                            for i, l in enumerate(layers)])
        ax.set_xlabel("area")
        ax.set_title(f"{label}, {n} seed(s)", fontsize=8)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="share of samples")
    return [Plot(scope.name("area_usage"), scope.title("Area usage per routed layer"),
                 "Share of training samples routed to each area in the final epoch "
                 "(each run's area_usage.json, or its area_share metrics), mean over seeds; rows are routed layers; one colour "
                 "scale for every panel. An even split is 1/n_areas; dark columns are areas "
                 "no sample chose.", png(fig))], note
