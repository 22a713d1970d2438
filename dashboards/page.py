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


def accuracy_table(cell_list: list[tables.Cell]) -> str:
    rows, cols, cmap = tables.grid(cell_list)
    if not rows:
        return '<p class="absent">No finished runs to tabulate.</p>'
    out = ['<table id="table2"><thead><tr><th class="row-head">dataset</th>']
    out += [f'<th data-col="{esc(c)}">{esc(c)}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for ds in rows:
        best = tables.best_columns(cmap, ds, cols)
        out.append(f'<tr data-dataset="{esc(ds)}" data-source="ours">'
                   f'<td class="row-head">{esc(ds)}</td>')
        for c in cols:
            cell = cmap.get((ds, c))
            if cell is None:
                out.append(f'<td class="missing" data-col="{esc(c)}">—</td>')
                continue
            klass = "cell best" if c in best else "cell"
            mark = " ★" if c in best else ""
            dagger = " †" if cell.n_configs > 1 else ""
            title = (f"{cell.n}/{cell.n_runs} seeds; best of {cell.n_configs} configurations: "
                     f"{cell.chosen}" if cell.n_configs > 1 else f"{cell.n}/{cell.n_runs} seeds")
            out.append(f'<td class="{klass}" data-col="{esc(c)}" data-mean="{_num(cell.acc_mean)}"'
                       f' data-std="{_num(cell.acc_std)}" data-n="{cell.n}"'
                       f' data-runs="{cell.n_runs}" data-configs="{cell.n_configs}"'
                       f' title="{esc(title)}">{esc(cell.acc_text)}{mark}{dagger}</td>')
        out.append("</tr>")
        pub = paper.ACCURACY.get(ds)
        if pub:
            out.append(f'<tr class="paper" data-dataset="{esc(ds)}" data-source="paper">'
                       f'<td class="row-head">{esc(ds)} (paper)</td>')
            for c in cols:
                if c in pub:
                    m, s = pub[c]
                    out.append(f'<td data-col="{esc(c)}" data-mean="{m}" data-std="{s}">'
                               f'{m:.2f} ± {s:.2f}</td>')
                else:
                    out.append(f'<td data-col="{esc(c)}">—</td>')
            out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def loss_table(cell_list: list[tables.Cell]) -> str:
    rows, cols, cmap = tables.grid(cell_list)
    if not rows:
        return '<p class="absent">No finished runs to tabulate.</p>'
    out = ['<table id="table3"><thead><tr><th class="row-head">dataset</th>']
    out += [f'<th data-col="{esc(c)}">{esc(c)}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for ds in rows:
        out.append(f'<tr data-dataset="{esc(ds)}" data-source="ours">'
                   f'<td class="row-head">{esc(ds)}</td>')
        for c in cols:
            cell = cmap.get((ds, c))
            if cell is None:
                out.append(f'<td class="missing" data-col="{esc(c)}">—</td>')
                continue
            out.append(f'<td class="cell" data-col="{esc(c)}" data-train="{_num(cell.train_loss)}"'
                       f' data-val="{_num(cell.val_loss)}" data-n="{cell.n}"'
                       f' title="train ± {tables.fmt(cell.train_loss_std)}, val ± '
                       f'{tables.fmt(cell.val_loss_std)}">'
                       f'{tables.fmt(cell.train_loss)} / {tables.fmt(cell.val_loss)}</td>')
        out.append("</tr>")
        pub = paper.LOSSES.get(ds)
        if pub:
            out.append(f'<tr class="paper" data-dataset="{esc(ds)}" data-source="paper">'
                       f'<td class="row-head">{esc(ds)} (paper)</td>')
            for c in cols:
                if c in pub:
                    t, v = pub[c]
                    out.append(f'<td data-col="{esc(c)}" data-train="{t}" data-val="{v}">'
                               f'{t:.2f} / {v:.2f}</td>')
                else:
                    out.append(f'<td data-col="{esc(c)}">—</td>')
            out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


RUN_COLUMNS = ("run_name", "experiment", "dataset", "method", "n_areas", "depth", "width", "lr",
               "seed", "status", "final_val_acc", "final_train_loss", "final_val_loss",
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
