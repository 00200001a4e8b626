"""``DIR/report.html``: one self-contained page (plotly.js inlined, no network) with the results
table (click a header to sort), the transfer heatmaps, the learning curves and, for a search,
Optuna's optimisation history, parameter importances and parallel coordinates.

Pure until ``write_report``: ``report_html`` returns the text. Every value shown comes from
``finetune.analysis.results.collect``, ``plots.transfer_matrix`` / ``read_metrics`` and the
study in ``DIR/search`` (read only).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.analysis.plots import curve_series, pruned_note, read_metrics, transfer_matrix
from finetune.analysis.results import SPLITS, ResultsTable, collect
from finetune.fileio import atomic_write_text

REPORT_FILE = "report.html"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table.results { border-collapse: collapse; font-size: 12px; }
table.results th, table.results td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.results th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0; }
table.results td.text { text-align: left; }
tr.pruned td { color: #8a6d00; } tr.failed td, tr.invalid td { color: #a00; }
.note { color: #666; } #errors { color: #a00; }
"""

# Sorting: numbers as numbers, empty cells last; #sort=N in the URL sorts by column N on load.
SCRIPT = """
window.reportErrors = [];
window.addEventListener('error', function (e) {
  window.reportErrors.push(String(e.message));
  var box = document.getElementById('errors'); if (box) box.textContent = window.reportErrors.join('\\n');
});
function sortTable(table, col, descending) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  function key(row) {
    var text = row.cells[col].textContent.trim(), num = Number(text);
    return text === '' ? null : (isNaN(num) ? text : num);
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null) return 1; if (y === null) return -1;
    var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return descending ? -c : c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  table.dataset.sorted = col + (descending ? ' desc' : ' asc');
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('table.results').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () {
        var desc = table.dataset.sorted === col + ' asc';
        sortTable(table, col, desc);
      });
    });
  });
  var m = /sort=(\\d+)(-desc)?/.exec(location.hash);
  var t = document.querySelector('table.results');
  if (m && t) sortTable(t, Number(m[1]), Boolean(m[2]));
});
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(table: ResultsTable) -> str:
    """Every trial, one row: what varied, its state (pruned with its step) and its metrics."""
    m = table.metric
    langs = table.languages
    head = ["trial", "model", "train set", *table.varying, "state"]
    head += [f"{lang} {split} {m}" for lang in langs for split in SPLITS]
    text_cols = {0, 1, 2, 3 + len(table.varying)}
    out = ['<table class="results" id="results"><thead><tr>']
    out += [f"<th>{_esc(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = [row.trial_id, row.model_type, row.train_set]
        cells += [_fmt(row.hyperparameters.get(k)) for k in table.varying]
        cells.append(row.state + (f" ({row.reason})" if row.reason else ""))
        for lang in langs:
            for split in SPLITS:
                v = row.metric(lang, split, m) if lang in row.eval_languages else None
                cells.append("" if v is None else f"{v:.4f}")
        tds = "".join(f'<td class="text">{_esc(c)}</td>' if i in text_cols else f"<td>{_esc(c)}</td>"
                      for i, c in enumerate(cells))
        out.append(f'<tr class="{_esc(row.state)}">{tds}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _div(fig, first: list[bool]) -> str:
    """A figure as a div; plotly.js goes inline into the first one only."""
    div = fig.to_html(full_html=False, include_plotlyjs=first[0], config={"displaylogo": False})
    first[0] = False
    return f'<div class="plot">{div}</div>'


def heatmap_figure(table: ResultsTable):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    matrix = transfer_matrix(table)
    n = max(1, len(matrix.model_types))
    fig = make_subplots(rows=1, cols=n, subplot_titles=[{"normal": "normal text", "ipa": "IPA"}.get(mt, mt)
                                                        for mt in matrix.model_types] or [""])
    rng = matrix.value_range() or (0.0, 1.0)
    for i, mt in enumerate(matrix.model_types, start=1):
        grid = matrix.values[mt]

        def cell(r: int, c: int, v: float | None, mt: str = mt) -> str:
            """mean (+- std over seeds, n), then the pruned trials of the cell."""
            text = "n/a" if v is None else f"{v:.3f}"
            std = _at(matrix.stds, mt, r, c)
            n = _at(matrix.ns, mt, r, c)
            if v is not None and std is not None:
                text += f" ± {std:.3f}"
            if v is not None and n and n > 1:
                text += f" (n={n})"
            note = _at(matrix.pruned, mt, r, c)
            return text + (f"<br>{pruned_note(note)}" if note else "")

        text = [[cell(r, c, v) for c, v in enumerate(row)] for r, row in enumerate(grid)]
        fig.add_trace(go.Heatmap(z=grid, x=matrix.languages, y=matrix.train_sets, text=text,
                                 texttemplate="%{text}", zmin=rng[0], zmax=rng[1], colorscale="Viridis",
                                 showscale=i == n, colorbar={"title": f"test {matrix.metric}"}), row=1, col=i)
    title = f"cross-language transfer: test {matrix.metric}, mean over seeds of the configuration chosen on eval"
    fig.update_layout(height=220 + 60 * len(matrix.train_sets), margin={"t": 80},
                      title=title + (f"<br><sup>{html.escape(matrix.protocol)}</sup>" if matrix.protocol else ""))
    fig.update_xaxes(title_text="eval language")
    fig.update_yaxes(title_text="train set", col=1)
    return fig


def _at(grids: dict[str, list[list[Any]]], mt: str, r: int, c: int) -> Any:
    grid = grids.get(mt) or []
    return grid[r][c] if r < len(grid) and c < len(grid[r]) else None


def curves_figure(table: ResultsTable):
    """Eval ``metric`` against step: one line per trial and eval language (pruned lines stop early)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for row in table.rows:
        records = read_metrics(layout.metrics_file(layout.trial_dir(table.plan_dir, row.trial_id)))
        for label, (steps, values) in curve_series(records, table.metric).items():
            if not label.startswith("eval"):
                continue
            name = f"{row.trial_id} {label.split('/', 1)[-1]}" + (" (pruned)" if row.state == "pruned" else "")
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name,
                                     line={"dash": "dot" if row.state == "pruned" else "solid"}))
    fig.update_layout(title=f"learning curves: eval {table.metric}", xaxis_title="step",
                      yaxis_title=table.metric, height=450)
    return fig if fig.data else None


