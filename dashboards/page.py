"""One self-contained HTML page: inline CSS, figures as base64 PNG, no script.

Table cells carry their exact numbers as data attributes (data-mean, data-std,
data-n, ...) next to the rounded text, so a test or a script can read the page
without re-parsing formatted strings.
"""

from __future__ import annotations

import base64
import html
import math

from . import paper, tables
from .figures import Plot

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5rem auto;
       max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td.row-head, th.row-head { text-align: left; }
td.small { white-space: normal; max-width: 40rem; }
td.best { font-weight: bold; background: #e8f4e8; }
tr.paper td { color: #666; font-style: italic; background: #fafafa; }
td.missing { color: #999; }
.notes { background: #fff7e0; border: 1px solid #f0d48a; padding: 0.5rem 1rem; }
.ok { background: #eef7ee; border: 1px solid #b7dcb7; padding: 0.5rem 1rem; }
.empty { background: #fdecea; border: 1px solid #f5a9a1; padding: 0.5rem 1rem; font-weight: bold; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; } p.absent { color: #777; font-style: italic; }
small, .small { color: #666; font-size: 0.85rem; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    return repr(float(value)) if value is not None and math.isfinite(value) else "nan"


def img_tag(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="fig-{esc(plot.name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(plot.title)}"><figcaption><b>{esc(plot.title)}.</b> '
            f'{esc(plot.caption)}</figcaption></figure>')


def _row_head(ds: str, protocol: str, named: bool) -> str:
    """A row of ours: the dataset, and its protocol when the table holds several."""
    head = esc(ds) + (f'<br><small class="protocol">{esc(protocol)}</small>' if named else "")
    return (f'<tr data-dataset="{esc(ds)}" data-protocol="{esc(protocol)}" data-source="ours">'
            f'<td class="row-head">{head}</td>')


def _table(table_id: str, cell_list: list[tables.Cell], ours, published: dict) -> str:
    """Rows of ours per (dataset, protocol), then the dataset's published row.
    ours(cell, best: bool) -> td; published[ds][column] -> td."""
    rows, cols, cmap = tables.grid(cell_list)
    if not rows:
        return '<p class="absent">No finished runs to tabulate.</p>'
    named = len({p for _, p in rows}) > 1
    out = [f'<table id="{table_id}"><thead><tr><th class="row-head">dataset</th>']
    out += [f'<th data-col="{esc(c)}">{esc(c)}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for i, (ds, protocol) in enumerate(rows):
        best = tables.best_columns(cmap, (ds, protocol), cols)
        out.append(_row_head(ds, protocol, named))
        for c in cols:
            cell = cmap.get((ds, protocol, c))
            out.append(f'<td class="missing" data-col="{esc(c)}">—</td>' if cell is None
                       else ours(cell, c in best))
        out.append("</tr>")
        last_of_dataset = i + 1 == len(rows) or rows[i + 1][0] != ds
        pub = published.get(ds)
        if pub and last_of_dataset:
            out.append(f'<tr class="paper" data-dataset="{esc(ds)}" data-source="paper">'
                       f'<td class="row-head">{esc(ds)} (paper)</td>')
            out += [pub[c] if c in pub else f'<td data-col="{esc(c)}">—</td>' for c in cols]
            out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _acc_cell(cell: tables.Cell, best: bool) -> str:
    c = cell.column
    klass = "cell best" if best else "cell"
    mark = " ★" if best else ""
    dagger = " †" if cell.n_configs > 1 else ""
    title = (f"{cell.n}/{cell.n_runs} seeds; best of {cell.n_configs} configurations: "
             f"{cell.chosen}" if cell.n_configs > 1 else f"{cell.n}/{cell.n_runs} seeds")
    if cell.protocol:
        title += f"; protocol {cell.protocol}"
    return (f'<td class="{klass}" data-col="{esc(c)}" data-mean="{_num(cell.acc_mean)}"'
            f' data-std="{_num(cell.acc_std)}" data-n="{cell.n}"'
            f' data-runs="{cell.n_runs}" data-configs="{cell.n_configs}"'
            f' title="{esc(title)}">{esc(cell.acc_text)}{mark}{dagger}</td>')


def _loss_cell(cell: tables.Cell, best: bool) -> str:
    return (f'<td class="cell" data-col="{esc(cell.column)}" data-train="{_num(cell.train_loss)}"'
            f' data-val="{_num(cell.val_loss)}" data-n="{cell.n}"'
            f' title="train ± {tables.fmt(cell.train_loss_std)}, val ± '
            f'{tables.fmt(cell.val_loss_std)}">'
            f'{tables.fmt(cell.train_loss)} / {tables.fmt(cell.val_loss)}</td>')


# The paper's cells, per dataset and column, as table cells: all ten datasets of
# Tables 2 and 3 (sal_ray/paper.py).
PUBLISHED_ACC = {ds: {c: f'<td data-col="{esc(c)}" data-mean="{m}" data-std="{s}">'
                         f'{m:.2f} ± {s:.2f}</td>' for c, (m, s) in cols.items()}
                 for ds, cols in paper.ACCURACY.items()}
PUBLISHED_LOSS = {ds: {c: f'<td data-col="{esc(c)}" data-train="{t}" data-val="{v}">'
                          f'{t:.2f} / {v:.2f}</td>' for c, (t, v) in cols.items()}
                  for ds, cols in paper.LOSSES.items()}


def accuracy_table(cell_list: list[tables.Cell]) -> str:
    return _table("table2", cell_list, _acc_cell, PUBLISHED_ACC)


def loss_table(cell_list: list[tables.Cell]) -> str:
    return _table("table3", cell_list, _loss_cell, PUBLISHED_LOSS)


def protocols_table(protocols) -> str:
    """One row per protocol (protocols.Protocol): what it fixed, what it varied."""
    if not protocols:
        return '<p class="absent">No runs.</p>'
    out = ['<table id="protocols"><thead><tr><th class="row-head">protocol</th><th>runs</th>'
           '<th class="row-head">varied</th><th class="row-head">fixed</th>'
           '<th class="row-head">differs from the paper\'s protocol</th>'
           '<th class="row-head">sweeps (experiments)</th></tr></thead><tbody>']
    for p in protocols:
        fixed = ", ".join(f"{k}={v}" for k, v in sorted(p.fixed.items()) if v is not None)
        where = ", ".join(p.sweeps) or "no sweep tag"
        out.append(f'<tr data-protocol="{esc(p.name)}"><td class="row-head">{esc(p.name)}</td>'
                   f'<td>{p.n_runs}</td><td class="row-head">{esc(", ".join(p.axes) or "—")}</td>'
                   f'<td class="row-head small">{esc(fixed)}</td>'
                   f'<td class="row-head">{esc("; ".join(p.differences) or "none")}</td>'
                   f'<td class="row-head">{esc(where)} ({esc(", ".join(p.experiments))})</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


RUN_COLUMNS = ("run_name", "experiment", "protocol", "dataset", "method", "n_areas", "depth",
               "width", "lr", "seed", "status", "final_val_acc", "final_train_loss", "final_val_loss",
               "final_source")


def runs_table(runs) -> str:
    if runs is None or runs.empty:
        return '<p class="absent">No runs.</p>'
    cols = [c for c in RUN_COLUMNS if c in runs]
    out = ['<table id="runs"><thead><tr>']
    out += [f"<th>{esc(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    ordered = runs.sort_values([c for c in ("dataset", "method", "n_areas", "seed") if c in runs])
    for _, r in ordered.iterrows():
        out.append(f'<tr data-run-id="{esc(r["run_id"])}">')
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                text = "—" if not math.isfinite(v) else (f"{v:.4f}" if c.startswith("final")
                                                         else f"{v:g}")
            else:
                text = "—" if v is None else str(v)
            out.append(f'<td class="{"row-head" if c == "run_name" else ""}">{esc(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render(*, title: str, summary: list[tuple[str, str]], notes: list[str], empty: str,
           sections: list[tuple[str, str, str]]) -> str:
    """sections: (id, heading, inner html)."""
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    parts.append('<section id="summary"><table class="summary"><tbody>')
    parts += [f'<tr><th class="row-head">{esc(k)}</th><td class="row-head">{esc(v)}</td></tr>'
              for k, v in summary]
    parts.append("</tbody></table></section>")
    if empty:
        parts.append(f'<p id="empty" class="empty">{esc(empty)}</p>')
    if notes:
        parts.append('<section id="notes" class="notes"><h2>Data problems</h2><ul>')
        parts += [f"<li>{esc(n)}</li>" for n in notes]
        parts.append("</ul></section>")
    else:
        parts.append('<section id="notes" class="ok">No data problems found: every run has '
                     'its final metrics.</section>')
    for sid, heading, inner in sections:
        parts.append(f'<section id="{esc(sid)}"><h2>{esc(heading)}</h2>{inner}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)
