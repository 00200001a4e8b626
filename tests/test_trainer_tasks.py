"""The real trainer on question answering, causal LM and LoRA: losses, exact resume, metrics, merge."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401
from task_fixtures import entry, write_squad, write_text

from finetune.fileio import read_json5

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a frozen trial holds every key: what a test does not set comes from default.json, as in a plan
DEFAULTS = read_json5(Path(__file__).resolve().parent.parent / "config" / "default.json")
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
            "eval_languages": list(evals), "hyperparameters": {**DEFAULTS["hyperparameters"], **HP, **(hp or {})},
            "training": {**DEFAULTS["training"], **TRAINING, "metric": metric, **(training or {})},
            "checkpoint": str(data["ckpt"]),
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


# train loss at steps 4 and 8 (one CPU thread), from the first run of this test
RECORDED = {("question-answering", 0): [4.09744, 3.81428], ("causal-lm", 0): [5.49038, 5.33012],
            ("question-answering", 4): [4.14862, 4.01841], ("causal-lm", 4): [5.45713, 5.41503]}


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
    assert [x["train_loss"] for x in lines(ref)[::2]] == pytest.approx(RECORDED[(kind, lora)], abs=5e-4)
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


def test_lora_classification_counts_merge_and_cli(data, tmp_path, sib200_dir):
    """LoRA on the classification task: exact trainable count, and the merged model (loaded in a
    Python without peft) gives the adapter model's logits within 1e-5."""
    import subprocess
    import sys

    import numpy as np
    import torch
    from peft import PeftModel
    from test_trainer import trial_config, write_sib_slice

    from finetune.compute.hf import NanoGPTForSequenceClassification
    from finetune.compute.tokenizer import load_tokenizer

    sib = write_sib_slice(tmp_path / "sib", sib200_dir)
    cfg = trial_config(data["ckpt"], data["tok"], sib, tmp_path / "cache", "lora-clf",
                       hyperparameters={"max_steps": 6, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                        "lora_targets": ["c_attn", "c_fc"]})
    trial = make_trial(tmp_path, cfg)
    assert run(trial) == 0
    result = json.loads((trial / "result.json").read_text())
    # n_layer 2, n_embd 32, r 4: c_attn 4*(32+96) + c_fc 4*(32+128) per layer, plus the 7-class head 32*7
    assert result["parameters"]["trainable"] == 2 * (4 * (32 + 96) + 4 * (32 + 128)) + 32 * 7
    base_total = sum(p.numel() for p in NanoGPTForSequenceClassification.from_nanogpt(data["ckpt"], 7).parameters())
    assert result["parameters"]["total"] == base_total + 2 * (4 * (32 + 96) + 4 * (32 + 128)) + 32 * 7
    model_files = sorted(p.name for p in (trial / "model").iterdir())
    assert "adapter_model.safetensors" in model_files and "model.safetensors" not in model_files

    tok = load_tokenizer(data["tok"])
    texts = ["Сборная России выиграла матч.", "Поезд уходит в восемь утра из Москвы."]
    batch = tok(texts, return_tensors="pt", padding=True)
    base = NanoGPTForSequenceClassification.from_nanogpt(data["ckpt"], 7)
    adapted = PeftModel.from_pretrained(base, str(trial / "model")).eval()
    with torch.no_grad():
        expected = adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()

    out = tmp_path / "merged"
    from finetune.cli import main

    assert main(["convert", "--merge-lora", str(trial), str(out)]) == 0
    code = (
        "import sys\n"
        "sys.modules['peft'] = None  # no peft in this Python\n"
        "import numpy as np, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        f"tok = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"b = tok({texts!r}, return_tensors='pt', padding=True)\n"
        "with torch.no_grad():\n"
        "    logits = m(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits\n"
        f"np.save({str(tmp_path / 'merged.npy')!r}, logits.numpy())\n"
        "print(type(m).__name__, m.config.id2label[0], 'peft' in str(type(m)).lower())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["NanoGPTForSequenceClassification", "science/technology", "False"]
    np.testing.assert_allclose(np.load(tmp_path / "merged.npy"), expected, atol=1e-5, rtol=0)
    # not a LoRA trial / bad flags: exit 2 with the reason
    with pytest.raises(Exception) as e:
        from finetune.compute.training.lora import merge

        merge(tmp_path, tmp_path / "x")
    assert "no LoRA adapter here" in str(e.value)
    assert main(["convert", "--merge-lora", str(trial), str(tmp_path / "y"), "--task", "classification"]) == 2
