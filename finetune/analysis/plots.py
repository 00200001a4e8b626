"""Cross-language transfer heatmaps and per-trial learning curves (matplotlib, Agg, PNG).

The cell values are computed by a pure function (``transfer_matrix``) so tests can check them
exactly; drawing only turns that matrix into pixels. Each cell shows the *test* metric of the
hyperparameters that were best on the *eval* split for that (model type, train set, eval
language); cells without a finished trial are grey and say "n/a".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from finetune import layout
from finetune.analysis.results import ResultsTable
from finetune.fileio import atomic_write_bytes

PANEL_TITLES = {"normal": "normal text", "ipa": "IPA"}


@dataclass(frozen=True)
class TransferMatrix:
    metric: str
    model_types: list[str]  # one panel each, e.g. ["normal", "ipa"]
    train_sets: list[str]  # rows, single languages first, then unions
    languages: list[str]  # columns (eval languages)
    values: dict[str, list[list[float | None]]]  # model_type -> rows x columns
    pruned: dict[str, list[list[tuple[int, ...]]]] = field(default_factory=dict)  # steps of pruned trials per cell

    def value_range(self) -> tuple[float, float] | None:
        """Shared colour scale over every panel, so normal and IPA cells compare by colour."""
        vals = [v for grid in self.values.values() for row in grid for v in row if v is not None]
        if not vals:
            return None
        return min(vals), max(vals)


def transfer_matrix(table: ResultsTable) -> TransferMatrix:
    """Rows = train sets, columns = eval languages, one grid per model type: test metric of the
    best-on-eval trial, None where no trial finished."""
    langs = sorted(table.languages)
    values = {
        mt: [
            [(c.test_value if (c := table.best_cell(mt, ts, lang)) else None) for lang in langs]
            for ts in table.train_sets
        ]
        for mt in table.model_types
    }
    pruned = {
        mt: [
            [(c.pruned_steps if (c := table.best_cell(mt, ts, lang)) else ()) for lang in langs]
            for ts in table.train_sets
        ]
        for mt in table.model_types
    }
    return TransferMatrix(table.metric, table.model_types, table.train_sets, langs, values, pruned)


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


def draw_heatmaps(matrix: TransferMatrix, out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """Draw one heatmap per model type side by side on one colour scale; write PNG atomically."""
    import numpy as np

    plt = _pyplot()
    n = max(1, len(matrix.model_types))
    rows, cols = len(matrix.train_sets), len(matrix.languages)
    fig, axes = plt.subplots(
        1, n, figsize=(2.2 + 1.5 * max(cols, 1) * n + 1.0, 1.4 + 0.75 * max(rows, 1)), squeeze=False,
        layout="constrained",
    )
    rng = matrix.value_range() or (0.0, 1.0)
    vmin, vmax = rng if rng[1] > rng[0] else (rng[0] - 0.05, rng[1] + 0.05)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
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
        for i in range(rows):
            for j in range(cols):
                v = grid[i][j] if i < len(grid) and j < len(grid[i]) else None
                steps = matrix.pruned.get(mt, [])
                note = pruned_note(steps[i][j]) if i < len(steps) and j < len(steps[i]) else ""
                if v is None:
                    ax.text(j, i, "n/a" + (f"\n{note}" if note else ""), ha="center", va="center", color="#555555")
                else:
                    # dark text on the light (high) end of viridis, white on the dark end
                    light = (v - vmin) / (vmax - vmin) > 0.6 if vmax > vmin else False
                    ax.text(j, i, f"{v:.3f}" + (f"\n{note}" if note else ""), ha="center", va="center",
                            color="black" if light else "white", fontsize=10 if not note else 8)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=f"test {matrix.metric}", shrink=0.9)
    fig.suptitle(title or f"cross-language transfer: test {matrix.metric}\n(best hyperparameters by eval {matrix.metric})")
    out = Path(out_png)
    atomic_write_bytes(out, _png(fig))
    plt.close(fig)
    return out


def transfer_heatmaps(table: ResultsTable, out_png: str | os.PathLike[str]) -> Path:
    """The cross-language transfer matrix of ``table`` as side-by-side heatmaps."""
    return draw_heatmaps(transfer_matrix(table), out_png)


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
