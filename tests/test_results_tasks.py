"""collect, heatmaps and significance for question answering (higher is better) and causal LM (lower)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from finetune.analysis.plots import transfer_matrix
from finetune.analysis.results import collect, csv_text
from finetune.analysis.significance import compare, paired_mean_randomization

LANGS = ["polish", "russian"]


def write_plan(plan_dir: Path, trials: dict[str, dict]) -> Path:
    """trials: id -> {lang: {"eval": {...}, "test": {...}}} for one train set (polish)."""
    plan = {"version": 1, "sources": [], "trials": []}
    for i, (tid, metrics) in enumerate(trials.items()):
        hyper = {"learning_rate": 1e-4 * (i + 1), "lora_r": 8}
        plan["trials"].append({"id": tid, "model_type": "normal", "train_languages": ["polish"],
                               "eval_languages": LANGS, "hyperparameters": hyper, "group": "g"})
        tdir = plan_dir / "trials" / tid
        tdir.mkdir(parents=True)
        (tdir / "result.json").write_text(json.dumps({"state": "finished", "metrics": metrics, "hyperparameters": hyper}))
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    return plan_dir


def lm(loss_eval: float, loss_test: float) -> dict:
    return {lang: {"eval": {"loss": loss_eval, "perplexity": float(np.exp(loss_eval))},
                   "test": {"loss": loss_test, "perplexity": float(np.exp(loss_test))}} for lang in LANGS}


def test_causal_lm_best_cell_is_the_lowest_perplexity(tmp_path):
    d = write_plan(tmp_path, {"aaaa": lm(3.0, 3.1), "bbbb": lm(2.5, 2.7), "cccc": lm(2.9, 2.2)})
    table = collect(d, metric="perplexity")
    cell = table.best_cell("normal", "polish", "russian")
    assert cell.trial_id == "bbbb" and cell.test_value == pytest.approx(np.exp(2.7))
    header = csv_text(table).splitlines()[0].split(",")
    assert "polish/eval/perplexity" in header and "polish/eval/macro_f1" not in header
    matrix = transfer_matrix(table)
    assert matrix.metric == "perplexity"


def test_qa_best_cell_is_the_highest_f1_and_heatmap_draws(tmp_path):
    qa = {tid: {lang: {s: {"loss": 1.0, "exact_match": v / 2, "f1": v} for s in ("eval", "test")} for lang in LANGS}
          for tid, v in (("aaaa", 0.4), ("bbbb", 0.7))}
    d = write_plan(tmp_path, qa)
    table = collect(d, metric="f1")
    assert table.best_cell("normal", "polish", "polish").trial_id == "bbbb"
    from finetune.analysis.plots import transfer_heatmaps

    png = transfer_heatmaps(table, tmp_path / "f1.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    lower = collect(write_plan(tmp_path / "lm", {"aaaa": lm(3.0, 3.1), "bbbb": lm(2.5, 2.7)}), metric="loss")
    assert transfer_heatmaps(lower, tmp_path / "loss.png").is_file()


def _dump(path: Path, **arrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def test_significance_on_per_example_scores(tmp_path):
    rng = np.random.default_rng(0)
    f1_a = rng.uniform(0.5, 1.0, 200)
    f1_b = f1_a - 0.3
    a = _dump(tmp_path / "a-polish-eval.npz", exact_match=(f1_a > 0.9).astype(float), f1=f1_a)
    b = _dump(tmp_path / "b-polish-eval.npz", exact_match=(f1_b > 0.9).astype(float), f1=f1_b)
    r = compare(a, b, metric="f1", rounds=500)
    assert r.p_value < 0.01 and r.difference == pytest.approx(0.3) and r.better == "a"
    # causal LM: token-weighted loss; lower is better
    tokens = np.full(50, 63)
    la, lb = rng.uniform(2, 3, 50) * tokens, rng.uniform(2, 3, 50) * tokens + 0.5 * tokens
    a = _dump(tmp_path / "c-polish-eval.npz", loss_sum=la, tokens=tokens)
    b = _dump(tmp_path / "d-polish-eval.npz", loss_sum=lb, tokens=tokens)
    r = compare(a, b, metric="perplexity", rounds=500)
    assert r.lower_is_better and r.better == "a" and r.p_value < 0.01
    assert r.score_a == pytest.approx(la.sum() / tokens.sum())
    same = paired_mean_randomization(f1_a, f1_a.copy(), rounds=200)
    assert same.p_value == 1.0 and same.better == "tie"
