"""Cross-language transfer heatmaps and per-trial learning curves (matplotlib, Agg, PNG).

The cell values are computed by a pure function (``transfer_matrix``) so tests can check them
exactly; drawing only turns that matrix into pixels. Each cell shows the *test* metric of the
configuration chosen for that (model type, train set, eval language) by its mean eval metric
under the plan's selection protocol, as mean +- std over n seeds; cells without a finished
trial are grey and say "n/a". The legend marks the majority-class baseline of the test sets
and, when a comparison is given, the cells where IPA and normal text differ significantly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finetune import layout
from finetune.analysis.results import ResultsTable, protocol_text
from finetune.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from finetune.analysis.comparison import Comparison

PANEL_TITLES = {"normal": "normal text", "ipa": "IPA"}
MARK = "*"


@dataclass(frozen=True)
class TransferMatrix:
    metric: str
    model_types: list[str]  # one panel each, e.g. ["normal", "ipa"]
    train_sets: list[str]  # rows, single languages first, then unions
    languages: list[str]  # columns (eval languages)
    values: dict[str, list[list[float | None]]]  # model_type -> rows x columns: test mean over seeds
    stds: dict[str, list[list[float | None]]] = field(default_factory=dict)  # sample std (None below 2 seeds)
    ns: dict[str, list[list[int]]] = field(default_factory=dict)  # seeds per cell
    marks: dict[str, list[list[str]]] = field(default_factory=dict)  # MARK where a comparison is significant
    pruned: dict[str, list[list[tuple[int, ...]]]] = field(default_factory=dict)  # steps of pruned trials per cell
    baselines: dict[str, float] = field(default_factory=dict)  # language -> majority-class test metric
    protocol: str = ""  # the selection protocol, in words
    mark_legend: str = ""  # what MARK means

    def value_range(self) -> tuple[float, float] | None:
        """Shared colour scale over every panel, so normal and IPA cells compare by colour."""
        vals = [v for grid in self.values.values() for row in grid for v in row if v is not None]
        if not vals:
            return None
        return min(vals), max(vals)


def baselines(table: ResultsTable) -> dict[str, float]:
    """Majority-class test metric per eval language, from the labels of any kept predictions."""
    from finetune.analysis.predictions import load_predictions, majority_baseline

    out: dict[str, float] = {}
    for lang in table.languages:
        for row in table.rows:
            if row.state != "finished" or lang not in row.metrics:
                continue
            preds = load_predictions(table.plan_dir, row.trial_id, lang, "test")
            if preds is not None:
                value = majority_baseline(preds.labels, table.metric)
                if value is not None:
                    out[lang] = value
                break
    return out


def transfer_matrix(table: ResultsTable, *, comparison: Comparison | None = None, alpha: float = 0.05,
                    with_baselines: bool = True) -> TransferMatrix:
    """Rows = train sets, columns = eval languages, one grid per model type: test mean of the chosen
    configuration, None where no trial finished. ``comparison`` (model_type=A vs model_type=B)
    marks A's cells whose Holm-adjusted p is below ``alpha``."""
    langs = sorted(table.languages)
    values, stds, ns, marks, pruned = {}, {}, {}, {}, {}
    for mt in table.model_types:
        cells = [[table.best_cell(mt, ts, lang) for lang in langs] for ts in table.train_sets]
        values[mt] = [[c.test.mean if c else None for c in row] for row in cells]
        stds[mt] = [[c.test.std if c else None for c in row] for row in cells]
        ns[mt] = [[c.test.n if c else 0 for c in row] for row in cells]
        marks[mt] = [["" for _ in langs] for _ in table.train_sets]
        pruned[mt] = [[c.pruned_steps if c else () for c in row] for row in cells]
    legend = ""
    if comparison is not None and comparison.cells:
        mt = comparison.a.values.get("model_type")
        if mt in marks:
            for c in comparison.cells:
                if c.p_holm < alpha and c.cell.get("train_set") in table.train_sets and c.cell.get("language") in langs:
                    marks[mt][table.train_sets.index(c.cell["train_set"])][langs.index(c.cell["language"])] = MARK
            legend = (f"{MARK} {comparison.a.text} differs from {comparison.b.text}: p < {alpha:g} "
                      f"(paired over seeds, Holm over {len(comparison.cells)} cells)")
    return TransferMatrix(table.metric, table.model_types, table.train_sets, langs, values, stds, ns, marks, pruned,
                          baselines(table) if with_baselines else {}, protocol_text(table), legend)


