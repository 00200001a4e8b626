"""The trainer on a tiny pretrained nanoGPT and a slice of real SIB-200 Russian data.

Recorded losses pin the numerics; resume tests interrupt runs with a real SIGUSR2 (from the
``on_step`` hook in-process, and from outside to a subprocess at whatever step it has reached)
and require the same metrics and bit-identical weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nanogpt_fixtures import tiny_pretrained  # noqa: F401

from finetune.compute.trainer import lr_factor, settings_from_config
from finetune.errors import ConfigError
from finetune.fileio import read_json5

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = read_json5(REPO / "config" / "default.json")
LABELS = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]
ROWS = {"train": 160, "dev": 40, "test": 40}


# --- helpers (also used by test_distributed.py) -------------------------------------------------------


def write_sib_slice(root: Path, sib200_dir: Path, subset: str = "rus_Cyrl") -> Path:
    """The first rows of each real SIB-200 split, in the same layout (tests run faster)."""
    folder = root / subset
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in ROWS.items():
        with open(sib200_dir / subset / f"{split}.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))[:n]
        with open(folder / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["index_id", "category", "text"], delimiter="\t")
            w.writeheader()
            w.writerows(rows)
    return root


def trial_config(ckpt: Path, tokenizer: Path, data_root: Path, cache: Path, trial_id: str = "t0", **over) -> dict:
    entry = {"dataset": "Davlan/sib200", "subset": "rus_Cyrl", "train_features": ["text"],
             "eval_feature": "category", "splits": {"train": "train", "eval": "validation", "test": "test"},
             "task_type": "classification", "classes": 7, "labels": LABELS, "filter_length": False,
             "language": "russian", "espeak": "ru", "path": str(data_root)}
    hp = {"learning_rate": 2e-3, "batch_size": 16, "micro_batch_size": None, "epochs": 2, "max_steps": 16,
          "warmup_ratio": 0.1, "scheduler": "linear", "weight_decay": 0.01, "gradient_clipping": 1.0,
          "seed": 42, "dropout": 0.1}
    training = {"strategy": "auto", "precision": "auto", "compile": False, "eval_interval": 4,
                "checkpoint_interval": 5, "metric": "macro_f1", "device": "cpu", "num_workers": 0,
                "workload": "finetune", "max_eval_samples": None}
    hp.update(over.pop("hyperparameters", {}))
    training.update(over.pop("training", {}))
    # a frozen trial holds every key: what the test does not set comes from default.json, as in a plan
    return {"id": trial_id, "model_type": "normal", "task": "topic", "train_languages": ["russian"],
            "eval_languages": ["russian"], "hyperparameters": {**DEFAULTS["hyperparameters"], **hp},
            "training": {**DEFAULTS["training"], **training}, "slurm": DEFAULTS["slurm"],
            "checkpoint": str(ckpt), "tokenizer": str(tokenizer), "datasets": {"russian": entry},
            "data": {"cache_dir": str(cache)}, **over}


def make_trial(parent: Path, config: dict) -> Path:
    trial = parent / config["id"]
    trial.mkdir(parents=True)
    (trial / "config.json").write_text(json.dumps(config, indent=1))
    return trial


def weights(trial: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(trial / "model" / "model.safetensors"))


def metric_lines(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]


def same_run(a: Path, b: Path, *, atol: float = 0.0) -> None:
    """Same evaluations, same final metrics and the same weights (bit-exact for atol=0)."""
    import torch

    ra, rb = json.loads((a / "result.json").read_text()), json.loads((b / "result.json").read_text())
    assert ra["best_step"] == rb["best_step"]
    for lang, splits in ra["metrics"].items():
        for split, values in splits.items():
            for key, value in values.items():
                assert rb["metrics"][lang][split][key] == pytest.approx(value, abs=atol, rel=0), (lang, split, key)
    la, lb = metric_lines(a), metric_lines(b)
    assert [(x["step"], x["language"]) for x in la] == [(x["step"], x["language"]) for x in lb]
    for x, y in zip(la, lb, strict=True):
        for key in ("loss", "accuracy", "macro_f1", "train_loss", "lr"):
            assert y[key] == pytest.approx(x[key], abs=atol, rel=0), (x["step"], key)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if atol == 0:
            assert torch.equal(wa[key], wb[key]), key
        else:
            torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_pretrained, sib200_dir):  # noqa: F811
    ckpt, tokenizer = tiny_pretrained
    root = tmp_path_factory.mktemp("trainer")
    data = write_sib_slice(root / "sib", sib200_dir)
    return {"ckpt": ckpt, "tokenizer": tokenizer, "data": data, "cache": root / "cache", "root": root}


def config_for(setup: dict, trial_id: str, **over) -> dict:
    return trial_config(setup["ckpt"], setup["tokenizer"], setup["data"], setup["cache"], trial_id, **over)


def run_in_process(trial: Path, **kwargs) -> int:
    """In this process, on one CPU thread: float sums are only bit-exact between runs that use
    the same number of threads, and other tests may change this process's thread count."""
    from finetune.compute import trainer

    kwargs.setdefault("threads", 1)
    return trainer.run(trial, **kwargs)


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """One uninterrupted run that the resume and reproducibility tests compare against."""
    trial = make_trial(setup["root"] / "ref", config_for(setup, "ref"))
    assert run_in_process(trial, dump_logits=True) == 0
    return trial


