"""The report's figures against n_areas, depth, width and MoE, and what every
figure module shares (Plot, Scope, the grid and the PNG writer). Learning
curves and area usage are in curves.py, the Optuna views in search.py.

Drawn with matplotlib's object API (no pyplot state, Agg canvas), so building a
report never opens a window or touches a backend some other code chose. Each
figure draws the runs of one protocol (`Scope`, see protocols.py), named in its
title: the report calls every function once per protocol and never hands one
the runs of two.

Every function returns a list of `Plot`s; an empty list with a reason when the
runs hold nothing to draw (no depth variation, no MoE runs, ...). Margins are
fixed in inches rather than computed by a layout engine: constrained layout
measured every tick label of every panel and was half the report's build time.
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


@dataclass(frozen=True)
class Scope:
    """The protocol a figure draws: its name goes into the figure's title, its
    slug (when the page holds several protocols) into the file name."""
    label: str = ""
    suffix: str = ""

    def name(self, stem: str) -> str:
        return stem + self.suffix

    def title(self, text: str) -> str:
        return f"{text}: {self.label}" if self.label else text


WHOLE = Scope()


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# Margins around each panel, in inches: tick labels and axis label on the left,
# axis label below, the title above (and the figure's title above the grid).
LEFT, RIGHT, BOTTOM, TOP, SUPTITLE = 0.75, 0.25, 0.55, 0.35, 0.35


def grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 3,
         title: str = "", left: float = LEFT, right: float = RIGHT):
    """A figure of n panels of width x height inches (margins included), at most
    max_cols a row, with `title` above them."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    top = SUPTITLE if title else 0.0
    w, h = width * cols, height * rows + top
    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=BOTTOM / h,
                        top=1 - (top + TOP) / h,
                        wspace=(left + right) / (width - left - right),
                        hspace=(BOTTOM + TOP) / (height - BOTTOM - TOP))
    if title:
        fig.suptitle(title, y=1 - 0.12 / h, va="top", fontsize=10)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))


def errorbar(ax, x, mean, std, **kw):
    std = np.nan_to_num(np.asarray(std, dtype=float), nan=0.0)
    ax.errorbar(x, mean, yerr=std, capsize=3, marker="o", ms=4, **kw)


# ---- accuracy against n_areas (Table 2 as a plot) -------------------------------

def accuracy_vs_areas(cell_list: list[tables.Cell], scope: Scope = WHOLE) -> list[Plot]:
    by_ds: dict[str, list[tables.Cell]] = {}
    for c in cell_list:
        by_ds.setdefault(c.dataset, []).append(c)
    # a curve needs two points: SAL or MoE at two n_areas (a width study's lone
    # SAL-4 against n_areas would be a figure saying nothing)
    shown = {d: cs for d, cs in by_ds.items()
             if max(sum(c.column.startswith(p) for c in cs) for p in ("SAL-", "MoE-")) >= 2}
    if not shown:
        return []
    fig, axes = grid(len(shown), title=scope.label)
    for ax, (dataset, cs) in zip(axes, sorted(shown.items(), key=lambda t: tables.dataset_sort_key(t[0]))):
        for method, prefix in (("sal", "SAL-"), ("moe", "MoE-")):
            pts = sorted((int(c.column[len(prefix):]), c) for c in cs if c.column.startswith(prefix))
            pts = [(n, c) for n, c in pts if math.isfinite(c.acc_mean)]
            if pts:
                errorbar(ax, [n for n, _ in pts], [c.acc_mean for _, c in pts],
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
    return [Plot(scope.name("accuracy_vs_n_areas"), scope.title("Accuracy against n_areas"),
                 "Final-epoch validation accuracy, mean ± std over seeds (error bars; band "
                 "for the baseline), per dataset. Grey dotted: the paper's published values.",
                 png(fig))]


# ---- depth and width (paper Figs. 2 and 3) --------------------------------------

def accuracy_vs(runs: pd.DataFrame, param: str, fig_no: str,
                scope: Scope = WHOLE) -> tuple[list[Plot], str]:
    if param not in runs or runs.empty:
        return [], f"no '{param}' parameter in the runs"
    datasets = [d for d, g in runs.groupby("dataset") if g[param].nunique() > 1]
    if not datasets:
        return [], f"every run has the same {param}: nothing to plot against it"
    datasets.sort(key=tables.dataset_sort_key)
    fig, axes = grid(len(datasets), title=scope.label)
    keyed = tables.with_columns(runs[runs["dataset"].isin(datasets)])
    best = tables.select_best_configs(keyed, ["dataset", "column", param])
    for ax, dataset in zip(axes, datasets):
        g = best[best["dataset"] == dataset]
        columns = sorted(g["column"].unique(), key=tables.column_sort_key)
        colors = column_colors(columns)
        for column in columns:
            pts = []
            for value, h in g[g["column"] == column].groupby(param):
                mean, std, n = tables.seed_stats(100.0 * h["final_val_acc"])
                if n:
                    pts.append((value, mean, std))
            if pts:
                errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
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
    return [Plot(scope.name(f"accuracy_vs_{param}"),
                 scope.title(f"Accuracy against {param} (paper Fig. {fig_no})"),
                 f"Final-epoch validation accuracy against {param}, mean ± std over seeds; "
                 "where other options varied, each point is its best configuration.",
                 png(fig))], ""


# ---- SAL against MoE (paper Figs. 4-5) ------------------------------------------

def sal_vs_moe(cell_list: list[tables.Cell], scope: Scope = WHOLE) -> tuple[list[Plot], str]:
    cmap = {(c.dataset, c.column): c for c in cell_list}  # one protocol: one cell each
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
    fig, axes = grid(len(datasets) + 1, title=scope.label)
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
    return [Plot(scope.name("sal_vs_moe"), scope.title("SAL against MoE (paper Figs. 4-5)"),
                 "Left: SAL-N and MoE-N (n_experts = n_areas) side by side, mean ± std over "
                 "seeds. Right: each (dataset, N) pair, labelled with N.", png(fig))], ""


def column_colors(columns: list[str]) -> dict[str, str]:
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
