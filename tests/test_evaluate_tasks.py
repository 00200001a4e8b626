"""`finetune evaluate` on question answering and causal LM (full fine-tune and LoRA): a finished
trial trained on Russian is scored on Polish with no training step; its own language's numbers
equal result.json's, the new one's land in evaluations.json, the dumps and `collect`."""

from __future__ import annotations

import json
import math

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from task_fixtures import entry
from test_trainer_tasks import config, data, make_trial, run  # noqa: F401

from finetune.analysis.results import collect
from finetune.cli import main

TRIAL = "5e1f0c2a9b34"


def _snapshot(trial):
    files = [trial / "result.json", trial / "metrics.jsonl", *sorted((trial / "model").iterdir())]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def _plan(data, kind: str, lora: int):  # noqa: F811
    lora_hp = {"lora_r": lora, "lora_alpha": 8, "lora_dropout": 0.0, "lora_targets": ["c_attn", "c_fc"]} if lora else {}
    cfg = config(data, kind, TRIAL, hp=lora_hp, train=("russian",), evals=("russian",))
    plan = data["root"] / f"plan-{kind}-{lora}"
    trial = make_trial(plan / "trials", cfg)
    folder = "qa" if kind == "question-answering" else "text"
    other = "causal-lm" if kind == "question-answering" else "question-answering"
    datasets = {"russian": cfg["datasets"]["russian"], "polish": entry(data["root"] / folder / "polish", kind, "polish"),
                "other": entry(data["root"] / ("text" if folder == "qa" else "qa") / "polish", other, "polish")}
    group = {"config": {"task": cfg["task"], "training": cfg["training"], "slurm": cfg.get("slurm") or {},
                        "wandb": {}, "data": cfg.get("data") or {}},
             "provenance": {}, "grid_config": None, "sources": [], "datasets": datasets,
             "checkpoints": {"normal": cfg["checkpoint"]}, "tokenizers": {"normal": cfg["tokenizer"]}}
    (plan / "plan.json").write_text(json.dumps({
        "version": 1, "sources": [], "groups": {"g": group},
        "trials": [{"id": TRIAL, "model_type": "normal", "train_languages": ["russian"], "eval_languages": ["russian"],
                    "hyperparameters": cfg["hyperparameters"], "group": "g"}]}))
    return plan, trial


@pytest.mark.parametrize("kind, lora", [("question-answering", 0), ("causal-lm", 0), ("question-answering", 4)])
def test_evaluate_scores_another_language(data, kind, lora, capsys):  # noqa: F811
    plan, trial = _plan(data, kind, lora)
    assert run(trial) == 0
    assert (trial / "model" / "adapter_config.json").is_file() == bool(lora)
    before = _snapshot(trial)
    result = json.loads((trial / "result.json").read_text())

    assert main(["evaluate", str(plan), "--languages", "russian", "polish", "--threads", "1",
                 "--executor", "local"]) == 0  # an evaluation job run here
    assert _snapshot(trial) == before  # no training step: nothing of the run changed
    evaluations = json.loads((trial / "evaluations.json").read_text())
    # the saved model (the adapter on its base, for LoRA) is the trial's best: the reported numbers again
    assert evaluations["russian"]["eval"] == pytest.approx(result["metrics"]["russian"]["eval"], abs=1e-6)
    polish = evaluations["polish"]["eval"]
    if kind == "question-answering":
        assert set(polish) == {"loss", "exact_match", "f1"} and 0 <= polish["exact_match"] <= polish["f1"] <= 1
        dump = __import__("numpy").load(trial / "logits" / f"{TRIAL}-polish-eval.npz")
        assert len(dump["prediction"]) == 8 and dump["f1"].mean() == pytest.approx(polish["f1"])
        shown = "polish eval f1"
    else:
        assert set(polish) == {"loss", "perplexity"} and polish["perplexity"] == pytest.approx(math.exp(polish["loss"]))
        dump = __import__("numpy").load(trial / "logits" / f"{TRIAL}-polish-eval.npz")
        assert dump["loss_sum"].sum() / dump["tokens"].sum() == pytest.approx(polish["loss"])
        shown = "polish eval perplexity"
    out = capsys.readouterr().out
    assert f"{TRIAL}: russian eval" in out and shown in out

    metric = "f1" if kind == "question-answering" else "perplexity"
    (row,) = collect(plan, metric=metric).rows
    assert row.eval_languages == ["polish", "russian"] or row.eval_languages == ["russian", "polish"]
    assert row.metric("polish", "eval", metric) == pytest.approx(polish[metric])

    # a dataset of another task type is refused, naming the file and what is wrong; nothing written
    evaluated = (trial / "evaluations.json").read_bytes()
    assert main(["evaluate", str(plan), "--languages", "other", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "$.datasets" in err and f"other: not a {kind} dataset" in err
    assert (trial / "evaluations.json").read_bytes() == evaluated
