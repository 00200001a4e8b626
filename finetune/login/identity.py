"""A trial's content id: what it hashes, and how (pure; no files).

``id`` = first 12 hex digits of sha256 over the canonical JSON (sorted keys, no spaces,
integral floats as ints) of::

    {"hyperparameters": {...all, resolved...},
     "trial": {"id_version", "task", "model_type", "train_languages" (sorted),
               "selection_languages" (sorted: the eval languages whose dev sets choose the saved
                                      checkpoint, ``selection_languages()``),
               "datasets": {language: {"name", "entry"}} for the train and selection languages,
               "training": training minus OPERATIONAL_TRAINING_KEYS,
               "checkpoint": [checkpoints.prefix, checkpoints[model_type]] as written,
               "tokenizer": [tokenizers.prefix, tokenizers[model_type + "_prefix"]] as written,
               "inputs": {"checkpoint", "tokenizer", "datasets": {language: ...}}: content
                         fingerprints (finetune.login.fingerprint) of the files the trial reads}}

The id is the identity of the *trained model*: the eval languages are not in it (only those that
choose the checkpoint), so adding an eval language to the layers plans the same trials with one
more eval language, and submit evaluates the trained models on it instead of training again
(finetune.login.evaluations). With ``training.selection`` "train-languages" (the default) and a
training language among the eval languages, that is every eval language but the training ones.

``lineage`` is the same hash without "inputs": a trial whose files changed (pretrained again
under the same name) gets a new id with the old lineage, and ``write_plan`` marks the old trial
``superseded_by`` the new one (finetune.login.supersede).

Not hashed: file names, comments, key order, ``slurm``, ``wandb``, ``data`` (mirrors, cache),
operational training keys. So moving to another cluster or switching between the local copy
and the hub keeps the ids; changing anything that can change a result gives a new id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

ID_VERSION = 3  # 2: ids cover the input files' fingerprints; 3: not the eval languages (only the selection ones)
ID_LENGTH = 12
OPERATIONAL_TRAINING_KEYS = frozenset(
    {"strategy", "device", "num_workers", "checkpoint_interval", "compile", "count_sleep_s", "eval_batch_size",
     "log_interval", "dump_logits", "logit_directory"}
)


def _normal(value: Any) -> Any:
    """Integral floats as ints, recursively, so 3 and 3.0 hash alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_id(hyper_canonical: str, trial_canonical: str) -> str:
    """The id from the two parts' canonical JSON, made once (a big grid joins texts, not dicts)."""
    text = '{"hyperparameters":' + hyper_canonical + ',"trial":' + trial_canonical + "}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def trial_id(identity: dict[str, Any], hyperparameters: dict[str, Any]) -> str:
    """The id of one trial (identity = the "trial" part described in the module docstring)."""
    return content_id(canonical_json(hyperparameters), canonical_json(identity))


def trial_inputs(inputs: dict[str, Any], model_type: str, languages: list[str]) -> dict[str, Any]:
    """The fingerprints one trial's id covers."""
    return {"checkpoint": inputs["checkpoints"][model_type], "tokenizer": inputs["tokenizers"][model_type],
            "datasets": {lang: inputs["datasets"][lang] for lang in languages if lang in inputs["datasets"]}}


def selection_languages(training: dict[str, Any], train: Sequence[str], evals: Sequence[str]) -> list[str]:
    """The eval languages whose dev sets choose the saved checkpoint (as the trainer's
    ``selection_languages``): with "train-languages" the training languages that are evaluated,
    or every eval language when none is; with "each-language" every eval language. Sorted."""
    if (training or {}).get("selection", "train-languages") == "train-languages":
        own = sorted(set(train) & set(evals))
        if own:
            return own
    return sorted(set(evals))


def identity_languages(cfg: dict[str, Any], train: Sequence[str], evals: Sequence[str]) -> list[str]:
    """The languages whose datasets (and their fingerprints) a trial's id covers."""
    return sorted(set(train) | set(selection_languages(cfg["training"], train, evals)))


def trial_identity(cfg: dict[str, Any], database, model_type: str, train: list[str], evals: list[str]) -> dict[str, Any]:
    """The "trial" part of a trial's id (see the module docstring), hyperparameters aside."""
    task, datasets, ck, tk = cfg["task"], cfg["datasets"], cfg["checkpoints"], cfg["tokenizers"]
    langs = identity_languages(cfg, train, evals)
    return {
        "id_version": ID_VERSION, "task": task, "model_type": model_type,
        "train_languages": train, "selection_languages": selection_languages(cfg["training"], train, evals),
        "datasets": {lang: {"name": datasets[lang], "entry": database.entry(lang, task, datasets[lang])}
                     for lang in langs},
        "training": {k: v for k, v in cfg["training"].items() if k not in OPERATIONAL_TRAINING_KEYS},
        "checkpoint": [ck["prefix"], ck[model_type]],
        "tokenizer": [tk["prefix"], tk[f"{model_type}_prefix"]],
    }
