"""This trainer against transformers' Trainer, side by side in one run, on CPU.

Same NanoGPTForSequenceClassification (a small nanoGPT pretrained here on SIB-200 Russian and
Polish), same encoded data (prepare_trial_data: Russian + Polish train, eval on both
validation splits), same hyperparameters (batch 16, lr, linear schedule with 10% warmup,
weight decay 0.01 on matrices, clipping 1.0, dropout 0.1, seed 42, fp32) and the same threads.
Neither evaluates or saves during training; both are scored once at the end with the same code.

Reported: train samples/s (the Trainer's own ``train_samples_per_second``; ours from result.json,
train-loop time without the final evaluation), wall seconds of each whole run (setup, training,
evaluation, saving), and final eval accuracy / macro F1. The Trainer runs twice: as configured
out of the box (random batches, padded per batch) and with ``train_sampling_strategy="group_by_length"``.

    .venv/bin/python bench/train.py                       # 3 epochs, 2 threads
    .venv/bin/python bench/train.py --epochs 1 --threads 1 --layers 2 --dim 64
    .venv/bin/python bench/train.py --lora-qa              # LoRA vs full fine-tuning, and a QA run
    .venv/bin/python bench/train.py --lora-qa --work /tmp/bt --runs clf-full   # one run per sitting

``--lora-qa`` instead runs this trainer alone, each run in its own process (so peak memory is
that run's): full fine-tuning and LoRA (``--lora-r``, attention and MLP projections) on the same
classification task, and question answering (full and LoRA) on a generated SQuAD-style Russian
and Polish set (tests/task_fixtures.py, contexts longer than a block). Reported: train samples/s,
peak memory (max RSS of the process on CPU), trainable/total parameters, size of the saved
model/ (LoRA: adapter and head only, which is also all its checkpoints hold) and the eval metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SIB200 = REPO / "data" / "sib200"
LABELS = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]
LANGS = {"russian": ("rus_Cyrl", "ru"), "polish": ("pol_Latn", "pl")}


def trial_config(ckpt: Path, tokenizer: Path, cache: Path, args: argparse.Namespace) -> dict:
    datasets = {
        lang: {"dataset": "Davlan/sib200", "subset": subset, "train_features": ["text"], "eval_feature": "category",
               "splits": {"train": "train", "eval": "validation", "test": "test"}, "task_type": "classification",
               "classes": 7, "labels": LABELS, "filter_length": False, "language": lang, "espeak": espeak,
               "path": str(SIB200)}
        for lang, (subset, espeak) in LANGS.items()
    }
    from finetune.fileio import read_json5

    defaults = read_json5(REPO / "config" / "default.json")  # a frozen trial holds every key
    return {
        "id": "bench", "model_type": "normal", "task": "topic", "train_languages": list(LANGS),
        "eval_languages": list(LANGS),
        "hyperparameters": {**defaults["hyperparameters"],
                            "learning_rate": args.lr, "batch_size": args.batch_size, "micro_batch_size": None,
                            "epochs": args.epochs, "max_steps": None, "warmup_ratio": 0.1, "scheduler": "linear",
                            "weight_decay": 0.01, "gradient_clipping": 1.0, "seed": 42, "dropout": 0.1},
        "training": {**defaults["training"],
                     "strategy": "single", "precision": "fp32", "compile": False, "eval_interval": None,
                     "checkpoint_interval": None, "metric": "macro_f1", "device": "cpu", "num_workers": 0},
        "slurm": defaults["slurm"],
        "checkpoint": str(ckpt), "tokenizer": str(tokenizer), "datasets": datasets, "data": {"cache_dir": str(cache)},
    }


def pretrained(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    from nanogpt_fixtures import sib200_texts

    from finetune.compute.pretrain import pretrain

    name = f"bench-{args.layers}x{args.dim}h{args.heads}s{args.pretrain_steps}"  # --work keeps it between runs
    r = pretrain(sib200_texts(per_language=701), work / "models", name, vocab_size=2000, n_layer=args.layers,
                 n_head=args.heads, n_embd=args.dim, block_size=128, steps=args.pretrain_steps, batch_size=16,
                 learning_rate=1e-3, seed=0, if_exists="skip")
    return r.ckpt_path, r.tokenizer_prefix


def ours(work: Path, config: dict) -> dict:
    from finetune import layout
    from finetune.compute import trainer

    trial = work / "ours"
    trial.mkdir()
    layout.config_file(trial).write_text(json.dumps(config))
    t0 = time.perf_counter()
    code = trainer.run(trial)
    wall = time.perf_counter() - t0
    assert code == layout.EXIT_FINISHED, layout.state_file(trial).read_text()
    result = layout.read_result(trial)
    evals = [result["metrics"][lang]["eval"] for lang in LANGS]
    return {"samples_per_s": result["timing"]["samples_per_s"], "wall_s": wall,
            "accuracy": sum(m["accuracy"] for m in evals) / len(evals),
            "macro_f1": sum(m["macro_f1"] for m in evals) / len(evals), "steps": result["steps"]}


def separate_process(work: Path, config: dict, name: str, threads: int) -> dict:
    """Run a trial with ``python -m finetune.compute.trainer`` (its own process: its own peak memory)."""
    import shutil
    import subprocess

    from finetune import layout

    trial = work / name
    shutil.rmtree(trial, ignore_errors=True)  # a run again (--work) starts afresh
    trial.mkdir()
    layout.config_file(trial).write_text(json.dumps({**config, "id": name}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SLURM_CPUS_PER_TASK": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "finetune.compute.trainer", str(trial)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = layout.read_result(trial)
    size = sum(f.stat().st_size for f in layout.model_dir(trial).rglob("*")
               if f.is_file() and "tokenizer" not in f.name and f.suffix in (".safetensors", ".json")
               and f.name != "special_tokens_map.json")
    return {"samples_per_s": result["timing"]["samples_per_s"], "wall_s": wall,
            "peak_memory_mb": result["timing"]["peak_memory_mb"], "parameters": result["parameters"],
            "model_mb": size / 2**20, "metrics": result["metrics"], "steps": result["steps"]}


def lora_and_qa(work: Path, config: dict, args: argparse.Namespace) -> dict:
    from task_fixtures import entry, write_squad

    lora = {"lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.05,
            "lora_targets": ["c_attn", "c_proj", "c_fc"]}
    lora_lr = args.lr * args.lora_lr_factor
    wanted = set(args.runs.split(",")) if args.runs else set(RUNS)
    rows = {}
    if "clf-full" in wanted:
        rows["classification, full"] = separate_process(work, config, "clf-full", args.threads)
    if "clf-lora" in wanted:
        rows[f"classification, LoRA r={args.lora_r}"] = separate_process(
            work, {**config, "hyperparameters": {**config["hyperparameters"], **lora, "learning_rate": lora_lr}},
            "clf-lora", args.threads)
    qa = {**config, "task": "qa", "training": {**config["training"], "metric": "f1"},
          "hyperparameters": {**config["hyperparameters"], "max_answer_length": 30, "top_k": 20, "doc_stride": 32,
                              "epochs": args.qa_epochs},
          "datasets": {lang: entry(write_squad(work / "squad" / lang, lang), "question-answering", lang)
                       for lang in LANGS}}
    if "qa-full" in wanted:
        rows["question answering, full"] = separate_process(work, qa, "qa-full", args.threads)
    if "qa-lora" in wanted:
        rows[f"question answering, LoRA r={args.lora_r}"] = separate_process(
            work, {**qa, "hyperparameters": {**qa["hyperparameters"], **lora, "learning_rate": lora_lr}},
            "qa-lora", args.threads)
    return rows


RUNS = ("clf-full", "clf-lora", "qa-full", "qa-lora")


def print_lora_qa(rows: dict, args: argparse.Namespace) -> None:
    print(f"\nthis trainer, fp32 CPU, {args.threads} threads, model {args.layers}x{args.dim}; classification "
          f"{args.epochs:g} epochs lr {args.lr:g}; QA {args.qa_epochs:g} epochs; LoRA lr x{args.lora_lr_factor:g}")
    print(f"{'':34} {'samples/s':>10} {'peak MB':>8} {'trainable':>10} {'total':>9} {'model MB':>9} {'metric':>16}")
    for name, r in rows.items():
        qa = name.startswith("question")
        key = "f1" if qa else "macro_f1"
        value = sum(m["eval"][key] for m in r["metrics"].values()) / len(r["metrics"])
        p = r["parameters"]
        print(f"{name:34} {r['samples_per_s']:10.1f} {r['peak_memory_mb']:8.0f} {p['trainable']:10,d} "
              f"{p['total']:9,d} {r['model_mb']:9.2f} {key + ' ' + format(100 * value, '.1f') + '%':>16}")


def hf_trainer(work: Path, config: dict, *, group_by_length: bool, max_steps: int = -1, name: str = "hf") -> dict:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from finetune.compute.data import prepare_trial_data
    from finetune.compute.hf import NanoGPTForSequenceClassification
    from finetune.compute.metrics import classification_metrics
    from finetune.compute.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    hp = config["hyperparameters"]
    tokenizer = load_tokenizer(config["tokenizer"])
    torch.manual_seed(hp["seed"])
    probe = NanoGPTForSequenceClassification.from_nanogpt(config["checkpoint"], 7)
    data = prepare_trial_data(config, tokenizer, probe.config.block_size)
    torch.manual_seed(hp["seed"])
    model = NanoGPTForSequenceClassification.from_nanogpt(config["checkpoint"], len(data.label_names),
                                                          dropout=hp["dropout"], pad_token_id=tokenizer.pad_token_id)
    keep = ["input_ids", "labels"]
    train = data.train.select_columns(keep)
    out = work / name
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=64,
        learning_rate=hp["learning_rate"], num_train_epochs=hp["epochs"], warmup_steps=hp["warmup_ratio"],
        lr_scheduler_type=hp["scheduler"], weight_decay=hp["weight_decay"], max_grad_norm=hp["gradient_clipping"],
        seed=hp["seed"], data_seed=hp["seed"], eval_strategy="no", save_strategy="no", logging_steps=10_000,
        report_to=[], use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        disable_tqdm=True, max_steps=max_steps,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer, padding="longest"))
    output = trainer.train()
    scores = []
    for lang in LANGS:
        prediction = trainer.predict(data.eval[lang].select_columns(keep))
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        scores.append(classification_metrics(np.asarray(logits), prediction.label_ids))
    wall = time.perf_counter() - t0
    return {"samples_per_s": output.metrics["train_samples_per_second"], "wall_s": wall,
            "accuracy": sum(m["accuracy"] for m in scores) / len(scores),
            "macro_f1": sum(m["macro_f1"] for m in scores) / len(scores), "steps": output.global_step,
            "optim": str(args.optim), "group_by_length": group_by_length}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--lora-qa", action="store_true", help="LoRA vs full fine-tuning and a QA run (no HF Trainer)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-lr-factor", type=float, default=4.0, help="LoRA learning rate = --lr x this")
    p.add_argument("--qa-epochs", type=float, default=3)
    p.add_argument("--runs", metavar="NAME[,NAME...]", help=f"--lora-qa: only these of {', '.join(RUNS)}, or pretrain (only the base "
                   "model); with --work, the table shows every run done there so far: one run per sitting on a "
                   "shared machine")
    p.add_argument("--work", help="keep the pretrained model, trials and numbers in this folder (default: a temporary one)")
    args = p.parse_args()
    if args.runs and set(args.runs.split(",")) - {*RUNS, "pretrain"}:
        p.error(f"--runs: choose from pretrain, {', '.join(RUNS)}")

    import contextlib

    import torch

    torch.set_num_threads(args.threads)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="bench-train-")) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ckpt, tokenizer = pretrained(work, args)
        print(f"pretrained {args.layers} layers x {args.dim} dims in {time.perf_counter() - t0:.0f} s", flush=True)
        config = trial_config(ckpt, tokenizer, work / "cache", args)
        from finetune.compute.data import prepare_trial_data
        from finetune.compute.tokenizer import load_tokenizer

        prepare_trial_data(config, load_tokenizer(str(tokenizer)), 128)  # warm the cache for everyone
        if args.lora_qa:
            rows = lora_and_qa(work, config, args)
            if args.work:  # with the runs of earlier sittings (same sizes: the file name says which)
                done = work / f"lora-qa-{args.layers}x{args.dim}-e{args.epochs}-qa{args.qa_epochs:g}.json"
                rows = {**(json.loads(done.read_text()) if done.is_file() else {}), **rows}
                done.write_text(json.dumps(rows, indent=1))
            print_lora_qa(rows, args)
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
            return
        # The Trainer imports much of transformers/accelerate lazily inside its first steps; a
        # 2-step warm-up run keeps that one-time cost out of its samples/s.
        hf_trainer(work, config, group_by_length=False, max_steps=2, name="warmup")
        rows = {"this trainer": ours(work, config),
                "transformers Trainer": hf_trainer(work, config, group_by_length=False),
                "transformers Trainer, group_by_length": hf_trainer(work, config, group_by_length=True,
                                                                    name="hf-grouped")}
    base = rows["transformers Trainer"]["samples_per_s"]
    print(f"\n{args.epochs:g} epochs, batch {args.batch_size}, lr {args.lr:g}, {args.threads} threads, fp32 CPU, "
          f"model {args.layers}x{args.dim}; eval = mean over Russian and Polish validation (99 rows each)")
    print(f"{'':40} {'samples/s':>10} {'speed-up':>9} {'wall s':>8} {'accuracy':>9} {'macro F1':>9} {'steps':>6}")
    for name, r in rows.items():
        print(f"{name:40} {r['samples_per_s']:10.1f} {r['samples_per_s'] / base:8.2f}x {r['wall_s']:8.1f} "
              f"{100 * r['accuracy']:8.1f}% {100 * r['macro_f1']:8.1f}% {r['steps']:6d}")
    print(f"Trainer optimizer: {rows['transformers Trainer']['optim']}; ours: AdamW fused, length-grouped batches")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
