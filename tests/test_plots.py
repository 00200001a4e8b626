"""finetune.analysis.plots: the transfer matrix cells exactly, and the PNGs that are drawn from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_results import standard_plan, write_plan

from finetune.analysis.plots import (
    curve_series,
    draw_heatmaps,
    learning_curves,
    read_metrics,
    transfer_heatmaps,
    transfer_matrix,
)
from finetune.analysis.results import collect

GREY = np.array([0xD0, 0xD0, 0xD0])


def _grey_pixels(png) -> int:
    import matplotlib.pyplot as plt

    img = (plt.imread(png)[..., :3] * 255).round().astype(int)
    assert img.shape[0] > 200 and img.shape[1] > 400
    return int((np.abs(img - GREY).sum(axis=-1) == 0).sum())


def test_transfer_matrix_cells(tmp_path):
    m = transfer_matrix(collect(standard_plan(tmp_path), selection="each-language"))
    assert m.metric == "macro_f1"
    assert m.model_types == ["normal", "ipa"]
    assert m.train_sets == ["polish", "russian", "polish+russian"]
    assert m.languages == ["polish", "russian"]
    # best-on-eval trial's *test* value per cell; None where nothing finished
    assert m.values["normal"] == [[0.45, 0.33], [0.22, 0.66], [None, None]]
    assert m.values["ipa"] == [[0.40, 0.20], [None, None], [None, None]]
    assert m.value_range() == (0.20, 0.66)  # one scale shared by both panels


def test_transfer_matrix_other_metric(tmp_path):
    m = transfer_matrix(collect(standard_plan(tmp_path), metric="accuracy", selection="each-language"))
    assert m.metric == "accuracy"
    assert m.values["normal"][0] == pytest.approx([0.46, 0.34])


def test_heatmap_png_greys_missing_cells(tmp_path):
    table = collect(standard_plan(tmp_path / "plan"))
    out = transfer_heatmaps(table, tmp_path / "out" / "heat.png")
    assert out.is_file() and 10_000 < out.stat().st_size < 2_000_000
    with_missing = _grey_pixels(out)
    assert with_missing > 5_000  # 8 of 12 cells are n/a

    full = {"polish": (0.5, 0.5), "russian": (0.5, 0.6)}
    write_plan(tmp_path / "full", [
        {"id": f"{mt}{i}", "model_type": mt, "train": train, "lr": 1e-4, "outcome": "finished", "scores": full}
        for mt in ("normal", "ipa") for i, train in enumerate([["polish"], ["russian"], ["polish", "russian"]])
    ])
    out_full = transfer_heatmaps(collect(tmp_path / "full"), tmp_path / "full.png")
    assert _grey_pixels(out_full) < with_missing / 20


def test_heatmap_empty_plan_draws_all_na(tmp_path):
    write_plan(tmp_path, [{"id": "x", "model_type": "normal", "train": ["polish"], "lr": 1e-4, "outcome": "missing"}])
    m = transfer_matrix(collect(tmp_path))
    assert m.values == {"normal": [[None, None]]} and m.value_range() is None
    assert draw_heatmaps(m, tmp_path / "h.png").stat().st_size > 5_000


def test_learning_curves(tmp_path):
    standard_plan(tmp_path)
    lines = [
        {"step": 10, "epoch": 0, "language": "polish", "split": "eval", "loss": 1.5, "macro_f1": 0.2,
         "train_loss": 1.9},
        {"step": 10, "epoch": 0, "language": "russian", "split": "eval", "loss": 1.7, "macro_f1": 0.1},
        {"step": 20, "epoch": 1, "language": "polish", "split": "eval", "loss": 1.2, "macro_f1": 0.3},
        {"step": 20, "epoch": 1, "language": "polish", "split": "eval", "loss": 1.1, "macro_f1": 0.35},  # resumed
        {"step": 5, "epoch": 0, "split": "train", "loss": 2.0},
    ]
    path = tmp_path / "trials" / "a1" / "metrics.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 30, "loss"')
    records = read_metrics(path)
    assert len(records) == 5
    assert curve_series(records, "macro_f1") == {
        "eval/polish": ([10.0, 20.0], [0.2, 0.35]),
        "eval/russian": ([10.0], [0.1]),
    }
    assert curve_series(records, "loss")["train"] == ([5.0, 10.0], [2.0, 1.9])
    assert curve_series(records, "loss")["eval/polish"] == ([10.0, 20.0], [1.5, 1.1])
    written = learning_curves(tmp_path, tmp_path / "curves")
    assert [p.name for p in written] == ["a1.png"]
    assert written[0].stat().st_size > 10_000
