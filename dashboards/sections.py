"""The page's figures and sections: every figure once per protocol.

    draw(runs, cells, protocols, histories) -> Drawn(plots, reasons, notes)
    sections(...) -> [(id, heading, inner html)]

Runs of different protocols (protocols.py) never meet in one figure: each
figure function is called with one protocol's runs or cells and that protocol's
`Scope` (its name in the title; its slug in the file name when the page holds
more than one protocol, so a one-sweep report keeps plain file names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from . import curves, figures, page, search, tables
from .protocols import PROTOCOL_COLUMN, Protocol

# (key, heading, file-name prefix) in page order.
FIGURE_SECTIONS = [("areas", "Accuracy against n_areas", "accuracy_vs_n_areas"),
                   ("depth", "Accuracy against depth (paper Fig. 2)", "accuracy_vs_depth"),
                   ("width", "Accuracy against width (paper Fig. 3)", "accuracy_vs_width"),
                   ("moe", "SAL against MoE (paper Figs. 4-5)", "sal_vs_moe"),
                   ("curves", "Learning curves", "curves_"),
                   ("usage", "Area usage per layer", "area_usage"),
                   ("search", "Hyperparameter search (Optuna views)", "search_")]


@dataclass
class Drawn:
    plots: list = field(default_factory=list)
    reasons: dict = field(default_factory=dict)   # key -> why nothing was drawn ("" if drawn)
    notes: list = field(default_factory=list)     # data problems met while drawing


def scope_of(p: Protocol, several: bool) -> figures.Scope:
    return figures.Scope(p.name, f"__{p.slug}" if several else "")


def draw(runs: pd.DataFrame, cell_list: list[tables.Cell], protocols: list[Protocol],
         histories) -> Drawn:
    out = Drawn()

    def add(key: str, found: list, reason: str = "") -> None:
        out.plots.extend(found)
        if found:
            out.reasons[key] = ""
        elif key not in out.reasons:  # the first protocol's reason stands for all
            out.reasons[key] = reason or "nothing to draw"

    several = len(protocols) > 1
    for p in protocols:
        scope = scope_of(p, several)
        sub = runs[runs[PROTOCOL_COLUMN] == p.name]
        cs = [c for c in cell_list if c.protocol == p.name]
        found = figures.accuracy_vs_areas(cs, scope)
        add("areas", found, "" if found else "no dataset has SAL or MoE cells with final accuracies at two or more n_areas")
        add("depth", *figures.accuracy_vs(sub, "depth", "2", scope))
        add("width", *figures.accuracy_vs(sub, "width", "3", scope))
        add("moe", *figures.sal_vs_moe(cs, scope))
        add("curves", *curves.learning_curves(cs, histories, scope))
        add("usage", *curves.area_usage(sub, scope))
        found, notes = search.search_views(sub, scope)
        out.notes += notes
        add("search", found)
    return out


def table_intro(cell_list, differences: list[str], dropped: list[str],
                protocols: list[Protocol]) -> str:
    intro = ("<p>Final-epoch validation accuracy in %, mean ± sample std (ddof 1) over "
             "seeds; ★ marks the best of each row. † marks a cell where several "
             "configurations were run: it shows the one with the best mean (hover for it). "
             "(n=a/b): only a of b seeds have final metrics. Italic rows: the paper's "
             "published numbers (arXiv 2601.21561, Table 2/3) for every dataset it "
             "reports.</p>")
    if len(protocols) > 1:
        intro += ("<p class='small'>The runs follow several protocols (listed under "
                  "<a href='#sec-protocols'>Protocols</a>): each row is one dataset under one "
                  "protocol, named beneath the dataset; rows of different protocols are "
                  "never pooled.</p>")
    if differences and any(c.dataset in page.PUBLISHED_ACC for c in cell_list):
        intro += ("<p class='small'>These runs do not follow the protocol of the published "
                  "numbers: " + page.esc("; ".join(differences)) + ". Compare shapes, not "
                  "values.</p>")
    return intro + "".join(f"<p class='small'>{page.esc(d)}</p>" for d in dropped)


def sections(runs: pd.DataFrame, cell_list, protocols: list[Protocol], drawn: Drawn,
             differences: list[str], dropped: list[str]) -> list[tuple[str, str, str]]:
    out = [("table2", "Table 2: final validation accuracy (%)",
            table_intro(cell_list, differences, dropped, protocols)
            + page.accuracy_table(cell_list)),
           ("table3", "Table 3: final losses (train / validation), mean over seeds",
            page.loss_table(cell_list)),
           ("sec-protocols", "Protocols", page.protocols_table(protocols))]
    for key, heading, prefix in FIGURE_SECTIONS:
        mine = [p for p in drawn.plots if p.name.startswith(prefix)]
        inner = "".join(page.img_tag(p) for p in mine)
        reason = drawn.reasons.get(key, "no runs")
        if reason:
            inner += f'<p class="absent">{page.esc(reason)}</p>'
        if key == "search" and not mine and len(runs):
            inner = ('<p class="absent">No group of runs (dataset × method) of one protocol '
                     'varies two or more options over four or more finished runs: no '
                     'importance or parallel-coordinate view.</p>')
        out.append((f"sec-{key}", heading, inner))
    out.append(("sec-runs", "Runs", page.runs_table(runs)))
    return out