# --- settings (pure) --------------------------------------------------------------------------------


def settings_config(hp: dict, training: dict | None = None) -> dict:
    """A complete trial config (no files behind it: settings only read it)."""
    p = Path("/nonexistent")
    return trial_config(p / "ckpt.pt", p / "tok", p / "data", p / "cache", hyperparameters=hp,
                        training=training or {})


def test_settings_split_global_batch_into_micro_batches():
    cfg = settings_config({"batch_size": 32, "micro_batch_size": 4, "epochs": 1})
    s = settings_from_config(cfg, world_size=2)
    assert (s.micro_batch_size, s.accumulation, s.virtual_ranks, s.strategy) == (4, 4, 8, "ddp")
    s = settings_from_config(settings_config({"batch_size": 32, "max_steps": 3}), world_size=4)
    assert (s.micro_batch_size, s.accumulation, s.strategy) == (8, 1, "ddp")
    s = settings_from_config(settings_config({"batch_size": 8, "epochs": 1}, {"strategy": "fsdp"}))
    assert s.strategy == "single"  # one process never wraps


@pytest.mark.parametrize(
    ("hp", "training", "world", "paths"),
    [
        ({"batch_size": 10, "micro_batch_size": 3, "epochs": 1}, {}, 1, ["$.hyperparameters.micro_batch_size"]),
        ({"batch_size": 9, "epochs": 1}, {}, 2, ["$.hyperparameters.batch_size"]),
        ({"batch_size": 8, "epochs": None, "max_steps": None}, {}, 1, ["$.hyperparameters.epochs"]),
        ({"batch_size": 8, "epochs": 1, "learning_rate": 0, "scheduler": "step"}, {"metric": "f2"}, 1,
         ["$.hyperparameters.learning_rate", "$.hyperparameters.scheduler", "$.training.metric"]),
        ({"batch_size": 8, "epochs": 1}, {"strategy": "single"}, 2, ["$.training.strategy"]),
        ({"batch_size": 8, "epochs": 1, "warmup_ratio": 1.5, "dropout": True}, {"num_workers": -1}, 1,
         ["$.hyperparameters.dropout", "$.hyperparameters.warmup_ratio", "$.training.num_workers"]),
    ],
)
def test_settings_report_every_problem_with_file_and_path(hp, training, world, paths):
    with pytest.raises(ConfigError) as err:
        settings_from_config(settings_config(hp, training), world, file="trials/x/config.json")
    assert sorted(p.path for p in err.value.problems) == sorted(paths)
    assert all(p.file == "trials/x/config.json" for p in err.value.problems)


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_lr_schedule_matches_transformers(scheduler):
    import torch
    from transformers import get_scheduler

    total, warmup = 40, 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    name = "constant_with_warmup" if scheduler == "constant" else scheduler
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total):
        assert lr_factor(step, total, warmup, scheduler) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


# --- recorded numbers, reproducibility ------------------------------------------------------------


