"""Plans: ``build_plan`` (pure) and the plan directory on disk.

``build_plan`` is pure: config layers, database and grid in; every problem checked at once
(finetune.login.plan_checks); a ``Plan`` of fully resolved trials out (expanded by
finetune.login.expand, with content ids made as finetune.login.identity says).
``write_plan`` / ``load_plan`` / ``materialize_trial`` are the only functions here that touch
files; ``write_plan`` marks superseded trials and, with ``--replace``, drops trials that never
ran or failed (finetune.login.supersede).

plan.json holds the shared resolved config once per group (one ``build_plan`` call), the
hyperparameters trials share once per set and one small line per trial, so a 100k-trial plan
stays one file of about 12 MB (its format, the ``Trial`` record and its validation:
``finetune.login.plan_file``); ``materialize_trial`` writes the frozen
``trials/<id>/config.json`` when something needs it before the array task does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, FinetuneError, Problem, UsageError
from finetune.layout import PLAN_FILE, config_file, plan_file, plan_lock_file, trial_dir
from finetune.login import plan_checks as checks
from finetune.login.expand import expand_points, expand_trials, lora_swept, search_spec, without_lora
from finetune.login.identity import ID_LENGTH, ID_VERSION, canonical_json
from finetune.login.layers import Layered, join_path, load_config, resolved_paths
from finetune.login.plan_checks import MODEL_TYPES
from finetune.login.plan_file import PLAN_VERSION, Trial
from finetune.login.supersede import drop_replaceable, supersede


@dataclass
class Plan:
    trials: list[Trial]
    groups: dict[str, dict[str, Any]]  # group id -> shared resolved config, provenance, datasets, paths
    sources: list[dict[str, Any]]  # one per build: files, overrides, grid config, model types, matrix
    version: int = PLAN_VERSION
    warnings: list[Problem] = field(default_factory=list)  # planned anyway: ignored legacy keys and the like
    out_dir: Path | None = None  # set by load_plan / write_plan
    search: dict[str, Any] | None = None  # a search (grid config with a search block): SPEC, no trials yet
    _index: dict[str, Trial] | None = field(default=None, repr=False)

    def trial(self, trial_id: str) -> Trial:
        if self._index is None or len(self._index) != len(self.trials):
            self._index = {t.id: t for t in self.trials}
        try:
            return self._index[trial_id]
        except KeyError:
            where = str(self.out_dir / PLAN_FILE) if self.out_dir else "plan"
            raise ConfigError(problems=[Problem(where, "$.trials", f"no trial with id {trial_id!r}")]) from None

    def counts(self) -> dict[str, int]:
        """Trials per model type, in plan order."""
        return dict(Counter(t.model_type for t in self.trials))

    def trial_config(self, trial: Trial | str) -> dict[str, Any]:
        """TRIAL_CONFIG (see ARCHITECTURE.md): the frozen, resolved trial."""
        if isinstance(trial, str):
            trial = self.trial(trial)
        g = self.groups.get(trial.group)
        if g is None:
            where = str(self.out_dir / PLAN_FILE) if self.out_dir else "plan"
            raise ConfigError(problems=[Problem(where, "$.groups", f"no group {trial.group!r} (trial {trial.id})")])
        cfg = g["config"]
        provenance = dict(g["provenance"])
        for name in trial.grid_point:
            provenance[join_path("$.hyperparameters", name)] = g["grid_config"]
        languages = sorted(set(trial.train_languages) | set(trial.eval_languages))
        prints = (g.get("inputs") or {}).get("datasets") or {}
        return {
            "id": trial.id,
            "model_type": trial.model_type,
            "task": cfg["task"],
            "train_languages": list(trial.train_languages),
            "eval_languages": list(trial.eval_languages),
            "hyperparameters": dict(trial.hyperparameters),
            "training": cfg["training"],
            "slurm": cfg.get("slurm", {}),
            "wandb": cfg.get("wandb", {}),
            **({"tensorboard": cfg["tensorboard"]} if cfg.get("tensorboard") else {}),  # only when on
            "data": cfg.get("data", {}),
            "checkpoint": g["checkpoints"][trial.model_type],
            "tokenizer": g["tokenizers"][trial.model_type],
            "datasets": {lang: g["datasets"][lang] for lang in languages},
            "dataset_fingerprints": {lang: prints.get(lang) for lang in languages},
            "provenance": provenance,
            "grid_point": dict(trial.grid_point),
            "sources": g["sources"],
            "plan_dir": str(self.out_dir.resolve()) if self.out_dir else None,
        }


@dataclass
class WriteReport:
    path: Path  # plan.json
    added: list[str]  # new trial ids
    updated: list[str]  # planned before, now with this build's shared config (operational settings differ)
    kept: list[str]  # planned before with the same shared config
    total: int  # trials in plan.json after the write
    superseded: list[str] = field(default_factory=list)  # planned before; replaced now (input files changed)
    dropped: list[str] = field(default_factory=list)  # --replace: never ran or failed, not planned any more


# ---------------------------------------------------------------------------------------------
# building


def build_plan(
    files: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    grid_config: str | None = None,
    model_types: Sequence[str] = MODEL_TYPES,
    matrix: bool = False,
    default: str | None = None,
) -> Plan:
    """Validate everything, then expand into trials. Raises ConfigError listing every problem."""
    from finetune.login.database import load_database
    from finetune.login.grid import grid_problems, language_sets
    from finetune.login.matrix import language_matrix
    from finetune.login.schema import hyperparameter_names, validate_config

    problems: list[Problem] = []
    types, type_problems = checks.check_model_types(model_types)
    problems += type_problems
    if not files:
        problems.append(Problem("CONFIG", "", "give at least one config file"))
    layered: Layered | None = None
    try:
        layered = load_config(files, overrides, default=default)
    except FinetuneError as e:
        problems += e.problems
    grid, grid_load_problems = checks.load_grid(grid_config)
    problems += grid_load_problems
    if layered is None:
        raise ConfigError(problems=problems)

    config_problems = validate_config(layered)
    problems += config_problems
    cfg = layered.value
    src = layered.source_of
    paths = resolved_paths(layered)

    database = None
    if isinstance(cfg.get("database"), str):
        db_path = paths["$.database"]
        shown = os.path.relpath(db_path) if not os.path.isabs(cfg["database"]) else db_path
        if not os.path.isfile(db_path):
            problems.append(Problem(src("$.database"), "$.database", f"database file not found: {shown}"))
        else:
            try:
                database = load_database(db_path, name=shown)
            except FinetuneError as e:
                problems += e.problems

    task = cfg.get("task")
    datasets = cfg.get("datasets") if isinstance(cfg.get("datasets"), dict) else {}
    languages = list(datasets)
    if database is not None and isinstance(task, str):
        problems += checks.dataset_problems(database, task, datasets, src)

    for mt in [m for m in types if m in MODEL_TYPES]:
        for section, key in (("checkpoints", mt), ("tokenizers", f"{mt}_prefix")):
            sec = cfg.get(section)
            if isinstance(sec, dict) and sec.get(key) is None:
                path = f"$.{section}.{key}"
                problems.append(Problem(src(path), path, f"not set, but model type {mt!r} is planned "
                                        "(set it in the language-pair layer or drop the model type)"))

    if grid is not None:
        problems += grid_problems(grid, hyperparameter_names(), None if matrix else languages)
    if grid is not None and grid.search is not None and not config_problems:
        from finetune.login.search import config_problems as search_config_problems

        problems += search_config_problems(grid.search, cfg, grid.source, config_source=src, matrix=matrix,
                                           model_types=types)
    unused: list[str] = []
    warnings = list(layered.warnings)
    if database is not None and grid is not None and isinstance(task, str) and not problems:
        unused, found, warned = checks.unused_hyperparameters(layered, database, task, datasets, grid)
        problems += found
        warnings += warned
        if "ipa" in types:
            warnings += checks.espeak_warnings(database, datasets, src)

    if database is not None and grid is not None and isinstance(task, str) and not problems:
        checks.task_default_metric(layered, database, task, datasets)
        problems += checks.task_problems(layered, database, task, datasets, grid)

    if grid is not None and not problems:
        if matrix:
            lang_sets = language_matrix(languages)
        else:
            lang_sets = [language_sets(grid, languages)]
        problems += checks.class_problems(lang_sets, datasets, database, task, layered)
    if problems:
        raise ConfigError(problems=problems)
    assert grid is not None and database is not None

    group, group_id = _group(layered, paths, grid, database, types, overrides, grid_config)
    inputs = group["inputs"]
    hyper = {k: v for k, v in {**cfg["hyperparameters"], **grid.fixed}.items() if k not in unused}
    if not lora_swept(grid) and not hyper.get("lora_r"):
        hyper = without_lora(hyper)  # full fine-tuning: the adapter settings do not change the trial
    source = {"group": group_id, "files": [os.path.abspath(s) for s in layered.sources if s != "--set"],
              "overrides": list(overrides),
              "grid_config": os.path.abspath(grid_config) if grid_config is not None else None,
              "model_types": types, "matrix": matrix}
    if grid.search is not None:
        return Plan(trials=[], groups={group_id: group}, sources=[source],
                    search=search_spec(cfg, database, types, lang_sets[0], hyper, grid, group_id, inputs),
                    warnings=warnings)
    points = expand_points(grid, hyper)
    batch_problems = checks.batch_problems(points, hyper, grid, src)
    if batch_problems:
        raise ConfigError(problems=batch_problems)
    trials = expand_trials(cfg, database, types, lang_sets, points, hyper, grid, group_id, inputs)
    if not trials:
        raise ConfigError(problems=[Problem(grid.source, "$.exclude", "the exclude rules drop every trial")])
    return Plan(trials=trials, groups={group_id: group}, sources=[source], warnings=warnings)


def _group(layered: Layered, paths: dict[str, str | None], grid, database, types: list[str],
           overrides: Sequence[str], grid_config: str | None) -> tuple[dict[str, Any], str]:
    """The part every trial of one build shares: resolved config, provenance, dataset entries,
    checkpoint and tokenizer paths; and its id (a hash of all of it)."""
    cfg, src = layered.value, layered.source_of
    task, datasets = cfg["task"], cfg["datasets"]
    provenance = {p: src(p) for p in _leaf_paths({k: v for k, v in cfg.items() if k not in ("$schema", "$comment")})}
    for name in grid.fixed:
        provenance[join_path("$.hyperparameters", name)] = grid.source
    mirrors = {k: paths.get(join_path("$.data.mirrors", k)) for k in (cfg.get("data") or {}).get("mirrors") or {}}
    group_datasets = {}
    for lang, name in datasets.items():
        entry = database.entry(lang, task, name)
        group_datasets[lang] = {**entry, "name": name, "language": lang, "espeak": database.espeak(lang),
                                "path": database.local_folder(entry, mirrors)}
    ck, tk = cfg["checkpoints"], cfg["tokenizers"]
    ck_prefix, tk_prefix = paths["$.checkpoints.prefix"], paths["$.tokenizers.prefix"]
    group = {
        "id_version": ID_VERSION,  # how its trials' ids were made (write_plan supersedes older ones)
        "sources": list(layered.sources),
        "overrides": list(overrides),
        "grid_config": grid.source if grid_config is not None else None,
        "config": _resolved_config(layered),
        "provenance": provenance,
        "datasets": group_datasets,
        "checkpoints": {mt: os.path.join(ck_prefix, ck[mt], "ckpt.pt") for mt in types},
        "tokenizers": {mt: os.path.join(tk_prefix, tk[f"{mt}_prefix"]) for mt in types},
    }
    group["inputs"] = _input_fingerprints(group, mirrors)
    return group, hashlib.sha256(canonical_json(group).encode()).hexdigest()[:ID_LENGTH]


def _input_fingerprints(group: dict[str, Any], mirrors: dict[str, str | None]) -> dict[str, Any]:
    """Content fingerprints of every file a trial reads (finetune.login.fingerprint): checkpoint and
    tokenizer per model type, and the local datasets (not hub mirrors: switching between the hub
    and a local copy of it keeps the ids)."""
    from finetune.login.fingerprint import Fingerprints

    fp = Fingerprints()
    out = {
        "checkpoints": {mt: fp.file(path) for mt, path in group["checkpoints"].items()},
        "tokenizers": {mt: fp.tokenizer(path) for mt, path in group["tokenizers"].items()},
        "datasets": {lang: fp.folder(entry["path"]) for lang, entry in group["datasets"].items()
                     if entry.get("path") and entry["dataset"] not in mirrors},
    }
    fp.save()
    return out


def _leaf_paths(value: Any, path: str = "$") -> Iterator[str]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaf_paths(v, join_path(path, k))
    else:
        yield path


def _resolved_config(layered: Layered) -> dict[str, Any]:
    """The merged config with every path-valued key made absolute, without editor-only keys."""
    from finetune.login.layers import resolved_value

    out = resolved_value(layered)
    out.pop("$schema", None)
    out.pop("$comment", None)
    data = out.setdefault("data", {})
    data.setdefault("mirrors", {})
    data.setdefault("cache_dir", None)
    return out


# ---------------------------------------------------------------------------------------------
# the plan directory


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent ``write_plan`` calls on one directory."""
    import fcntl

    from finetune.fileio import ensure_directory

    ensure_directory(out_dir, "--output-dir")
    try:
        f = open(plan_lock_file(out_dir), "a")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise UsageError(problems=[Problem(str(out_dir), "", f"cannot write in the plan folder: "
                                           f"{e.strerror or e}")]) from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_plan(plan: Plan, out_dir: str | os.PathLike[str], *, replace: bool = False) -> WriteReport:
    """Merge ``plan`` into ``out_dir/plan.json`` (atomic); nothing under ``trials/`` is touched.

    Existing trials keep their ids and their place; one planned again takes this plan's shared
    config in plan.json (same id: only operational settings such as slurm can differ), so a
    fixed partition or memory limit applies when it is next submitted. A trial's frozen
    ``trials/<id>/config.json`` (what a queued, running or finished trial runs with) is never
    changed here. New trials are appended; trials not in ``plan`` stay as they were, unless
    ``replace``: then those that never ran (never submitted, no state) or failed are dropped from
    plan.json (their folders stay), so a plan made with a typo can be fixed.
    """
    from finetune.fileio import atomic_write_text
    from finetune.login.plan_file import appended, dump, gc_paused, parse

    out = Path(out_dir)
    with _locked(out):
        with gc_paused():
            old_text, old_data = _read_plan_text(out)
            parsed = parse(str(plan_file(out)), old_data) if old_data is not None else None
        old = Plan(trials=[], groups={}, sources=[])
        if parsed is not None:
            trials, groups, sources, version = parsed
            old = Plan(trials=trials, groups=groups, sources=sources, version=version, out_dir=out)
        old_trials = list(old.trials)
        new_by_id = {t.id: t for t in plan.trials}
        trials, added, updated, kept = [], [], [], []
        for t in old.trials:
            fresh = new_by_id.pop(t.id, None)
            if fresh is None:
                trials.append(t)
            else:
                trials.append(fresh)
                (updated if fresh.group != t.group else kept).append(t.id)
        for t in plan.trials:
            if t.id in new_by_id:
                trials.append(t)
                added.append(t.id)
        superseded = supersede(trials, plan.trials, {**old.groups, **plan.groups})
        dropped: list[str] = []
        if replace:
            trials, dropped = drop_replaceable(out, trials, {t.id for t in plan.trials})
        groups = {**old.groups, **plan.groups}
        used = {t.group for t in trials}
        groups = {g: v for g, v in groups.items() if g in used}
        sources = [s for s in old.sources if s.get("group") in used]
        sources += [s for s in plan.sources if s not in sources]
        text = None
        if old_data is not None and not superseded and not dropped and not updated:
            text = appended(old_text, old_data, old_trials, trials, groups, sources)  # new trials only encoded
        if text is None:
            text = dump(PLAN_VERSION, sources, groups, trials)
        atomic_write_text(plan_file(out), text)
    plan.out_dir = out
    return WriteReport(path=plan_file(out), added=added, updated=updated, kept=kept, total=len(trials),
                       superseded=[t for t in superseded if t not in dropped], dropped=dropped)


