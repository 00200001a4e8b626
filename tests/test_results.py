"""finetune.analysis.results / `finetune collect` on plan dirs written by hand from the documented files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from finetune.analysis.results import collect, csv_text, markdown_text, write_tables
from finetune.cli import main
from finetune.errors import FinetuneError

LANGS = ["polish", "russian"]


def _metrics(eval_f1: float, test_f1: float) -> dict:
    return {
        "eval": {"loss": 1.0 - eval_f1, "accuracy": eval_f1 + 0.01, "macro_precision": eval_f1,
                 "macro_recall": eval_f1, "macro_f1": eval_f1},
        "test": {"loss": 1.0 - test_f1, "accuracy": test_f1 + 0.01, "macro_precision": test_f1,
                 "macro_recall": test_f1, "macro_f1": test_f1},
    }


def write_plan(plan_dir: Path, trials: list[dict]) -> Path:
    """trials: {id, model_type, train, lr, outcome, scores={lang: (eval_f1, test_f1)}, reason}."""
    plan = {"version": 1, "sources": [], "trials": []}
    for t in trials:
        entry = {"id": t["id"], "model_type": t["model_type"], "train_languages": t["train"],
                 "eval_languages": LANGS, "hyperparameters": {"learning_rate": t["lr"], "batch_size": 8},
                 "group": "g"}
        plan["trials"].append(entry)
        tdir = plan_dir / "trials" / t["id"]
        outcome = t["outcome"]
        if outcome == "missing":
            continue
        tdir.mkdir(parents=True)
        if outcome == "finished":
            result = {"state": "finished", "trial": t["id"], "model_type": t["model_type"],
                      "train_languages": t["train"], "eval_languages": LANGS,
                      "hyperparameters": entry["hyperparameters"],
                      "metrics": {lang: _metrics(*t["scores"][lang]) for lang in t["scores"]},
                      "best_step": 40, "timing": {"wall_s": 3.0}}
            (tdir / "result.json").write_text(json.dumps(result))
            (tdir / "state.json").write_text(json.dumps({"state": "finished", "reason": None}))
        elif outcome == "corrupt":
            (tdir / "result.json").write_text('{"state": "finished", "metr')
        else:
            (tdir / "state.json").write_text(json.dumps({"state": outcome, "reason": t.get("reason")}))
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    return plan_dir


def standard_plan(plan_dir: Path) -> Path:
    """Normal: polish (2 lrs, the better-on-eval one is worse on test), russian (failed + finished),
    polish+russian missing. IPA: polish finished, russian running, polish+russian corrupt."""
    s = {"polish": (0.50, 0.40), "russian": (0.30, 0.20)}
    return write_plan(plan_dir, [
        {"id": "a1", "model_type": "normal", "train": ["polish"], "lr": 1e-4, "outcome": "finished",
         "scores": {"polish": (0.60, 0.45), "russian": (0.35, 0.25)}},
        {"id": "a2", "model_type": "normal", "train": ["polish"], "lr": 1e-3, "outcome": "finished",
         "scores": {"polish": (0.55, 0.58), "russian": (0.40, 0.33)}},
        {"id": "b1", "model_type": "normal", "train": ["russian"], "lr": 1e-4, "outcome": "failed",
         "reason": "CUDA out of memory"},
        {"id": "b2", "model_type": "normal", "train": ["russian"], "lr": 1e-3, "outcome": "finished",
         "scores": {"polish": (0.20, 0.22), "russian": (0.70, 0.66)}},
        {"id": "c1", "model_type": "normal", "train": ["russian", "polish"], "lr": 1e-4, "outcome": "missing"},
        {"id": "d1", "model_type": "ipa", "train": ["polish"], "lr": 1e-4, "outcome": "finished", "scores": s},
        {"id": "e1", "model_type": "ipa", "train": ["russian"], "lr": 1e-4, "outcome": "running"},
        {"id": "f1", "model_type": "ipa", "train": ["polish", "russian"], "lr": 1e-4, "outcome": "corrupt"},
    ])


def test_states_one_row_per_trial(tmp_path):
    table = collect(standard_plan(tmp_path))
    states = {r.trial_id: (r.state, r.reason) for r in table.rows}
    assert [r.trial_id for r in table.rows] == ["a1", "a2", "b1", "b2", "c1", "d1", "e1", "f1"]
    assert states["a1"] == ("finished", "")
    assert states["b1"] == ("failed", "CUDA out of memory")
    assert states["c1"] == ("missing", "")
    assert states["e1"] == ("running", "")
    assert states["f1"][0] == "invalid" and "result.json" in states["f1"][1]
    assert table.counts() == {"finished": 4, "failed": 1, "running": 1, "missing": 1, "invalid": 1}
    assert table.varying == ["learning_rate"]  # batch_size is the same everywhere
    assert table.train_sets == ["polish", "russian", "polish+russian"]
    assert table.model_types == ["normal", "ipa"]


def test_best_by_eval_reports_test(tmp_path):
    table = collect(standard_plan(tmp_path), selection="each-language")
    best = {(c.model_type, c.train_set, c.language): c for c in table.best}
    # a1 is better on eval (0.60 > 0.55) though worse on test: selection must use eval only
    c = best[("normal", "polish", "polish")]
    assert (c.trial_id, c.eval_value, c.test_value, c.hyperparameters) == ("a1", 0.60, 0.45, {"learning_rate": 1e-4})
    assert (c.finished, c.total) == (2, 2)
    c = best[("normal", "polish", "russian")]
    assert (c.trial_id, c.test_value) == ("a2", 0.33)
    # the failed b1 does not compete
    c = best[("normal", "russian", "russian")]
    assert (c.trial_id, c.test_value, c.finished, c.total) == ("b2", 0.66, 1, 2)
    assert ("normal", "polish+russian", "polish") not in best
    assert ("ipa", "russian", "russian") not in best
    assert len(table.best) == 6


def test_metric_selectable_loss_is_minimised(tmp_path):
    table = collect(standard_plan(tmp_path), metric="loss")
    c = table.best_cell("normal", "polish", "polish")
    # loss = 1 - f1: lowest eval loss is a1 (0.40)
    assert c.trial_id == "a1" and c.eval_value == pytest.approx(0.40) and c.test_value == pytest.approx(0.55)
    table = collect(standard_plan(tmp_path / "acc"), metric="accuracy", selection="each-language")
    assert table.best_cell("normal", "polish", "russian").test_value == pytest.approx(0.34)
    table = collect(standard_plan(tmp_path / "acc2"), metric="accuracy")  # zero-shot: chosen on polish
    assert table.best_cell("normal", "polish", "russian").test_value == pytest.approx(0.26)


def test_tie_goes_to_smallest_id(tmp_path):
    write_plan(tmp_path, [
        {"id": "zz", "model_type": "normal", "train": ["polish"], "lr": 1e-3, "outcome": "finished",
         "scores": {"polish": (0.5, 0.9)}},
        {"id": "aa", "model_type": "normal", "train": ["polish"], "lr": 1e-4, "outcome": "finished",
         "scores": {"polish": (0.5, 0.1)}},
    ])
    assert collect(tmp_path).best_cell("normal", "polish", "polish").trial_id == "aa"


def test_csv_and_markdown(tmp_path):
    table = collect(standard_plan(tmp_path))
    rows = list(csv.DictReader(io.StringIO(csv_text(table))))
    assert len(rows) == 8
    a1 = rows[0]
    assert a1["trial"] == "a1" and a1["train_set"] == "polish" and a1["learning_rate"] == "0.0001"
    assert a1["polish/eval/macro_f1"] == "0.6000" and a1["russian/test/macro_f1"] == "0.2500"
    assert rows[2]["state"] == "failed" and rows[2]["reason"] == "CUDA out of memory"
    assert rows[2]["polish/eval/macro_f1"] == ""
    md = markdown_text(table)
    assert "8 trials: 4 finished, 1 failed, 1 running, 1 missing, 1 invalid." in md
    assert "| b1 | normal | russian | 0.0001 | failed: CUDA out of memory |" in md
    assert ("| normal | polish | polish | learning_rate=0.0001 | a1 | 0.6000 | 0.6000 (n=1) | 0.4500 (n=1) | 2/2 |"
            in md)
    assert "selection train-languages (zero-shot: chosen on the training languages' eval splits)" in md
    csv_path, md_path, summary_path, best_path = write_tables(table)
    assert csv_path.read_text() == csv_text(table) and md_path.read_text() == md
    assert summary_path.name == "summary.csv" and best_path.name == "best.csv"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_collect(tmp_path, capsys):
    standard_plan(tmp_path)
    assert main(["collect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| a1 | normal | polish |" in out
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "results.md").is_file()
    assert not (tmp_path / "plots").exists()


def test_cli_collect_plots(tmp_path, capsys):
    standard_plan(tmp_path)
    (tmp_path / "trials" / "a1" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "epoch": 0, "language": "polish", "split": "eval",
                              "loss": 2.0 / s, "accuracy": 0.1 * s, "macro_f1": 0.1 * s}) for s in (1, 2, 3))
        + '\n{"step": 4, "lo'
    )
    assert main(["collect", str(tmp_path), "--plots", "--metric", "accuracy"]) == 0
    assert (tmp_path / "plots" / "transfer-heatmap.png").stat().st_size > 5000
    assert (tmp_path / "plots" / "curves" / "a1.png").is_file()
    assert len(list((tmp_path / "plots" / "curves").iterdir())) == 1
    assert "accuracy" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["collect", "{d}/nowhere"], "plan.json: no plan here"),
        (["collect", "{d}", "--metric", "f2"], "--metric: unknown metric 'f2'"),
    ],
)
def test_cli_errors_exit_2_write_nothing(tmp_path, capsys, args, expect):
    standard_plan(tmp_path)
    assert main([a.format(d=tmp_path) for a in args]) == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_bad_plan_json_names_file(tmp_path):
    (tmp_path / "plan.json").write_text('{"trials": [{"model_type": "normal"}]}')
    with pytest.raises(FinetuneError, match=r"plan.json: \$\.trials\[0\]\.id"):
        collect(tmp_path)
    (tmp_path / "plan.json").write_text('{"trials": [')
    with pytest.raises(FinetuneError, match="plan.json: invalid JSON at line 1"):
        collect(tmp_path)