# Train losses of the first steps of the tiny model (2 layers, 32 dims; nanogpt_fixtures.TINY) on the
# first 160 Russian SIB-200 rows, seed 42, batch 16, lr 2e-3, 10% warmup over 16 steps, dropout 0.1,
# CPU fp32. Recorded from this trainer; a change means the numerics changed.
RECORDED_TRAIN_LOSSES = [1.89692, 1.89551, 1.94066, 1.82893, 1.83967, 1.95751]


def test_recorded_losses(setup):
    trial = make_trial(setup["root"] / "recorded", config_for(setup, "rec", hyperparameters={"max_steps": 6},
                                                              training={"eval_interval": 1}))
    assert run_in_process(trial) == 0
    losses = [line["train_loss"] for line in metric_lines(trial)]
    assert losses == pytest.approx(RECORDED_TRAIN_LOSSES, abs=5e-4)


def test_same_seed_same_run_other_seed_other_run(setup, reference):
    again = make_trial(setup["root"] / "again", config_for(setup, "ref"))
    assert run_in_process(again) == 0
    same_run(reference, again)
    # the first step's loss depends on the head's initialisation, the batch order and dropout
    # only: another seed changes it
    other = make_trial(setup["root"] / "other", config_for(setup, "other", hyperparameters={"seed": 7, "max_steps": 1}))
    assert run_in_process(other) == 0
    assert metric_lines(other)[0]["train_loss"] != pytest.approx(RECORDED_TRAIN_LOSSES[0], abs=1e-3)


def test_outputs_of_a_finished_trial(setup, reference):
    result = json.loads((reference / "result.json").read_text())
    assert result["state"] == "finished" and result["trial"] == "ref"
    assert set(result["metrics"]["russian"]) == {"eval", "test"}
    assert set(result["metrics"]["russian"]["test"]) == {"loss", "accuracy", "macro_precision", "macro_recall",
                                                         "macro_f1"}
    assert set(result["timing"]) >= {"samples_per_s", "tokens_per_s", "wall_s", "peak_memory_mb"}
    assert result["timing"]["samples_per_s"] > 0
    # evaluated at steps 4, 8, 12, 16; the best one is the model that was saved and scored
    lines = metric_lines(reference)
    assert [line["step"] for line in lines] == [4, 8, 12, 16]
    best = max(lines, key=lambda line: line["macro_f1"])
    assert result["best_step"] == best["step"]
    assert result["metrics"]["russian"]["eval"]["macro_f1"] == pytest.approx(best["macro_f1"], abs=1e-9)
    assert json.loads((reference / "state.json").read_text())["state"] == "finished"
    assert not (reference / "checkpoints").exists()
    # the model directory loads with transformers and gives the dumped logits
    import numpy as np
    import torch

    from finetune.compute.hf import NanoGPTForSequenceClassification

    model = NanoGPTForSequenceClassification.from_pretrained(reference / "model").eval()
    assert model.config.id2label[0] == LABELS[0] or set(model.config.id2label.values()) == set(LABELS)
    dump = np.load(reference / "logits" / "ref-russian-test.npz")
    assert dump["logits"].shape == (ROWS["test"], 7) and dump["labels"].shape == (ROWS["test"],)
    from finetune.compute.metrics import classification_metrics

    assert classification_metrics(dump["logits"], dump["labels"])["macro_f1"] == pytest.approx(
        result["metrics"]["russian"]["test"]["macro_f1"])
    from finetune.compute.tokenizer import load_tokenizer

    tok = load_tokenizer(str(reference / "model"))
    first = tok(["Турция с трёх сторон окружена морями."], return_tensors="pt")
    with torch.inference_mode():
        assert model(**first).logits.shape == (1, 7)


def test_rerun_of_finished_trial_changes_nothing(reference):
    before = (reference / "result.json").stat().st_mtime_ns, (reference / "metrics.jsonl").read_text()
    assert run_in_process(reference) == 0
    assert ((reference / "result.json").stat().st_mtime_ns, (reference / "metrics.jsonl").read_text()) == before


# --- resume ---------------------------------------------------------------------------------------------


def _preempt_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGUSR2)

    return hook