def _read_plan_text(out: Path) -> tuple[str, Any]:
    """plan.json's text and parsed JSON (``("", None)`` when there is none)."""
    from finetune.fileio import read_json

    path = plan_file(out)
    if not path.is_file():
        return "", None
    try:
        text = path.read_text(encoding="utf-8")
        return text, json.loads(text)
    except (OSError, ValueError, RecursionError):
        return "", read_json(path)  # raises what is wrong with it, with line and column


def load_plan(out_dir: str | os.PathLike[str]) -> Plan:
    """The plan in ``out_dir``; raises ConfigError when there is none, it is unreadable or invalid
    (``finetune.login.plan_file.parse``: ids, uniqueness, fields, hyperparameter values)."""
    from finetune.fileio import read_json
    from finetune.login.plan_file import gc_paused, parse

    out = Path(out_dir)
    path = plan_file(out)
    if not path.is_file():
        raise ConfigError(problems=[Problem(str(path), "", "no plan here (run `finetune plan` first)")])
    with gc_paused():
        trials, groups, sources, version = parse(str(path), read_json(path))
    return Plan(trials=trials, groups=groups, sources=sources, version=version, out_dir=out)


def materialize_trial(out_dir: str | os.PathLike[str], trial_id: str, *, plan: Plan | None = None,
                      refresh: bool = False) -> Path:
    """Write ``trials/<id>/config.json`` (TRIAL_CONFIG) unless it exists; return its path.

    An existing file is frozen: later edits of the configs cannot change queued work. With
    ``refresh=True`` (for a trial about to be submitted again: failed, cancelled or never
    queued) it is rewritten when plan.json now says otherwise; the id being the same, only
    operational settings (slurm, wandb, data mirrors, ...) can differ.
    Pass ``plan`` when materialising many trials, to read plan.json once.
    """
    from finetune.fileio import atomic_write_json

    frozen = config_file(trial_dir(out_dir, trial_id))
    if not refresh and frozen.is_file():
        return frozen  # frozen: not even read
    path, config, stale = frozen_config(out_dir, trial_id, plan=plan, refresh=refresh)
    if stale:
        atomic_write_json(path, config)
    return path