def pruned_note(steps: tuple[int, ...]) -> str:
    """'3 pruned at step 50-150' under a cell whose search stopped trials early."""
    if not steps:
        return ""
    span = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    return f"{len(steps)} pruned at step {span}"


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def cell_text(mean: float | None, std: float | None, n: int, mark: str = "") -> str:
    """'0.512*\n±0.013 n=3'; 'n/a' for an empty cell."""
    if mean is None:
        return "n/a"
    spread = f"±{std:.3f} " if std is not None else ""
    return f"{mean:.3f}{mark}\n{spread}n={n}"


def _baseline_text(baselines: dict[str, float]) -> str:
    distinct = sorted({round(v, 3) for v in baselines.values()})
    if len(distinct) == 1:
        return f"{distinct[0]:.3f}"
    return ", ".join(f"{lang} {v:.3f}" for lang, v in sorted(baselines.items()))


def draw_heatmaps(matrix: TransferMatrix, out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """Draw one heatmap per model type side by side on one colour scale; write PNG atomically."""
    import numpy as np
    from matplotlib.lines import Line2D

    plt = _pyplot()
    n = max(1, len(matrix.model_types))
    rows, cols = len(matrix.train_sets), len(matrix.languages)
    fig, axes = plt.subplots(
        1, n, figsize=(2.2 + 1.5 * max(cols, 1) * n + 1.0, 2.0 + 0.85 * max(rows, 1)), squeeze=False,
        layout="constrained",
    )
    rng = matrix.value_range() or (0.0, 1.0)
    vmin, vmax = rng if rng[1] > rng[0] else (rng[0] - 0.05, rng[1] + 0.05)
    from finetune.login.tasks import lower_is_better

    # bright = better whatever the metric's direction: reversed for loss and perplexity
    lower = lower_is_better(matrix.metric)
    cmap = plt.get_cmap("viridis_r" if lower else "viridis").with_extremes(bad="#d0d0d0")
    image = None
    for ax, mt in zip(axes[0], matrix.model_types or [""], strict=False):
        grid = matrix.values.get(mt, [])
        data = np.ma.masked_invalid(
            np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float).reshape(rows, cols)
        )
        image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(cols), matrix.languages)
        ax.set_yticks(range(rows), matrix.train_sets if ax is axes[0][0] else [""] * rows)
        ax.set_xlabel("eval language")
        if ax is axes[0][0]:
            ax.set_ylabel("train set")
        ax.set_title(PANEL_TITLES.get(mt, mt))
        stds, ns, marks = matrix.stds.get(mt), matrix.ns.get(mt), matrix.marks.get(mt)
        for i in range(rows):
            for j in range(cols):
                v = grid[i][j] if i < len(grid) and j < len(grid[i]) else None
                text = cell_text(v, stds[i][j] if stds else None, ns[i][j] if ns else 1, marks[i][j] if marks else "")
                steps = matrix.pruned.get(mt, [])
                note = pruned_note(steps[i][j]) if i < len(steps) and j < len(steps[i]) else ""
                text += f"\n{note}" if note else ""
                if v is None:
                    ax.text(j, i, text, ha="center", va="center", color="#555555")
                else:
                    # dark text on the light (high) end of viridis, white on the dark end
                    frac = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.0
                    light = (1 - frac if lower else frac) > 0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="black" if light else "white")
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), label=f"test {matrix.metric}" + (" (lower is better)" if lower else ""), shrink=0.9)
        for value in sorted(set(matrix.baselines.values())):
            if vmin <= value <= vmax:  # the colour scale stays the values'; the legend always names it
                bar.ax.axhline(value, color="red", linestyle="--", linewidth=1.5)
    handles = []
    if matrix.baselines:
        handles.append(Line2D([], [], color="red", linestyle="--",
                              label=f"majority-class baseline (test {matrix.metric}): {_baseline_text(matrix.baselines)}"))
    if matrix.mark_legend:
        handles.append(Line2D([], [], linestyle="none", marker="$*$", color="black", label=matrix.mark_legend))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False)
    protocol = f"\n{matrix.protocol}" if matrix.protocol else ""
    fig.suptitle(title or f"cross-language transfer: test {matrix.metric}, mean ± std over n seeds{protocol}",
                 fontsize=10)
    out = Path(out_png)
    atomic_write_bytes(out, _png(fig))
    plt.close(fig)
    return out


