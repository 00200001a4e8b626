"""Evaluate a finished trial's model on eval languages without training it again.

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

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, Problem


def read_evaluations(trial_dir: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(layout.evaluations_file(trial_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def evaluate_trial(trial_dir: str | os.PathLike[str], languages: list[str] | None = None, *,
                   datasets: dict[str, dict[str, Any]] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Score the trial's saved model on ``languages`` (default: its eval languages); returns
    ``{language: {"eval": metrics, "test": metrics}}`` and merges it into evaluations.json.

    ``datasets`` adds resolved dataset entries (TRIAL_CONFIG form) for languages the trial's
    frozen config does not have.
    """
    import numpy as np
    import torch

    from finetune.compute.hf import NanoGPTForSequenceClassification
    from finetune.compute.training.settings import settings_from_config
    from finetune.compute.training.task import rows_of
    from finetune.compute.training.tasks import task_for
    from finetune.fileio import atomic_write_json, read_json

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
    settings = settings_from_config(eval_config, 1, file=str(cfg_file))
    task = task_for(eval_config, settings, file=str(cfg_file))
    model = NanoGPTForSequenceClassification.from_pretrained(str(model_dir))
    model.eval()
    trained = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    from finetune.compute.data import prepare_trial_data

    cache_dir = (config.get("data") or {}).get("cache_dir")
    data = prepare_trial_data(eval_config, task.tokenizer, model.config.block_size, cache_dir=cache_dir)
    missing = [name for name in data.label_names if name not in trained]
    if missing:
        raise ConfigError(problems=[Problem(str(cfg_file), "$.datasets", f"labels the model was not trained on: "
                                            f"{', '.join(map(str, missing))}")])
    to_model = np.array([trained.index(name) for name in data.label_names], dtype=np.int64)
    task.label_names = trained
    logit_dir = Path((config.get("training") or {}).get("logit_directory") or layout.logits_dir(trial_dir))
    device = torch.device("cpu")
    out: dict[str, Any] = {}
    for split, sets in (("eval", data.eval), ("test", data.test)):
        for lang, ds in sets.items():
            rows = rows_of(ds)
            rows.labels = [int(to_model[y]) for y in rows.labels]  # the model's label ids
            logits, labels = task.predict(model, rows, device=device, autocast=_no_autocast)
            out.setdefault(lang, {})[split] = task.metrics(logits, labels)
            task.dump(logit_dir, str(config.get("id") or trial_dir.name), lang, split, logits, labels)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged = read_evaluations(trial_dir)
    for lang, splits in out.items():
        merged[lang] = {**splits, "updated": now, "model": layout.MODEL_DIR}
    atomic_write_json(layout.evaluations_file(trial_dir), merged)
    return out


def _no_autocast():
    from contextlib import nullcontext

    return nullcontext()