def test_resume_after_preemption_at_random_steps_is_exact(setup, reference):
    rng = random.Random(int(time.time()))
    stops = sorted(rng.sample(range(1, 16), 2))
    trial = make_trial(setup["root"] / f"resume-{stops[0]}-{stops[1]}", config_for(setup, "ref"))
    for stop in stops:
        assert run_in_process(trial, on_step=_preempt_at(stop), dump_logits=True) == 75, stops
        state = json.loads((trial / "state.json").read_text())
        assert state["state"] == "preempted" and f"step {stop}" in state["reason"]
        ckpt = trial / "checkpoints"
        assert json.loads((ckpt / "latest.json").read_text())["step"] == stop
        # only the latest resume state and the best model are kept
        assert sorted(p.name for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("step-")) == [
            f"step-{stop:08d}"]
        assert len([p for p in ckpt.iterdir() if p.name.startswith("best-")]) <= 1
        assert not (trial / "result.json").exists()
    assert run_in_process(trial, dump_logits=True) == 0
    same_run(reference, trial)


def test_sigusr2_to_a_running_process_checkpoints_exits_75_and_resumes_exactly(setup, reference):
    trial = make_trial(setup["root"] / "signal", config_for(setup, "ref", training={"log_interval": 1}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as run_in_process
    cmd = [sys.executable, "-m", "finetune.compute.trainer", str(trial)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if " step " in line and "/16" in line:  # training has started: interrupt at whatever step
            proc.send_signal(signal.SIGUSR2)
            break
    proc.stderr.read()
    assert proc.wait(timeout=300) == 75
    assert json.loads((trial / "state.json").read_text())["state"] == "preempted"
    stopped = json.loads((trial / "checkpoints" / "latest.json").read_text())["step"]
    assert 1 <= stopped < 16
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr and f"at step {stopped}" in done.stderr
    same_run(reference, trial)


def test_crash_after_checkpoint_resumes_without_duplicate_metrics(setup, reference):
    """A hard kill (no USR2) loses the steps after the last checkpoint, and nothing else."""
    trial = make_trial(setup["root"] / "crash", config_for(setup, "ref"))

    def crash(step: int) -> None:
        if step == 9:  # evaluated at 4 and 8, checkpointed at 5: the eval line of step 8 is redone
            raise RuntimeError("simulated node failure")

    assert run_in_process(trial, on_step=crash) == 1
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed" and "simulated node failure" in state["reason"]
    assert [line["step"] for line in metric_lines(trial)] == [4, 8]
    assert run_in_process(trial) == 0
    assert [line["step"] for line in metric_lines(trial)] == [4, 8, 12, 16]
    same_run(reference, trial)


# --- failures ---------------------------------------------------------------------------------------


def test_bad_config_fails_with_path_and_writes_no_result(setup):
    trial = make_trial(setup["root"] / "bad", config_for(setup, "bad", hyperparameters={"micro_batch_size": 5}))
    assert run_in_process(trial) == 2
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed" and "$.hyperparameters.micro_batch_size" in state["reason"]
    assert str(trial / "config.json") in state["reason"]
    assert not (trial / "result.json").exists()


def test_exception_fails_nonzero_and_state_says_why(setup, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    trial = make_trial(tmp_path, config_for(setup, "broken", checkpoint=str(broken)))
    code = run_in_process(trial)
    assert code != 0
    state = json.loads((trial / "state.json").read_text())
    assert state["state"] == "failed" and "broken.pt" in state["reason"]
    assert not (trial / "result.json").exists()


def test_not_a_trial_directory(tmp_path):
    assert run_in_process(tmp_path / "missing") == 2
    assert not (tmp_path / "missing").exists()


def test_a_metric_of_another_task_is_refused(setup, tmp_path):
    trial = make_trial(tmp_path, config_for(setup, "qa-metric", training={"metric": "exact_match"}))
    assert run_in_process(trial) == 2
    reason = json.loads((trial / "state.json").read_text())["reason"]
    assert "$.training.metric" in reason and "exact_match" in reason


def test_fp16_on_cpu_is_refused(setup, tmp_path):
    trial = make_trial(tmp_path, config_for(setup, "fp16", training={"precision": "fp16"}))
    assert run_in_process(trial) == 2
    assert "$.training.precision" in json.loads((trial / "state.json").read_text())["reason"]