def transfer_heatmaps(table: ResultsTable, out_png: str | os.PathLike[str], *,
                      comparison: Comparison | None = None, alpha: float = 0.05) -> Path:
    """The cross-language transfer matrix of ``table`` as side-by-side heatmaps."""
    return draw_heatmaps(transfer_matrix(table, comparison=comparison, alpha=alpha), out_png)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl lines; a half-written last line (trial still running) is skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("step"), (int, float)):
            out.append(obj)
    return out


def curve_series(records: list[dict], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """Label 'split/language' -> (steps, values) for one metric key, sorted by step; a resumed
    trial that re-logs a step keeps the last value. For ``loss`` the training loss that eval
    lines carry (``train_loss``) is one more series, ``train``."""
    series: dict[str, dict[float, float]] = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)):
            label = "/".join(str(x) for x in (r.get("split"), r.get("language")) if x)
            series.setdefault(label or "all", {})[float(r["step"])] = float(v)
        t = r.get(f"train_{key}")
        if isinstance(t, (int, float)):
            series.setdefault("train", {})[float(r["step"])] = float(t)
    return {k: (sorted(d), [d[s] for s in sorted(d)]) for k, d in sorted(series.items())}


def _trial_title(tdir: Path) -> str:
    """'trial <id>: ipa, train polish+russian, learning_rate=0.001' from the frozen trial config."""
    try:
        cfg = json.loads(layout.config_file(tdir).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return f"trial {tdir.name}"
    point = ", ".join(f"{k}={v}" for k, v in sorted((cfg.get("grid_point") or {}).items()))
    train = "+".join(sorted(cfg.get("train_languages") or []))
    return f"trial {tdir.name}: {cfg.get('model_type', '?')}, train {train}" + (f", {point}" if point else "")


def learning_curves(plan_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, metric: str = "macro_f1") -> list[Path]:
    """One PNG per trial with a metrics.jsonl: loss and ``metric`` against step."""
    plan_dir, out_dir = Path(plan_dir), Path(out_dir)
    written: list[Path] = []
    trials = layout.trials_dir(plan_dir)
    if not trials.is_dir():
        return written
    plt = None
    for tdir in sorted(p for p in trials.iterdir() if p.is_dir()):
        records = read_metrics(layout.metrics_file(tdir))
        if not records:
            continue
        plt = plt or _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        for ax, key in zip(axes, ("loss", metric), strict=True):
            for label, (steps, vals) in curve_series(records, key).items():
                ax.plot(steps, vals, marker="o", markersize=3, label=label)
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
        fig.suptitle(_trial_title(tdir))
        out = out_dir / f"{tdir.name}.png"
        atomic_write_bytes(out, _png(fig))
        plt.close(fig)
        written.append(out)
    return written
