"""The real trainer on question answering, causal LM and LoRA: losses, exact resume, metrics, merge."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from task_fixtures import entry, write_squad, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HP = {"learning_rate": 2e-3, "batch_size": 8, "micro_batch_size": None, "epochs": 2, "max_steps": 8,
      "warmup_ratio": 0.1, "scheduler": "linear", "weight_decay": 0.01, "gradient_clipping": 1.0, "seed": 42,
      "dropout": 0.1, "max_answer_length": 30, "top_k": 20, "doc_stride": 16}
TRAINING = {"strategy": "auto", "precision": "auto", "compile": False, "eval_interval": 4, "checkpoint_interval": 3,
            "device": "cpu", "num_workers": 0, "workload": "finetune", "max_eval_samples": None}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_pretrained):  # noqa: F811
    root = tmp_path_factory.mktemp("tasks")
    ckpt, tok = tiny_pretrained
    for lang in ("russian", "polish"):
        write_squad(root / "qa" / lang, lang)
        write_text(root / "text" / lang, lang)
    return {"root": root, "ckpt": ckpt, "tok": tok}


def config(data: dict, kind: str, trial_id: str, *, hp: dict | None = None, training: dict | None = None,
           train: tuple[str, ...] = ("russian", "polish"), evals: tuple[str, ...] = ("russian", "polish")) -> dict:
    folder = "qa" if kind == "question-answering" else "text"
    metric = "f1" if kind == "question-answering" else "perplexity"
    return {"id": trial_id, "model_type": "normal", "task": folder, "train_languages": list(train),
            "eval_languages": list(evals), "hyperparameters": {**HP, **(hp or {})},
            "training": {**TRAINING, "metric": metric, **(training or {})}, "checkpoint": str(data["ckpt"]),
            "tokenizer": str(data["tok"]), "data": {"cache_dir": str(data["root"] / "cache")},
            "datasets": {lang: entry(data["root"] / folder / lang, kind, lang) for lang in set(train) | set(evals)}}


def make_trial(parent: Path, cfg: dict) -> Path:
    trial = parent / cfg["id"]
    trial.mkdir(parents=True)
    (trial / "config.json").write_text(json.dumps(cfg, indent=1))
    return trial


def run(trial: Path, **kwargs) -> int:
    from finetune.compute import trainer

    kwargs.setdefault("threads", 1)
    return trainer.run(trial, **kwargs)


def lines(trial: Path) -> list[dict]:
    return [json.loads(x) for x in (trial / "metrics.jsonl").read_text().splitlines()]


def preempt_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGUSR2)

    return hook


def assert_same(a: Path, b: Path) -> None:
    ra, rb = (json.loads((t / "result.json").read_text()) for t in (a, b))
    assert ra["metrics"] == rb["metrics"] and ra["best_step"] == rb["best_step"]
    assert [{k: v for k, v in x.items()} for x in lines(a)] == lines(b)
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (a / "model" / "adapter_model.safetensors").exists() else "model.safetensors"
    wa, wb = load_file(str(a / "model" / name)), load_file(str(b / "model" / name))
    import torch

    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("kind, lora", [("question-answering", 0), ("causal-lm", 0), ("question-answering", 4),
                                        ("causal-lm", 4)])
def test_task_trains_and_resumes_exactly(data, kind, lora, tmp_path):
    cfg = config(data, kind, f"{kind}-{lora}", hp={"lora_r": lora, "lora_alpha": 8, "lora_dropout": 0.1,
                                                     "lora_targets": ["c_attn", "c_proj", "c_fc"]} if lora else None)
    ref = make_trial(tmp_path / "ref", cfg)
    assert run(ref, dump_logits=True) == 0
    result = json.loads((ref / "result.json").read_text())
    metrics = result["metrics"]
    assert set(metrics) == {"russian", "polish"}
    names = {"question-answering": {"loss", "exact_match", "f1"}, "causal-lm": {"loss", "perplexity"}}[kind]
    for lang in metrics:
        assert set(metrics[lang]["eval"]) == names
        if kind == "causal-lm":
            import math

            assert metrics[lang]["eval"]["perplexity"] == pytest.approx(math.exp(metrics[lang]["eval"]["loss"]))
        else:
            assert 0 <= metrics[lang]["eval"]["exact_match"] <= metrics[lang]["eval"]["f1"] <= 1
    assert [x["step"] for x in lines(ref)] == [4, 4, 8, 8]
    params = result["parameters"]
    assert params["trainable"] < params["total"] if lora else params["trainable"] == params["total"]
    dumps = sorted(p.name for p in (ref / "logits").iterdir())
    assert dumps == sorted(f"{cfg['id']}-{lang}-eval.npz" for lang in ("polish", "russian"))
    # preempted twice (USR2), resumed: the same run bit for bit
    again = make_trial(tmp_path / "again", cfg)
    for stop in (2, 5):
        assert run(again, on_step=preempt_at(stop), dump_logits=True) == 75
        ckpt_files = [p for p in (again / "checkpoints").rglob("*") if p.is_file()]
        assert ckpt_files
    assert run(again, dump_logits=True) == 0
    assert_same(ref, again)
    if lora:  # only the adapters and the head were checkpointed: far smaller than the model
        assert (ref / "model" / "adapter_config.json").is_file() and not (ref / "model" / "model.safetensors").exists()
