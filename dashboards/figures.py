"""The report's figures, drawn with matplotlib's object API (no pyplot state,
Agg canvas), so building a report never opens a window or touches a backend
some other code chose.

Every function returns a list of `Plot`s; an empty list with a reason when the
runs hold nothing to draw (no depth variation, no MoE runs, ...).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import paper, tables

COLORS = {"bp": "#444444", "sal": "#1f77b4", "moe": "#d62728"}
DPI = 100


@dataclass
class Plot:
    name: str        # file stem, unique in a report
    title: str
    caption: str
    png: bytes


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 3):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))


def _errorbar(ax, x, mean, std, **kw):
    std = np.nan_to_num(np.asarray(std, dtype=float), nan=0.0)
    ax.errorbar(x, mean, yerr=std, capsize=3, marker="o", ms=4, **kw)


# ---- accuracy against n_areas (Table 2 as a plot) -------------------------------

def accuracy_vs_areas(cell_list: list[tables.Cell]) -> list[Plot]:
    by_ds: dict[str, list[tables.Cell]] = {}
    for c in cell_list:
        by_ds.setdefault(c.dataset, []).append(c)
    shown = {d: cs for d, cs in by_ds.items() if any(c.column != "Baseline" for c in cs)}
    if not shown:
        return []
    fig, axes = _grid(len(shown))
    for ax, (dataset, cs) in zip(axes, sorted(shown.items(), key=lambda t: tables.dataset_sort_key(t[0]))):
        for method, prefix in (("sal", "SAL-"), ("moe", "MoE-")):
            pts = sorted((int(c.column[len(prefix):]), c) for c in cs if c.column.startswith(prefix))
            pts = [(n, c) for n, c in pts if math.isfinite(c.acc_mean)]
            if pts:
                _errorbar(ax, [n for n, _ in pts], [c.acc_mean for _, c in pts],
                          [c.acc_std for _, c in pts], color=COLORS[method],
                          label=prefix.rstrip("-"))
        base = [c for c in cs if c.column == "Baseline" and math.isfinite(c.acc_mean)]
        if base:
            b = base[0]
            ax.axhline(b.acc_mean, color=COLORS["bp"], ls="--", label="Baseline (BP)")
            if math.isfinite(b.acc_std):
                ax.axhspan(b.acc_mean - b.acc_std, b.acc_mean + b.acc_std,
                           color=COLORS["bp"], alpha=0.12)
        pub = paper.ACCURACY.get(dataset)
        if pub:
            pts = sorted((int(k[4:]), v) for k, v in pub.items() if k.startswith("SAL-"))
            ax.errorbar([n for n, _ in pts], [v[0] for _, v in pts], yerr=[v[1] for _, v in pts],
                        color="#999999", ls=":", marker="s", ms=4, capsize=3,
                        label="SAL (paper)")
            if "Baseline" in pub:
                ax.axhline(pub["Baseline"][0], color="#999999", ls="-.", lw=1,
                           label="Baseline (paper)")
        ax.set_xscale("log", base=2)
        ax.set_title(dataset)
        ax.set_xlabel("n_areas (experts for MoE)")
        ax.set_ylabel("final val accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [Plot("accuracy_vs_n_areas", "Accuracy against n_areas",
                 "Final-epoch validation accuracy, mean ± std over seeds (error bars; band "
                 "for the baseline), per dataset. Grey dotted: the paper's published values.",
                 _png(fig))]


# ---- depth and width (paper Figs. 2 and 3) --------------------------------------

def accuracy_vs(runs: pd.DataFrame, param: str, fig_no: str) -> tuple[list[Plot], str]:
    if param not in runs or runs.empty:
        return [], f"no '{param}' parameter in the runs"
    datasets = [d for d, g in runs.groupby("dataset") if g[param].nunique() > 1]
    if not datasets:
        return [], f"every run has the same {param}: nothing to plot against it"
    datasets.sort(key=tables.dataset_sort_key)
    fig, axes = _grid(len(datasets))
    keyed = tables.with_columns(runs[runs["dataset"].isin(datasets)])
    best = tables.select_best_configs(keyed, ["dataset", "column", param])
    for ax, dataset in zip(axes, datasets):
        g = best[best["dataset"] == dataset]
        columns = sorted(g["column"].unique(), key=tables.column_sort_key)
        colors = _column_colors(columns)
        for column in columns:
            pts = []
            for value, h in g[g["column"] == column].groupby(param):
                mean, std, n = tables.seed_stats(100.0 * h["final_val_acc"])
                if n:
                    pts.append((value, mean, std))
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                          label=column, color=colors[column])
        ax.set_xscale("log", base=2)
        values = sorted(g[param].dropna().unique())
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
        ax.set_title(dataset)
        ax.set_xlabel(param)
        ax.set_ylabel("final val accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [Plot(f"accuracy_vs_{param}", f"Accuracy against {param} (paper Fig. {fig_no})",
                 f"Final-epoch validation accuracy against {param}, mean ± std over seeds; "
                 "where other options varied, each point is its best configuration.",
                 _png(fig))], ""


# ---- SAL against MoE (paper Figs. 4-5) ------------------------------------------

def sal_vs_moe(cell_list: list[tables.Cell]) -> tuple[list[Plot], str]:
    cmap = {(c.dataset, c.column): c for c in cell_list}
    pairs = []  # (dataset, n, sal cell, moe cell)
    for (dataset, column), c in cmap.items():
        if column.startswith("SAL-"):
            n = column[4:]
            m = cmap.get((dataset, f"MoE-{n}"))
            if m and math.isfinite(c.acc_mean) and math.isfinite(m.acc_mean):
                pairs.append((dataset, int(n), c, m))
    if not pairs:
        return [], "no dataset has both SAL-N and MoE-N runs with final accuracies"
    pairs.sort(key=lambda p: (tables.dataset_sort_key(p[0]), p[1]))
    datasets = sorted({p[0] for p in pairs}, key=tables.dataset_sort_key)
    fig, axes = _grid(len(datasets) + 1)
    for ax, dataset in zip(axes, datasets):
        ps = [p for p in pairs if p[0] == dataset]
        x = np.arange(len(ps))
        for off, idx, method in ((-0.2, 2, "sal"), (0.2, 3, "moe")):
            ax.bar(x + off, [p[idx].acc_mean for p in ps], width=0.4,
                   yerr=[0 if not math.isfinite(p[idx].acc_std) else p[idx].acc_std for p in ps],
                   capsize=3, color=COLORS[method], label=method.upper() if method == "sal"
                   else "MoE")
        ax.set_xticks(x, [str(p[1]) for p in ps])
        ax.set_xlabel("n_areas = n_experts")
        ax.set_ylabel("final val accuracy %")
        ax.set_title(dataset)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for dataset in datasets:
        ps = [p for p in pairs if p[0] == dataset]
        ax.scatter([p[3].acc_mean for p in ps], [p[2].acc_mean for p in ps], label=dataset)
        for p in ps:
            ax.annotate(str(p[1]), (p[3].acc_mean, p[2].acc_mean), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    lo = min(min(p[2].acc_mean, p[3].acc_mean) for p in pairs)
    hi = max(max(p[2].acc_mean, p[3].acc_mean) for p in pairs)
    pad = max(1.0, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999999", ls="--", lw=1)
    ax.set_xlabel("MoE accuracy %")
    ax.set_ylabel("SAL accuracy %")
    ax.set_title("SAL against MoE (above the line: SAL wins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [Plot("sal_vs_moe", "SAL against MoE (paper Figs. 4-5)",
                 "Left: SAL-N and MoE-N (n_experts = n_areas) side by side, mean ± std over "
                 "seeds. Right: each (dataset, N) pair, labelled with N.", _png(fig))], ""


# ---- learning curves ------------------------------------------------------------

def learning_curves(cell_list: list[tables.Cell], histories: dict) -> tuple[list[Plot], str]:
    plots = []
    datasets = sorted({c.dataset for c in cell_list}, key=tables.dataset_sort_key)
    for dataset in datasets:
        cs = sorted((c for c in cell_list if c.dataset == dataset),
                    key=lambda c: tables.column_sort_key(c.column))
        keys = ("val_acc", "train_loss", "val_loss")
        stats = {c.column: {k: tables.curve_stats(histories, c.run_ids, k) for k in keys}
                 for c in cs}
        if not any(len(s[k]) for s in stats.values() for k in keys):
            continue
        fig = Figure(figsize=(13, 3.6), layout="constrained")
        axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
        cmap = _column_colors([c.column for c in cs])
        for ax, key in zip(axes, keys):
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
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        fig.suptitle(dataset)
        plots.append(Plot(f"curves_{_safe(dataset)}", f"Learning curves: {dataset}",
                          "Per epoch, mean over seeds (line) ± std (band), for each Table 2 "
                          "cell's configuration.", _png(fig)))
    return plots, ("" if plots else "no per-epoch metric histories in the runs")


def _column_colors(columns: list[str]) -> dict[str, str]:
    out = {}
    sal = [c for c in columns if c.startswith("SAL-")]
    moe = [c for c in columns if c.startswith("MoE-")]
    blues, reds = matplotlib.colormaps["Blues"], matplotlib.colormaps["Reds"]
    for i, c in enumerate(sal):
        out[c] = blues(0.4 + 0.6 * (i + 1) / max(len(sal), 1))
    for i, c in enumerate(moe):
        out[c] = reds(0.4 + 0.6 * (i + 1) / max(len(moe), 1))
    for c in columns:
        out.setdefault(c, COLORS["bp"])
    return out


# ---- area usage -----------------------------------------------------------------

MAX_HEATMAPS = 24


def area_usage(runs: pd.DataFrame) -> tuple[list[Plot], str]:
    routed = runs[(runs["n_areas"] > 1) & (runs["method"] != "bp")] if len(runs) else runs
    if routed.empty:
        return [], "no routed runs (n_areas > 1)"
    keyed = tables.with_columns(routed)
    groups = []
    for (dataset, column, config), g in keyed.groupby(["dataset", "column", "config"], sort=False):
        found = tables.area_share_matrix(g)
        if found is None:
            continue
        varying = {k for k, _ in config
                   if keyed[keyed["column"] == column]["config"].map(lambda c: dict(c).get(k))
                   .astype(str).nunique() > 1}
        label = f"{dataset} {column}" + (f" ({tables.describe_config(config, varying)})"
                                          if varying else "")
        groups.append((tables.dataset_sort_key(dataset), tables.column_sort_key(column), label,
                       found, len(g)))
    if not groups:
        return [], "routed runs logged no area usage (area_usage.json or area_share metrics)"
    groups.sort(key=lambda t: (t[0], t[1], t[2]))
    note = ""
    if len(groups) > MAX_HEATMAPS:
        note = f"{len(groups)} routed configurations; the first {MAX_HEATMAPS} are drawn"
        groups = groups[:MAX_HEATMAPS]
    most_layers = max(len(g[3][1]) for g in groups)
    fig, axes = _grid(len(groups), width=4.4, height=1.6 + min(0.12 * most_layers, 3.0),
                      max_cols=3)
    for ax, (_, _, label, (mat, layers), n) in zip(axes, groups):
        im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=max(np.nanmax(mat), 1e-9),
                       interpolation="nearest")
        ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers] if len(layers) <= 12
                      else [str(l) if i % max(1, len(layers) // 8) == 0 else ""
                            for i, l in enumerate(layers)])
        ax.set_xlabel("area")
        ax.set_title(f"{label}, {n} seed(s)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share")
    return [Plot("area_usage", "Area usage per routed layer",
                 "Share of training samples routed to each area in the final epoch "
                 "(each run's area_usage.json, or its area_share metrics), mean over "
                 "seeds; rows are routed layers. An even split is 1/n_areas; dark columns are areas no sample chose.",
                 _png(fig))], note


# ---- Optuna searches ------------------------------------------------------------

def search_views(runs: pd.DataFrame) -> tuple[list[Plot], list[str]]:
    plots, notes = [], []
    for dataset, method, g, params in tables.search_groups(runs):
        try:
            imp = tables.param_importances(g, params)
        except Exception as exc:  # too few distinct trials for fANOVA, ...
            notes.append(f"{dataset}/{method}: parameter importance not computed ({exc})")
            imp = {}
        fig = Figure(figsize=(13, 3.8), layout="constrained")
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
        fig.suptitle(f"{dataset} / {method}: {len(g)} runs")
        plots.append(Plot(f"search_{_safe(dataset)}_{_safe(method)}",
                          f"Search: {dataset} / {method}",
                          "Left: fANOVA importance (Optuna's FanovaImportanceEvaluator, seed 0) "
                          "on an in-memory study with one trial per run, objective final "
                          "val accuracy. Right: parallel coordinates, one line per run, "
                          "coloured by final val accuracy.", _png(fig)))
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
