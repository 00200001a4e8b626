"""What a plan needs before it runs: check it (cheap, no network) and fetch it (on the submit host).

``check_plan`` lists every missing checkpoint, tokenizer and dataset of a plan's trials (one
problem per missing thing, naming how many trials need it), without loading anything heavy.
``prefetch`` materialises what the trials will read on compute nodes that are often offline:
datasets (hub downloads into the cache dir), IPA transcriptions and token ids (the cached maps
of ``finetune.compute.data``), then reports what is still missing.

A hub dataset counts as present once ``prefetch`` has saved a snapshot of it into the cache dir
the trials use (``data.cache_dir``): ``<cache>/hub/<name>-<subset>-<key>/`` (``save_to_disk``),
which the trials then read without the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import FinetuneError, Problem

TrialSource = str | os.PathLike[str] | dict[str, Any]
PLAN_IN_MEMORY = "plan"  # the file of a trial from a Plan that is not written yet


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


# -- trial configs ---------------------------------------------------------------------------


def trial_configs(source: TrialSource | Iterable[TrialSource] | Any) -> list[tuple[str, dict[str, Any]]]:
    """``(file, TRIAL_CONFIG)`` for a plan dir, a ``Plan``, trial config files/dicts, or a list of them.

    A plan dir's materialised trials are read from ``trials/<id>/config.json`` (frozen); the
    others come from ``plan.json`` without writing anything.
    """
    from finetune.fileio import read_json

    if hasattr(source, "trials") and hasattr(source, "trial_config"):  # a finetune.login.plan.Plan
        return [(_plan_file(source), source.trial_config(t)) for t in source.trials]
    if isinstance(source, dict):
        return [(_config_file(source), source)]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _plan_dir_configs(path)
        return [(str(path), read_json(path))]
    out: list[tuple[str, dict[str, Any]]] = []
    for item in source:
        out += trial_configs(item)
    return out


def _plan_dir_configs(plan_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    from finetune.fileio import read_json
    from finetune.login.plan import load_plan

    plan = load_plan(plan_dir)
    out = []
    for t in plan.trials:
        frozen = layout.config_file(layout.trial_dir(plan_dir, t.id))
        if frozen.is_file():
            out.append((str(frozen), read_json(frozen)))
        else:
            out.append((str(layout.plan_file(plan_dir)), plan.trial_config(t)))
    return out


def _plan_file(plan: Any) -> str:
    return str(layout.plan_file(plan.out_dir)) if getattr(plan, "out_dir", None) else PLAN_IN_MEMORY


def _config_file(config: dict[str, Any]) -> str:
    from finetune.compute.data import config_file

    name = config_file(config)
    return name if name != "trial config" else f"trial {config.get('id', '?')}"


# -- checking --------------------------------------------------------------------------------


class _Missing:
    """One problem per missing thing, however many trials need it."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[str, list[str]]] = {}

    def add(self, file: str, path: str, message: str, trial_id: str) -> None:
        _, ids = self.items.setdefault((path, message), (file, []))
        ids.append(trial_id)

    def problems(self) -> list[Problem]:
        out = []
        for (path, message), (file, ids) in self.items.items():
            n = len(ids)
            needed = f"needed by trial {ids[0]}" if n == 1 else f"needed by {n} trials, e.g. {ids[0]}"
            out.append(Problem(file, path, f"{message} ({needed})"))
        return out


def _origin(file: str, trial: dict[str, Any], path: str, layer_path: str) -> tuple[str, str]:
    """``(file, path)`` for a problem: the trial config file, or, for a plan not yet written, the
    config layer that set the value (from the trial's provenance)."""
    if file != PLAN_IN_MEMORY:
        return file, path
    provenance = trial.get("provenance") or {}
    source = provenance.get(layer_path) or next(
        (v for k, v in provenance.items() if k.startswith(layer_path + ".")), None
    )
    return (source, layer_path) if source else (file, path)


