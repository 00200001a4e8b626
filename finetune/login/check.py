"""Is everything a plan needs there? Missing checkpoints, tokenizers and datasets, found cheaply.

``check_plan`` lists every missing checkpoint, tokenizer and dataset of a plan's trials (one
problem per missing thing, naming how many trials need it) from file tests alone: no loading,
no network, no heavy import, so ``submit`` runs it on the login node before anything is queued.
A hub dataset counts as present once ``finetune prefetch`` (``finetune.compute.prefetch``) has
saved a snapshot of it into the cache dir the trials use (``inputs.hub_snapshot``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem
from finetune.login.inputs import (
    CACHE_DIR_PATH,
    cache_dir_message,
    config_file,
    dataset_label,
    hub_snapshot,
    local_folder,
    resolve_cache_dir,
    split_problems,
    tokenizer_problems,
    trial_languages,
    unwritable_cache_dir,
)

TrialSource = str | os.PathLike[str] | dict[str, Any]
PLAN_IN_MEMORY = "plan"  # the file of a trial from a Plan that is not written yet


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
    name = config_file(config)
    return name if name != "trial config" else f"trial {config.get('id', '?')}"


class _Missing:
    """One problem per missing thing, however many trials need it."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[str, list[str]]] = {}

    def add(self, file: str, path: str, message: str, trial_id: str, more: Sequence[str] = ()) -> None:
        _, ids = self.items.setdefault((path, message), (file, []))
        ids.append(trial_id)
        ids.extend(more)

    def problems(self) -> list[Problem]:
        out = []
        for (path, message), (file, ids) in self.items.items():
            n = len(ids)
            needed = f"needed by trial {ids[0]}" if n == 1 else f"needed by {n} trials, e.g. {ids[0]}"
            out.append(Problem(file, path, f"{message} ({needed})"))
        return out


def _origin(file: str, trial: dict[str, Any], path: str, layer_path: str) -> tuple[str, str]:
    """``(file, path)`` for a problem: the config layer that set the value (from the trial's
    provenance), so the fix goes where the typo is; the trial config file (or plan.json) when the
    value came from ``--set`` or has no provenance."""
    provenance = trial.get("provenance") or {}
    source = provenance.get(layer_path) or next(
        (v for k, v in provenance.items() if k.startswith(layer_path + ".")), None
    )
    if file != PLAN_IN_MEMORY and (not source or source == "--set"):
        return file, path
    return (source, layer_path) if source else (file, path)


def check_trials(configs: Sequence[tuple[str, dict[str, Any]]], *, cache_dir: str | os.PathLike[str] | None = None,
                 stands_for: Sequence[Sequence[str]] | None = None) -> list[Problem]:
    """Missing checkpoints, tokenizers and datasets of ``(file, TRIAL_CONFIG)`` pairs, and cache
    folders (``data.cache_dir``) that cannot be written.

    ``stands_for[i]``: the trial ids that ``configs[i]`` represents (trials with the same
    inputs, checked once); the problems count them all."""
    missing = _Missing()
    seen_ckpt: dict[str, bool] = {}
    seen_tok: dict[str, list[Problem]] = {}
    seen_data: dict[tuple, list[tuple[str, str]]] = {}  # -> [(json path, message)]
    caches: dict[str | None, Path] = {}
    cache_problems: dict[str | None, str | None] = {}  # why the cache folder cannot be written
    for n, (file, trial) in enumerate(configs):
        tid = str(trial.get("id", "?"))
        more = [t for t in stands_for[n] if t != tid] if stands_for is not None else []
        mt = trial.get("model_type", "normal")
        ckpt = trial.get("checkpoint")
        if ckpt not in seen_ckpt:
            seen_ckpt[ckpt] = bool(ckpt) and Path(ckpt).is_file()
        if not seen_ckpt[ckpt]:
            ck_file, ck_path = _origin(file, trial, "$.checkpoint", f"$.checkpoints.{mt}")
            missing.add(ck_file, ck_path, f"checkpoint not found: {ckpt}" if ckpt else "no checkpoint set", tid, more)
        tok = trial.get("tokenizer")
        if tok not in seen_tok:
            seen_tok[tok] = tokenizer_problems(tok) if tok else [Problem("", "", "no tokenizer set")]
        if seen_tok[tok]:
            tk_file, tk_path = _origin(file, trial, "$.tokenizer", f"$.tokenizers.{mt}_prefix")
            for p in seen_tok[tok]:
                missing.add(tk_file, tk_path, p.message, tid, more)
        entries = trial.get("datasets") or {}
        configured = ((trial.get("data") or {}).get("cache_dir")) if cache_dir is None else str(cache_dir)
        if configured not in caches:
            caches[configured] = resolve_cache_dir(trial, cache_dir)
            reason = unwritable_cache_dir(caches[configured])
            cache_problems[configured] = (cache_dir_message(caches[configured], reason, configured is not None)
                                          if reason else None)
        cache = caches[configured]
        if cache_problems[configured]:  # every dataset of the trial goes through it (tokens, IPA, maps)
            c_file, c_path = (_origin(file, trial, CACHE_DIR_PATH, CACHE_DIR_PATH) if cache_dir is None
                              else ("--cache-dir", ""))
            missing.add(c_file, c_path, cache_problems[configured], tid, more)
        train = trial.get("train_languages") or []
        evals = trial.get("eval_languages") or []
        for lang in trial_languages(trial):
            where = f"$.datasets.{lang}"
            entry = entries.get(lang)
            if entry is None:
                missing.add(file, where, f"no dataset for language {lang!r}", tid, more)
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
                    missing.add(d_file, path, message, tid, more)
    return missing.problems()


def check_plan(plan_dir_or_trial_configs: TrialSource | Iterable[TrialSource] | Any, *,
               cache_dir: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Every missing checkpoint, tokenizer and dataset of a plan (dir, Plan, or trial configs)."""
    return check_trials(trial_configs(plan_dir_or_trial_configs), cache_dir=cache_dir)
