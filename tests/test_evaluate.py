"""`finetune evaluate`: a finished trial's saved model scored on another eval language, with no
training step: result.json, metrics.jsonl and the model stay byte for byte, and collect reports
the new language."""

from __future__ import annotations

import json

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from test_selection_trainer import scrambled_copy
from test_trainer import make_trial, run_in_process, trial_config, write_sib_slice

from finetune.analysis.results import collect, summary_csv_text
from finetune.cli import main


def _snapshot(trial):
    files = [trial / "result.json", trial / "metrics.jsonl", *sorted((trial / "model").iterdir())]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def test_evaluate_adds_a_language_without_training(tmp_path, tiny_pretrained, sib200_dir):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    data = write_sib_slice(tmp_path / "sib", sib200_dir)
    scrambled_copy(data)
    plan = tmp_path / "plan"
    cfg = trial_config(ckpt, tokenizer, data, tmp_path / "cache", "0a1b2c3d4e5f", training={"eval_interval": 8})
    trial = make_trial(plan / "trials", cfg)
    scr = dict(cfg["datasets"]["russian"], subset="scr_Cyrl", language="scrambled")
    (plan / "plan.json").write_text(json.dumps({
        "version": 1, "sources": [],
        "groups": {"g": {"config": {"task": "topic"}, "datasets": {"russian": cfg["datasets"]["russian"],
                                                                  "scrambled": scr}}},
        "trials": [{"id": "0a1b2c3d4e5f", "model_type": "normal", "train_languages": ["russian"],
                    "eval_languages": ["russian"], "hyperparameters": cfg["hyperparameters"], "group": "g"}]}))
    assert run_in_process(trial) == 0
    before = _snapshot(trial)
    result = json.loads((trial / "result.json").read_text())

    assert main(["evaluate", str(plan), "--languages", "russian", "scrambled", "--threads", "1"]) == 0
    assert _snapshot(trial) == before  # no training step: nothing of the run changed
    evaluations = json.loads((trial / "evaluations.json").read_text())
    # the saved model is the trial's best checkpoint: scoring it again gives the reported numbers
    for split in ("eval", "test"):
        assert evaluations["russian"][split] == pytest.approx(result["metrics"]["russian"][split], abs=1e-6)
    assert set(evaluations["scrambled"]) >= {"eval", "test"}
    assert (trial / "logits" / "0a1b2c3d4e5f-scrambled-test.npz").is_file()

    table = collect(plan)
    (row,) = table.rows
    assert row.eval_languages == ["russian", "scrambled"]
    assert row.metric("scrambled", "test", "macro_f1") == pytest.approx(evaluations["scrambled"]["test"]["macro_f1"])
    assert "normal,russian,scrambled" in summary_csv_text(table)


def test_evaluate_refuses_unfinished_plans(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "sources": [], "groups": {}, "trials": [
        {"id": "aaaaaaaaaaaa", "model_type": "normal", "train_languages": ["a"], "eval_languages": ["a"],
         "hyperparameters": {}, "group": "g"}]}))
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no finished trials to evaluate" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--trials", "bbbbbbbbbbbb"]) == 2
    assert "--trials: not in the plan: bbbbbbbbbbbb" in capsys.readouterr().err
