"""Evaluate a finished trial's model on eval languages without training it again.

Every task type: classification (accuracy, macro P/R/F1), question answering (exact match, F1,
loss) and causal LM (loss, perplexity), full fine-tunes and LoRA adapters alike (the adapter is
loaded on the trial's pretrained checkpoint, unmerged). The eval split is capped at the trial's
``max_eval_samples`` as in training, so a language's numbers equal result.json's.

Training identity and evaluation are separate: a trial's saved model (``model/``, the checkpoint
chosen on the training languages' dev sets) does not depend on which other languages it is
scored on, so adding an eval language only needs this: load the model, score the new languages'
eval and test splits, keep their per-example predictions, and record the metrics in
``trials/<id>/evaluations.json`` (``{language: {"eval": {...}, "test": {...}, "updated": ...}}``),
which ``finetune collect`` reads beside ``result.json``. No optimizer step runs; result.json,
metrics.jsonl and the model are left as they are.

A trial trained with ``training.selection`` "each-language" reports each language at its own
best step, which a saved model cannot reproduce for a new language: it is refused.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, Problem
from finetune.login import evaluations


def run_request(trial_dir: str | os.PathLike[str]) -> int:
    """The evaluation job of a finished trial: score the languages its ``evaluate.json`` asks for
    (written by the array task, finetune.login.batch), then remove the request. Rank 0 only: the
    other ranks of a multi-task job have nothing to do. Exit code 0, or 1 when scoring failed
    (the request stays, so the next submit sends it again)."""
    import sys

    from finetune.fileio import read_json

    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    if rank not in ("0", ""):
        return layout.EXIT_FINISHED
    path = evaluations.request_file(trial_dir)
    request = read_json(path)
    if not isinstance(request, dict) or not isinstance(request.get("languages"), list):
        raise ConfigError(problems=[Problem(str(path), "$.languages", "not an evaluation request")])
    langs = [str(lang) for lang in request["languages"]]
    print(f"== evaluating the saved model of {Path(trial_dir).name} on {', '.join(langs)} (no training)",
          file=sys.stderr)
    threads = request.get("threads")
    scored = evaluate_trial(trial_dir, langs, datasets=request.get("datasets") or {},
                            fingerprints=request.get("fingerprints") or {},
                            threads=threads if isinstance(threads, int) and threads > 0 else None)
    for lang, splits in scored.items():
        shown = ", ".join(f"{split} {name} {value:.4f}" for split, m in splits.items()
                          for name, value in list(m.items())[:2])
        print(f"   {lang}: {shown}", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return layout.EXIT_FINISHED


def read_evaluations(trial_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return evaluations.read_evaluations(trial_dir)


def evaluate_trial(trial_dir: str | os.PathLike[str], languages: list[str] | None = None, *,
                   datasets: dict[str, dict[str, Any]] | None = None, threads: int | None = None,
                   fingerprints: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Score the trial's saved model on ``languages`` (default: its eval languages); returns
    ``{language: {"eval": metrics, "test": metrics}}`` and merges it into evaluations.json.

    ``datasets`` adds (or, for a language the plan now names another dataset for, replaces)
    resolved dataset entries (TRIAL_CONFIG form). Each language's record says what it scored
    (finetune.login.evaluations): the model (``model_stamp``), the dataset entry (``dataset``)
    and its content ``fingerprint`` (from ``fingerprints``, None for a hub dataset).
    """
    import torch

    from finetune.compute.data import trial_task_type
    from finetune.compute.training.settings import settings_from_config
    from finetune.compute.training.task import ClassificationTask
    from finetune.compute.training.tasks import task_for
    from finetune.fileio import atomic_write_json, read_json
    from finetune.login.tasks import task_type

    trial_dir = Path(trial_dir)
    cfg_file = layout.config_file(trial_dir)
    config = read_json(cfg_file)
    if not layout.is_finished(trial_dir):
        raise ConfigError(problems=[Problem(str(layout.result_file(trial_dir)), "", "not finished: nothing to evaluate")])
    if (config.get("training") or {}).get("selection") == "each-language":
        raise ConfigError(problems=[Problem(str(cfg_file), "$.training.selection", "each-language reports every "
                                            "language at its own best step; a saved model cannot add one")])
    model_dir = layout.model_dir(trial_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(problems=[Problem(str(model_dir), "", "no saved model (save_pretrained) here")])
    langs = list(languages or config.get("eval_languages") or [])
    entries = {**(config.get("datasets") or {}), **(datasets or {})}
    unknown = [lang for lang in langs if lang not in entries]
    if unknown:
        raise ConfigError(problems=[Problem(str(cfg_file), "$.datasets", f"no dataset for {', '.join(unknown)}: add it "
                                            "to a config layer (datasets) and pass the layers with --config")])
    if threads:
        torch.set_num_threads(threads)
    eval_config = {**config, "train_languages": [], "eval_languages": langs,
                   "datasets": {lang: entries[lang] for lang in langs}}
    trained_on = trial_task_type(config)
    mismatched = [lang for lang in langs if task_type(entries[lang]) != trained_on]
    if mismatched:
        raise ConfigError(problems=[Problem(str(cfg_file), "$.datasets", f"{', '.join(mismatched)}: not a {trained_on} "
                                            "dataset (the task type the trial was trained on)")])
    settings = settings_from_config(eval_config, 1, file=str(cfg_file))
    task = task_for(eval_config, settings, file=str(cfg_file))
    stamp = evaluations.model_stamp(trial_dir)  # what these scores are of (read before loading)
    model = load_trial_model(trial_dir, config)
    model.eval()
    data = task.load_data(model.config.block_size, train=False)
    if isinstance(task, ClassificationTask):  # score in the model's label ids
        _to_model_labels(task, data, model, file=str(cfg_file))
    logit_dir = Path((config.get("training") or {}).get("logit_directory") or layout.logits_dir(trial_dir))
    device = torch.device("cpu")
    out: dict[str, Any] = {}
    for split, sets in (("eval", data.eval), ("test", data.test)):
        for lang, rows in sets.items():
            predictions, labels = task.predict(model, rows, device=device, autocast=_no_autocast)
            out.setdefault(lang, {})[split] = task.metrics(predictions, labels)
            task.dump(logit_dir, str(config.get("id") or trial_dir.name), lang, split, predictions, labels)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged = read_evaluations(trial_dir)
    for lang, splits in out.items():
        merged[lang] = {**splits, "updated": now, "model": layout.MODEL_DIR, "model_stamp": stamp,
                        "dataset": evaluations.dataset_key(entries[lang]),
                        "fingerprint": (fingerprints or {}).get(lang)}
    atomic_write_json(layout.evaluations_file(trial_dir), merged)
    return out


def load_trial_model(trial_dir: str | os.PathLike[str], config: dict[str, Any]) -> Any:
    """The model a finished trial saved in ``model/``: its head class from the saved config's
    ``architectures`` (classification, question answering, causal LM); a LoRA trial's adapter on
    its pretrained base (not merged, so the outputs are exactly the trained model's; QLoRA's on
    the same 4-bit base)."""
    from finetune.compute import hf

    model_dir = layout.model_dir(trial_dir)
    if (model_dir / "adapter_config.json").is_file():
        from finetune.compute.training.lora import load_adapter_model

        return load_adapter_model(model_dir, config["checkpoint"], as_trained=True)
    saved = hf.NanoGPTConfig.from_pretrained(str(model_dir))
    cls = getattr(hf, (saved.architectures or ["NanoGPTForSequenceClassification"])[0])
    return cls.from_pretrained(str(model_dir))


def _to_model_labels(task: Any, data: Any, model: Any, *, file: str) -> None:
    """Classification: the rows' label ids -> the model's (its id2label), refusing labels it never saw."""
    import numpy as np

    trained = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    missing = [name for name in data.label_names if name not in trained]
    if missing:
        raise ConfigError(problems=[Problem(file, "$.datasets", f"labels the model was not trained on: "
                                            f"{', '.join(map(str, missing))}")])
    to_model = np.array([trained.index(name) for name in data.label_names], dtype=np.int64)
    for rows in (*data.eval.values(), *data.test.values()):
        rows.labels = [int(to_model[y]) for y in rows.labels]
    task.label_names = trained


def _no_autocast():
    from contextlib import nullcontext

    return nullcontext()