def search_figures(plan_dir: Path) -> list[tuple[str, Any]]:
    """Optuna's views of the study: (title, figure), or (title, message) where a view cannot be drawn."""
    from finetune.login import search as S

    if not S.is_search(plan_dir):
        return []
    import warnings

    import optuna.visualization as vis

    spec = S.load_spec(plan_dir)
    study = S.open_study(plan_dir, spec)
    out: list[tuple[str, Any]] = []
    for title, draw in (("optimisation history", vis.plot_optimization_history),
                        ("parameter importances", vis.plot_param_importances),
                        ("parallel coordinates", vis.plot_parallel_coordinate),
                        ("intermediate values (pruning)", vis.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():  # e.g. "importances will be equal" on a tiny study
                warnings.simplefilter("ignore")
                out.append((title, draw(study)))
        except Exception as e:  # too few finished trials for a view, etc.
            out.append((title, f"not drawn: {e}"))
    return out


def report_html(plan_dir: str | os.PathLike[str], *, metric: str = "macro_f1", table: ResultsTable | None = None) -> str:
    plan_dir = Path(plan_dir)
    table = table or collect(plan_dir, metric=metric)
    first = [True]
    counts = ", ".join(f"{n} {s}" for s, n in table.counts().items())
    parts = [f"<h1>Results: {_esc(plan_dir.name)}</h1>",
             f'<p>{len(table.rows)} trials: {_esc(counts)}. Click a column header to sort.</p>',
             '<pre id="errors"></pre>', "<h2>Trials</h2>", table_html(table),
             "<h2>Transfer heatmaps</h2>", _div(heatmap_figure(table), first)]
    curves = curves_figure(table)
    parts.append("<h2>Learning curves</h2>")
    parts.append(_div(curves, first) if curves else '<p class="note">no evaluations recorded yet</p>')
    views = search_figures(plan_dir)
    if views:
        parts.append("<h2>Search</h2>")
        for title, fig in views:
            parts.append(f"<h3>{_esc(title)}</h3>")
            parts.append(f'<p class="note">{_esc(fig)}</p>' if isinstance(fig, str) else _div(fig, first))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_esc(plan_dir.name)}: results</title><style>{STYLE}</style>"
            f"<script>{SCRIPT}</script></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(plan_dir: str | os.PathLike[str], *, metric: str = "macro_f1",
                 table: ResultsTable | None = None) -> Path:
    path = Path(plan_dir) / REPORT_FILE
    atomic_write_text(path, report_html(plan_dir, metric=metric, table=table))
    return path