def frozen_config(out_dir: str | os.PathLike[str], trial_id: str, *, plan: Plan | None = None,
                  refresh: bool = False) -> tuple[Path, dict[str, Any], bool]:
    """What ``materialize_trial`` leaves in ``trials/<id>/config.json``, without writing it:
    ``(path, config, stale)``, where ``stale`` says the file must be (re)written to hold ``config``.
    Lets a caller check everything before the first file is written."""
    from finetune.fileio import read_json

    path = config_file(trial_dir(out_dir, trial_id))
    if path.is_file() and not refresh:
        return path, read_json(path), False
    if plan is None:
        plan = load_plan(out_dir)
    if plan.out_dir is None:
        plan.out_dir = Path(out_dir)
    if path.is_file() and plan.trial(trial_id).group not in plan.groups:
        # frozen by hand or by an older tool: nothing in plan.json to refresh it from
        return path, read_json(path), False
    config = plan.trial_config(trial_id)
    if path.is_file() and _readable(path) == config:
        return path, config, False
    return path, config, True  # also an empty or damaged file of a trial about to run: written again


def _readable(path: Path) -> Any:
    """The frozen config, or None when it is empty or damaged (it is then written again)."""
    from finetune.fileio import read_json

    try:
        return read_json(path)
    except FinetuneError:
        return None


def materialize_trials(out_dir: str | os.PathLike[str], trial_ids: Sequence[str] | None = None,
                       *, plan: Plan | None = None, refresh: bool = False) -> list[Path]:
    """``materialize_trial`` for many trials (all when ``trial_ids`` is None), reading the plan once."""
    plan = plan or load_plan(out_dir)
    ids = [t.id for t in plan.trials] if trial_ids is None else list(trial_ids)
    return [materialize_trial(out_dir, tid, plan=plan, refresh=refresh) for tid in ids]
