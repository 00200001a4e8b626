"""The planner per task type: entries, selection metric, LoRA keys and QLoRA, before anything runs."""

from __future__ import annotations

import json

import pytest

from finetune.errors import ConfigError
from finetune.login.plan import build_plan

PAIR = """{"checkpoints": {"prefix": "../models", "normal": "n-ckpt", "ipa": "i-ckpt"},
 "tokenizers": {"prefix": "../models", "normal_prefix": "n-tok", "ipa_prefix": "i-tok"}}"""
QA = {"dataset": "data/qa", "train_features": ["question", "context"], "eval_feature": "answers",
      "splits": {"train": "train", "eval": "validation"}, "task_type": "question-answering"}
LM = {"dataset": "data/text", "train_features": ["text"], "splits": {"train": "train", "eval": "validation"},
      "task_type": "causal-lm"}


@pytest.fixture
def confdir(tmp_path, config_dir):
    d = tmp_path / "conf"
    d.mkdir()
    # no default.json of the user's: the shipped one is the base
    db = json.loads((config_dir / "language-database.json").read_text(encoding="utf-8"))
    for lang in ("russian", "polish"):
        db[lang]["qa"] = {"squad": dict(QA)}
        db[lang]["text"] = {"wiki": dict(LM)}
    (d / "language-database.json").write_text(json.dumps(db))
    (d / "pair.json").write_text(PAIR)
    return d


def plan(d, task: dict, *overrides, grid: dict | None = None, tmp_path=None):
    (d / "task.json").write_text(json.dumps(task))
    grid_path = None
    if grid is not None:
        grid_path = d / "grid.json"
        grid_path.write_text(json.dumps(grid))
    return build_plan([str(d / "pair.json"), str(d / "task.json")], list(overrides),
                      grid_config=str(grid_path) if grid_path else None, model_types=["normal"])


def problems(d, task, *overrides, grid=None):
    with pytest.raises(ConfigError) as e:
        plan(d, task, *overrides, grid=grid)
    return [(p.file, p.path, p.message) for p in e.value.problems]


QA_TASK = {"task": "qa", "datasets": {"russian": "squad", "polish": "squad"}, "training": {"metric": "f1"}}
LM_TASK = {"task": "text", "datasets": {"russian": "wiki", "polish": "wiki"}, "training": {"metric": "perplexity"}}


def test_qa_and_causal_lm_plans(confdir):
    p = plan(confdir, QA_TASK)
    t = p.trials[0]
    assert {"top_k", "max_answer_length"} <= set(t.hyperparameters)
    assert not any(k.startswith("lora") for k in t.hyperparameters)  # lora_r 0: full fine-tuning
    assert len(plan(confdir, LM_TASK).trials) == 1
    (confdir / "task.json").write_text(json.dumps(LM_TASK))
    matrix = build_plan([str(confdir / "pair.json"), str(confdir / "task.json")], model_types=["normal"], matrix=True)
    # the cross-language matrix: adapt on Polish text, perplexity on Russian too
    assert any(t.train_languages == ["polish"] and "russian" in t.eval_languages for t in matrix.trials)
    assert not any(k in matrix.trials[0].hyperparameters for k in ("lora_r", "lora_alpha"))


def test_the_metric_must_be_the_task_types(confdir):
    # nobody set it: the shipped default's macro_f1 is classification's; QA selects by f1, causal-lm by loss
    p = plan(confdir, {**QA_TASK, "training": {}})
    assert p.trial_config(p.trials[0])["training"]["metric"] == "f1"
    p = plan(confdir, {**LM_TASK, "training": {}})
    assert p.trial_config(p.trials[0])["training"]["metric"] == "loss"
    [(file, path, message)] = problems(confdir, {**QA_TASK, "training": {"metric": "macro_f1"}})
    assert file.endswith("task.json") and path == "$.training.metric"
    assert "'macro_f1' is not a question-answering metric" in message and "training.metric=f1" in message
    [(file, path, message)] = problems(confdir, {**LM_TASK, "training": {"metric": "f1"}})
    assert file.endswith("task.json") and "choose loss, perplexity" in message


def test_entries_are_checked_per_task_type(confdir):
    db = json.loads((confdir / "language-database.json").read_text())
    del db["russian"]["qa"]["squad"]["eval_feature"]
    (confdir / "language-database.json").write_text(json.dumps(db))
    [(file, path, message)] = problems(confdir, QA_TASK)  # the schema: QA needs its answers column
    assert path == "$.russian.qa.squad.eval_feature" and message == "missing required key"
    db["russian"]["qa"]["squad"]["eval_feature"] = "answers"
    db["russian"]["qa"]["squad"]["train_features"] = ["context"]
    db["polish"]["qa"]["squad"]["classes"] = 3
    db["polish"]["text"]["wiki"]["labels"] = ["a"]
    (confdir / "language-database.json").write_text(json.dumps(db))
    found = problems(confdir, QA_TASK)
    assert sorted((path, message) for _, path, message in found) == [
        ("$.polish.qa.squad.classes", "question-answering has no classes; remove it"),
        ("$.russian.qa.squad.train_features",
         "question-answering needs two features [question, context], got ['context']"),
    ]
    assert all(file.endswith("language-database.json") for file, _, _ in found)
    [(file, path, message)] = problems(confdir, LM_TASK)
    assert path == "$.polish.text.wiki.labels" and message == "causal-lm has no labels; remove it"


def test_lora_keys_only_with_adapters_and_swept_zero_rank_collapses(confdir):
    p = plan(confdir, {**QA_TASK, "hyperparameters": {"lora_r": 8}})
    assert {k: v for k, v in p.trials[0].hyperparameters.items() if k.startswith("lora")} == {
        "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_targets": ["c_attn", "c_proj", "c_fc"],
        "lora_4bit": False}
    g = plan(confdir, QA_TASK, grid={"parameters": {"lora_r": [0, 8], "lora_alpha": [16, 32]}})
    ranks = sorted((t.hyperparameters.get("lora_r", 0), t.hyperparameters.get("lora_alpha", 0)) for t in g.trials)
    assert ranks == [(0, 0), (8, 16), (8, 32)]
    assert all(json.loads(t.point_text) == t.grid_point for t in g.trials)  # the fast point text stays exact  # rank 0 twice is one full fine-tune


def test_qlora_is_refused_without_cuda_or_bitsandbytes(confdir, monkeypatch):
    import finetune.login.plan_checks as checks

    monkeypatch.setattr(checks, "qlora_missing", lambda gpus=0: [] if gpus else ["CUDA", "bitsandbytes"])
    [(file, path, message)] = problems(confdir, {**QA_TASK, "hyperparameters": {"lora_r": 8, "lora_4bit": True}})
    assert file.endswith("task.json") and path == "$.hyperparameters.lora_4bit"
    assert message.startswith("4-bit QLoRA needs CUDA and bitsandbytes, which this machine lacks")
    [(_, _, message)] = problems(confdir, {**QA_TASK, "hyperparameters": {"lora_4bit": True}}, "slurm.gpus=1")
    assert message == "4-bit QLoRA needs adapters: set lora_r > 0"


def test_qlora_check_on_this_machine(confdir):
    """The real check: what this machine has (here: no NVIDIA device; bitsandbytes installed)."""
    import glob
    import importlib.util

    from finetune.login.plan_checks import qlora_missing

    expect = ([] if glob.glob("/dev/nvidia[0-9]*") else ["CUDA"]) + (
        [] if importlib.util.find_spec("bitsandbytes") else ["bitsandbytes"])
    assert qlora_missing() == expect
    assert "CUDA" not in qlora_missing(gpus=1)