def check_trials(configs: Sequence[tuple[str, dict[str, Any]]], *, cache_dir: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Missing checkpoints, tokenizers and datasets of ``(file, TRIAL_CONFIG)`` pairs."""
    from finetune.compute.data import (
        dataset_label,
        hub_snapshot,
        local_folder,
        resolve_cache_dir,
        split_problems,
        trial_languages,
    )
    from finetune.compute.tokenizer import tokenizer_problems

    missing = _Missing()
    seen_ckpt: dict[str, bool] = {}
    seen_tok: dict[str, list[Problem]] = {}
    seen_data: dict[tuple, list[tuple[str, str]]] = {}  # -> [(json path, message)]
    caches: dict[str | None, Path] = {}
    for file, trial in configs:
        tid = str(trial.get("id", "?"))
        mt = trial.get("model_type", "normal")
        ckpt = trial.get("checkpoint")
        if ckpt not in seen_ckpt:
            seen_ckpt[ckpt] = bool(ckpt) and Path(ckpt).is_file()
        if not seen_ckpt[ckpt]:
            ck_file, ck_path = _origin(file, trial, "$.checkpoint", f"$.checkpoints.{mt}")
            missing.add(ck_file, ck_path, f"checkpoint not found: {ckpt}" if ckpt else "no checkpoint set", tid)
        tok = trial.get("tokenizer")
        if tok not in seen_tok:
            seen_tok[tok] = tokenizer_problems(tok) if tok else [Problem("", "", "no tokenizer set")]
        if seen_tok[tok]:
            tk_file, tk_path = _origin(file, trial, "$.tokenizer", f"$.tokenizers.{mt}_prefix")
            for p in seen_tok[tok]:
                missing.add(tk_file, tk_path, p.message, tid)
        entries = trial.get("datasets") or {}
        configured = ((trial.get("data") or {}).get("cache_dir")) if cache_dir is None else str(cache_dir)
        if configured not in caches:
            caches[configured] = resolve_cache_dir(trial, cache_dir)
        cache = caches[configured]
        train = trial.get("train_languages") or []
        evals = trial.get("eval_languages") or []
        for lang in trial_languages(trial):
            where = f"$.datasets.{lang}"
            entry = entries.get(lang)
            if entry is None:
                missing.add(file, where, f"no dataset for language {lang!r}", tid)
                continue
            roles = (("train",) if lang in train else ()) + (("eval", "test") if lang in evals else ())
            splits = entry.get("splits") or {}
            key = (entry.get("dataset"), entry.get("subset"), entry.get("path"), tuple(sorted(splits.items())),
                   roles, configured, lang)
            if key not in seen_data:
                if local_folder(entry) is not None:
                    seen_data[key] = [(p.path, f"{p.file}: {p.message}") for p in split_problems(entry, roles, where=where)]
                elif not (hub_snapshot(entry, cache) / "dataset_dict.json").is_file():
                    seen_data[key] = [(where, f"hub dataset {dataset_label(entry)} is not in the cache {cache}: "
                                              "run `finetune prefetch` where there is a network")]
                else:
                    seen_data[key] = []
            if seen_data[key]:
                d_file, _ = _origin(file, trial, where, where)
                for path, message in seen_data[key]:
                    missing.add(d_file, path, message, tid)
    return missing.problems()


def check_plan(plan_dir_or_trial_configs: TrialSource | Iterable[TrialSource] | Any, *,
               cache_dir: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Every missing checkpoint, tokenizer and dataset of a plan (dir, Plan, or trial configs)."""
    return check_trials(trial_configs(plan_dir_or_trial_configs), cache_dir=cache_dir)


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
    )
    say = log or (lambda _line: None)
    configs = trial_configs(source)
    report = PrefetchReport(trials=len(configs))
    load_problems: list[Problem] = []

    # 1. datasets (and IPA columns), once per distinct entry and cache dir
    wanted: dict[tuple, dict[str, Any]] = {}
    for _file, trial in configs:
        cache = resolve_cache_dir(trial, cache_dir)
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
    from finetune.compute.data import prepare_trial_data
    from finetune.compute.model import load_checkpoint
    from finetune.compute.tokenizer import load_tokenizer, tokenizer_problems

    tokenizers: dict[str, Any] = {}
    block_sizes: dict[str, int] = {}
    done: set[tuple] = set()
    for file, trial in configs:
        ckpt, tok = trial.get("checkpoint"), trial.get("tokenizer")
        if not ckpt or not tok or not Path(ckpt).is_file() or tokenizer_problems(tok):
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
            prepare_trial_data(trial, tokenizers[tok], block_sizes[ckpt], cache_dir=cache_dir, source=file)
            report.tokenized.append(desc)
        except FinetuneError as e:
            report.problems += e.problems
