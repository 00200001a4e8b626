"""Fetch what a plan needs before it runs (on the submit host, where there is a network).

The check itself (what is missing, without loading anything) is ``finetune.login.check``, which
the login node runs before a submission. ``prefetch`` materialises what the trials will read on compute nodes that are often offline:
datasets (hub downloads into the cache dir), IPA transcriptions and token ids (the cached maps
of ``finetune.compute.data``), then reports what is still missing.

A hub dataset counts as present once ``prefetch`` has saved a snapshot of it into the cache dir
the trials use (``data.cache_dir``): ``<cache>/hub/<name>-<subset>-<key>/`` (``save_to_disk``),
which the trials then read without the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError, Problem
from finetune.login.check import TrialSource, check_trials, trial_configs


@dataclass
class PrefetchReport:
    trials: int = 0
    datasets: list[str] = field(default_factory=list)  # datasets loaded (labels as errors name them)
    transcribed: list[str] = field(default_factory=list)  # "<dataset> (<espeak>)" with IPA columns ready
    tokenized: list[str] = field(default_factory=list)  # "<model_type>: <languages> (block N)"
    problems: list[Problem] = field(default_factory=list)  # what is still missing

    @property
    def ok(self) -> bool:
        return not self.problems


# -- fetching --------------------------------------------------------------------------------


def prefetch(
    source: TrialSource | Iterable[TrialSource] | Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tokenize: bool = True,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> PrefetchReport:
    """Load every dataset, make every IPA transcription and token id a plan needs, into the cache.

    ``workers`` > 1 transcribes in that many processes.
    Never raises for a missing input: everything still missing is in ``report.problems``.
    """
    from finetune.compute.data import (
        DataError,
        add_phoneme_columns,
        dataset_label,
        features_of,
        load_splits,
        resolve_cache_dir,
        trial_languages,
        writable_cache_dir,
    )
    say = log or (lambda _line: None)
    configs = trial_configs(source)
    report = PrefetchReport(trials=len(configs))
    load_problems: list[Problem] = []

    # 1. datasets (and IPA columns), once per distinct entry and cache dir
    wanted: dict[tuple, dict[str, Any]] = {}
    unwritable: dict[Path, bool] = {}  # check_trials below names data.cache_dir; load nothing into it
    for file, trial in configs:
        cache = resolve_cache_dir(trial, cache_dir)
        if cache not in unwritable:
            try:
                writable_cache_dir(cache, file)
                unwritable[cache] = False
            except DataError:
                unwritable[cache] = True
        if unwritable[cache]:
            continue
        for lang in trial_languages(trial):
            entry = (trial.get("datasets") or {}).get(lang)
            if entry is None:
                continue
            key = (repr(sorted(entry.items(), key=lambda kv: kv[0])), str(cache))
            w = wanted.setdefault(key, {"entry": entry, "cache": cache, "ipa": False, "lang": lang})
            w["ipa"] = w["ipa"] or trial.get("model_type") == "ipa"
    for w in wanted.values():
        entry, cache, label = w["entry"], w["cache"], dataset_label(w["entry"])
        say(f"dataset {label} ...")
        try:
            splits = load_splits(entry, ("train", "eval", "test"), cache_dir=cache, where=f"$.datasets.{w['lang']}",
                                 save_snapshot=True)
        except DataError as e:
            load_problems += e.problems
            continue
        report.datasets.append(label)
        if w["ipa"]:
            espeak = entry.get("espeak")
            feats = [f for f in features_of(entry) if all(f in d.column_names for d in splits.values())]
            if not espeak:
                load_problems.append(Problem(label, f"$.datasets.{w['lang']}.espeak", "no espeak code: cannot make IPA columns"))
                continue
            say(f"IPA {label} ({espeak}) ...")
            for d in splits.values():
                add_phoneme_columns(d, feats, espeak, cache_dir=cache, num_proc=workers)
            report.transcribed.append(f"{label} ({espeak})")

    report.problems = check_trials(configs, cache_dir=cache_dir)

    # 2. token ids, once per (tokenizer, checkpoint, model type, languages) whose inputs exist
    if tokenize:
        _tokenize_all(configs, report, cache_dir=cache_dir, say=say)
    report.problems = sorted(set(report.problems) | set(load_problems))
    return report


def _tokenize_all(configs, report: PrefetchReport, *, cache_dir, say) -> None:
    from finetune.compute.model import load_checkpoint
    from finetune.compute.task_data import prepare_task_data
    from finetune.compute.tokenizer import load_tokenizer, tokenizer_problems
    from finetune.login.inputs import resolve_cache_dir, unwritable_cache_dir

    tokenizers: dict[str, Any] = {}
    block_sizes: dict[str, int] = {}
    done: set[tuple] = set()
    for file, trial in configs:
        ckpt, tok = trial.get("checkpoint"), trial.get("tokenizer")
        if not ckpt or not tok or not Path(ckpt).is_file() or tokenizer_problems(tok) \
                or unwritable_cache_dir(resolve_cache_dir(trial, cache_dir)):
            continue  # already reported by check_trials
        key = (ckpt, tok, trial.get("model_type"), tuple(trial.get("train_languages", [])),
               tuple(trial.get("eval_languages", [])), repr(trial.get("datasets")), repr(trial.get("data")))
        if key in done:
            continue
        done.add(key)
        try:
            if tok not in tokenizers:
                tokenizers[tok] = load_tokenizer(tok)
            if ckpt not in block_sizes:
                block_sizes[ckpt] = int(load_checkpoint(ckpt)[0].block_size)
            langs = sorted(set(trial.get("train_languages", [])) | set(trial.get("eval_languages", [])))
            desc = f"{trial.get('model_type')}: {', '.join(langs)} (block {block_sizes[ckpt]})"
            say(f"tokenize {desc} ...")
            prepare_task_data(trial, tokenizers[tok], block_sizes[ckpt], cache_dir=cache_dir, source=file)
            report.tokenized.append(desc)
        except FinetuneError as e:
            report.problems += e.problems
