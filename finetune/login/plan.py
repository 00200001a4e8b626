"""Trials with content ids, and the plan directory on disk.

``build_plan`` is pure: config layers, database and grid in; every problem checked at once; a
``Plan`` of fully resolved trials out. ``write_plan`` / ``load_plan`` / ``materialize_trial`` are
the only functions here that touch files.

Trial identity: ``id`` = first 12 hex digits of sha256 over the canonical JSON (sorted keys, no
spaces, integral floats as ints) of::

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
``superseded_by`` the new one (submit skips it, collect shows it apart).

Not hashed: file names, comments, key order, ``slurm``, ``wandb``, ``data`` (mirrors, cache),
operational training keys. So moving to another cluster or switching between the local copy
and the hub keeps the ids; changing anything that can change a result gives a new id.

plan.json holds the shared resolved config once per group (one ``build_plan`` call), the
hyperparameters trials share once per set and one small line per trial, so a 100k-trial plan
stays one file of about 12 MB (its format, the ``Trial`` record and its validation:
``finetune.login.plan_file``); ``materialize_trial`` writes the frozen
``trials/<id>/config.json`` when something needs it before the array task does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, FinetuneError, Problem, UsageError
from finetune.layout import PLAN_FILE, config_file, plan_file, plan_lock_file, trial_dir
from finetune.login.layers import Layered, join_path, load_config, resolved_paths
from finetune.login.plan_file import PLAN_VERSION, Trial

ID_VERSION = 3  # 2: ids cover the input files' fingerprints; 3: not the eval languages (only the selection ones)
ID_LENGTH = 12
MODEL_TYPES = ("normal", "ipa")
OPERATIONAL_TRAINING_KEYS = frozenset(
    {"strategy", "device", "num_workers", "checkpoint_interval", "compile", "count_sleep_s", "eval_batch_size",
     "log_interval", "dump_logits", "logit_directory"}
)
LORA_KEYS = frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_4bit"})


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
# canonical JSON and ids


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


def _id(hyper_canonical: str, trial_canonical: str) -> str:
    text = '{"hyperparameters":' + hyper_canonical + ',"trial":' + trial_canonical + "}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def trial_id(identity: dict[str, Any], hyperparameters: dict[str, Any]) -> str:
    """The id of one trial (identity = the "trial" part described in the module docstring)."""
    return _id(canonical_json(hyperparameters), canonical_json(identity))


# ---------------------------------------------------------------------------------------------
# validation and building


def _check_model_types(model_types: Sequence[str]) -> tuple[list[str], list[Problem]]:
    from finetune.login.schema import did_you_mean

    types = list(dict.fromkeys(model_types))
    problems = []
    if not types:
        problems.append(Problem("--model-type", "", "needs at least one model type (normal, ipa)"))
    for mt in types:
        if mt not in MODEL_TYPES:
            problems.append(Problem("--model-type", "", f"unknown model type {mt!r} (choose normal or ipa)"
                                    + did_you_mean(mt, MODEL_TYPES)))
    return types, problems


def _load_grid(grid_config: str | None):
    from finetune.login.grid import Grid, parse_grid
    from finetune.login.layers import read_config_file
    from finetune.login.schema import validate

    if grid_config is None:
        return Grid(source="<no grid>"), []
    source = str(grid_config)
    try:
        data = read_config_file(grid_config)
    except FinetuneError as e:
        return None, list(e.problems)
    problems = validate("grid", data, source)
    if problems:
        return None, problems
    return parse_grid(data, source), []


def grid_lower_bound(grid_config: str | None) -> int | None:
    """How many trials a grid config makes at least (``grid.min_count``: nothing expanded);
    None when there is no grid or it is invalid (planning reports why)."""
    from finetune.login.grid import min_count

    if grid_config is None:
        return None
    grid, problems = _load_grid(grid_config)
    if grid is None or problems or grid.search is not None:  # a search samples: nothing to expand
        return None
    try:
        return min_count(grid)
    except (ValueError, TypeError):  # zip groups of unequal length and the like: planning says so
        return None


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
    types, type_problems = _check_model_types(model_types)
    problems += type_problems
    if not files:
        problems.append(Problem("CONFIG", "", "give at least one config file"))
    layered: Layered | None = None
    try:
        layered = load_config(files, overrides, default=default)
    except FinetuneError as e:
        problems += e.problems
    grid, grid_load_problems = _load_grid(grid_config)
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
        problems += _dataset_problems(database, task, datasets, src)

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
        unused, found, warned = _unused_hyperparameters(layered, database, task, datasets, grid)
        problems += found
        warnings += warned
        if "ipa" in types:
            warnings += _espeak_warnings(database, datasets, src)

    if database is not None and grid is not None and isinstance(task, str) and not problems:
        _task_default_metric(layered, database, task, datasets)
        problems += _task_problems(layered, database, task, datasets, grid)

    if grid is not None and not problems:
        if matrix:
            lang_sets = language_matrix(languages)
        else:
            lang_sets = [language_sets(grid, languages)]
        problems += _class_problems(lang_sets, datasets, database, task, layered)
    if problems:
        raise ConfigError(problems=problems)
    assert grid is not None and database is not None

    group, group_id = _group(layered, paths, grid, database, types, overrides, grid_config)
    inputs = group["inputs"]
    hyper = {k: v for k, v in {**cfg["hyperparameters"], **grid.fixed}.items() if k not in unused}
    if not _lora_swept(grid) and not hyper.get("lora_r"):
        hyper = _without_lora(hyper)  # full fine-tuning: the adapter settings do not change the trial
    source = {"group": group_id, "files": [os.path.abspath(s) for s in layered.sources if s != "--set"],
              "overrides": list(overrides),
              "grid_config": os.path.abspath(grid_config) if grid_config is not None else None,
              "model_types": types, "matrix": matrix}
    if grid.search is not None:
        return Plan(trials=[], groups={group_id: group}, sources=[source],
                    search=_search_spec(cfg, database, types, lang_sets[0], hyper, grid, group_id, inputs),
                    warnings=warnings)
    points = _expand_points(grid, hyper)
    batch_problems = _batch_problems(points, hyper, grid, src)
    if batch_problems:
        raise ConfigError(problems=batch_problems)
    trials = _trials(cfg, database, types, lang_sets, points, hyper, grid, group_id, inputs)
    if not trials:
        raise ConfigError(problems=[Problem(grid.source, "$.exclude", "the exclude rules drop every trial")])
    return Plan(trials=trials, groups={group_id: group}, sources=[source], warnings=warnings)


def _unused_hyperparameters(layered: Layered, database, task: str, datasets: dict[str, Any], grid
                            ) -> tuple[list[str], list[Problem], list[Problem]]:
    """Hyperparameters of other task types (question answering's top_k for a classification task):
    dropped from the trials (so they do not change ids); a warning when a layer other than the
    shipped default sets one, a problem when the grid sets one."""
    from finetune.login.schema import task_specific_hyperparameters

    types = {database.entry(lang, task, name).get("task_type") for lang, name in datasets.items()}
    unused, problems, warnings = [], [], []
    for name, allowed in task_specific_hyperparameters().items():
        if not types or types <= set(allowed):
            continue
        unused.append(name)
        shown = ", ".join(sorted(str(t) for t in types))
        why = f"a {' or '.join(allowed)} hyperparameter, and task {task!r} is {shown}"
        if name in grid.parameters:
            problems.append(Problem(grid.source, join_path("$.parameters", name), why))
        path = join_path("$.hyperparameters", name)
        source = layered.source_of(path)
        if name in layered.value.get("hyperparameters", {}) and source != layered.base:
            warnings.append(Problem(source, path, f"not used: {why}"))
    return unused, problems, warnings


def _espeak_warnings(database, datasets: dict[str, Any], src) -> list[Problem]:
    """Languages without an espeak-ng voice: ipa trials then need precomputed -phoneme columns."""
    return [Problem(src(join_path("$.datasets", lang)), join_path("$.datasets", lang),
                    f"no espeak-ng voice known for {lang!r} (add \"espeak\" to it in {database.path}); "
                    "ipa trials need its datasets to carry <feature>-phoneme columns")
            for lang in datasets if database.has_language(lang) and database.espeak(lang) is None]


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


def _trial_inputs(inputs: dict[str, Any], model_type: str, languages: list[str]) -> dict[str, Any]:
    """The fingerprints one trial's id covers."""
    return {"checkpoint": inputs["checkpoints"][model_type], "tokenizer": inputs["tokenizers"][model_type],
            "datasets": {lang: inputs["datasets"][lang] for lang in languages if lang in inputs["datasets"]}}


def _trials(cfg: dict[str, Any], database, types: list[str], lang_sets, points, hyper: dict[str, Any], grid,
            group_id: str, inputs: dict[str, Any]) -> list[Trial]:
    """model types x language sets x grid points, minus excluded ones, with their ids."""
    from finetune.login.grid import excluded

    trials: list[Trial] = []
    seen: set[str] = set()
    for mt in types:
        for train, evals in lang_sets:
            identity = trial_identity(cfg, database, mt, train, evals)
            lineage_json = canonical_json(identity)
            identity["inputs"] = _trial_inputs(inputs, mt, _identity_languages(cfg, train, evals))
            identity_json = canonical_json(identity)
            no_lora = None  # the shared hyperparameters of this set's zero-rank (full fine-tuning) trials
            for point, hyper_canonical, point_raw in points:
                if grid.exclude and excluded(point, mt, grid.exclude):
                    continue
                base = hyper
                values = {**hyper, **point}
                if "lora_r" in values and not values["lora_r"]:  # a swept lora_r of 0: full fine-tuning
                    if no_lora is None:
                        no_lora = _without_lora(hyper)
                    base, values = no_lora, _without_lora(values)
                    point = {k: v for k, v in point.items() if k not in LORA_KEYS}
                    hyper_canonical, point_raw = canonical_json(values), _raw(point)
                tid = _id(hyper_canonical, identity_json)
                if tid in seen:
                    continue
                seen.add(tid)
                lineage = _id(hyper_canonical, lineage_json)
                trials.append(Trial(tid, mt, train, evals, values, group_id, point, point_raw, lineage, base=base))
    return trials


def selection_languages(training: dict[str, Any], train: Sequence[str], evals: Sequence[str]) -> list[str]:
    """The eval languages whose dev sets choose the saved checkpoint (as the trainer's
    ``selection_languages``): with "train-languages" the training languages that are evaluated,
    or every eval language when none is; with "each-language" every eval language. Sorted."""
    if (training or {}).get("selection", "train-languages") == "train-languages":
        own = sorted(set(train) & set(evals))
        if own:
            return own
    return sorted(set(evals))


def _identity_languages(cfg: dict[str, Any], train: Sequence[str], evals: Sequence[str]) -> list[str]:
    return sorted(set(train) | set(selection_languages(cfg["training"], train, evals)))


def trial_identity(cfg: dict[str, Any], database, model_type: str, train: list[str], evals: list[str]) -> dict[str, Any]:
    """The "trial" part of a trial's id (see the module docstring), hyperparameters aside."""
    task, datasets, ck, tk = cfg["task"], cfg["datasets"], cfg["checkpoints"], cfg["tokenizers"]
    langs = _identity_languages(cfg, train, evals)
    return {
        "id_version": ID_VERSION, "task": task, "model_type": model_type,
        "train_languages": train, "selection_languages": selection_languages(cfg["training"], train, evals),
        "datasets": {lang: {"name": datasets[lang], "entry": database.entry(lang, task, datasets[lang])}
                     for lang in langs},
        "training": {k: v for k, v in cfg["training"].items() if k not in OPERATIONAL_TRAINING_KEYS},
        "checkpoint": [ck["prefix"], ck[model_type]],
        "tokenizer": [tk["prefix"], tk[f"{model_type}_prefix"]],
    }


def _search_spec(cfg: dict[str, Any], database, types: list[str], lang_set, hyper: dict[str, Any], grid,
                 group_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """finetune.login.search's SPEC plus what a worker needs to make trials of sampled points:
    per model type the id's "trial" part (canonical JSON) and the base hyperparameters."""
    from finetune.login.search import SPEC_VERSION, resolve

    train, evals = lang_set
    spec = resolve(grid.search, grid.parameters, cfg["training"], types)
    langs = _identity_languages(cfg, train, evals)
    bases = {mt: {"identity": canonical_json({**trial_identity(cfg, database, mt, train, evals),
                                              "inputs": _trial_inputs(inputs, mt, langs)}),
                  "train_languages": train, "eval_languages": evals} for mt in types}
    return {"version": SPEC_VERSION, **spec, "group": group_id, "hyperparameters": hyper, "bases": bases,
            "model_types": types, "grid_config": grid.source}


def searched_trial(spec: dict[str, Any], point: dict[str, Any]) -> Trial:
    """The trial of one sampled point (``point`` may hold ``model_type``): content id as for a grid."""
    point = dict(point)
    mt = point.pop("model_type", None) or spec["model_types"][0]
    base = spec["bases"][mt]
    hyper = {**spec["hyperparameters"], **point}
    tid = _id(canonical_json(hyper), base["identity"])
    return Trial(tid, mt, list(base["train_languages"]), list(base["eval_languages"]), hyper, spec["group"], point)


def _raw(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _expand_points(grid, hyper: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """Grid points with their JSON made once: (point, canonical hyperparameters, point as stored
    in plan.json). Same order as ``finetune.login.grid.expand``.

    The texts are assembled from per-value fragments (sorted keys), so a 100k-point grid costs
    a join per point instead of a JSON encoding; tests check them against ``canonical_json``.
    """
    from finetune.login.grid import axes

    keys = sorted(hyper)
    pos = {k: i for i, k in enumerate(keys)}
    canon_base = [json.dumps(k) + ":" + canonical_json(hyper[k]) for k in keys]
    prepared = []
    for names, tuples in axes(grid):
        options = []
        for values in tuples:
            items = tuple(zip(names, values, strict=True))
            canon = [(pos[n], json.dumps(n) + ":" + canonical_json(v)) for n, v in items]
            options.append((items, canon, ", ".join(_raw(n) + ": " + _raw(v) for n, v in items)))
        prepared.append(options)
    out = []
    for combo in itertools.product(*prepared):
        canon, point, shown = canon_base.copy(), {}, []
        for items, c, text in combo:
            point.update(items)
            for i, f in c:
                canon[i] = f
            shown.append(text)
        out.append((point, "{" + ",".join(canon) + "}", "{" + ", ".join(shown) + "}"))
    return out


def _dataset_problems(database, task: str, datasets: dict[str, Any], src) -> list[Problem]:
    """Each language of ``datasets`` has ``task`` and the dataset name in the database.

    A task that none of the known languages has is one problem at ``$.task`` (the task layer
    or ``--set task=...`` is at fault), not one per language.
    """
    from finetune.login.schema import did_you_mean

    problems = []
    known = [lang for lang in datasets if database.has_language(lang)]
    task_missing = bool(known) and all(task not in database.tasks(lang) for lang in known)
    if task_missing:
        tasks = sorted({t for lang in known for t in database.tasks(lang)})
        problems.append(Problem(src("$.task"), "$.task", f"task {task!r} is not in the database {database.path} "
                                f"for {', '.join(known)} (tasks: {', '.join(tasks)})" + did_you_mean(task, tasks)))
    for lang, name in datasets.items():
        if not isinstance(name, str) or (task_missing and lang in known):
            continue
        path = join_path("$.datasets", lang)
        problems += [Problem(src(path), path, m) for m in database.lookup_problems(lang, task, name)]
    return problems


def _batch_problems(points, hyper: dict[str, Any], grid, src) -> list[Problem]:
    """batch_size must be a multiple of micro_batch_size (the trainer also divides by world size)."""
    problems, seen = [], set()
    for point, *_ in points:
        bs = point.get("batch_size", hyper["batch_size"])
        mbs = point.get("micro_batch_size", hyper["micro_batch_size"])
        if (bs, mbs) in seen or mbs is None:
            continue
        seen.add((bs, mbs))
        if bs % mbs:
            path = "$.hyperparameters.micro_batch_size"
            set_by = grid.source if "micro_batch_size" in point or "micro_batch_size" in grid.fixed else src(path)
            problems.append(Problem(set_by, path, f"batch_size {bs} is not a multiple of micro_batch_size {mbs}"))
    return problems


def _class_problems(lang_sets, datasets, database, task, layered: Layered) -> list[Problem]:
    """Classes (and task types) must agree across the languages of one trial."""
    problems, done = [], set()
    for train, evals in lang_sets:
        langs = tuple(sorted(set(train) | set(evals)))
        if langs in done:
            continue
        done.add(langs)
        entries = {lang: database.entry(lang, task, datasets[lang]) for lang in langs}
        for key in ("classes", "task_type"):
            values = {lang: e.get(key) for lang, e in entries.items()}
            if len(set(values.values())) > 1:
                shown = ", ".join(f"{lang} {v}" for lang, v in values.items())
                problems.append(Problem(layered.source_of("$.datasets"), "$.datasets",
                                        f"{key} differ across the languages of one trial ({shown})"))
    return problems


def _lora_swept(grid) -> bool:
    return any(k in grid.swept for k in LORA_KEYS)


def _without_lora(hyper: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hyper.items() if k not in LORA_KEYS}


def _task_default_metric(layered: Layered, database, task: str, datasets: dict[str, Any]) -> None:
    """The shipped default's selection metric (macro_f1) is classification's: a question-answering
    or causal-lm task that no layer gave a metric selects by its own (f1, loss)."""
    from finetune.login.tasks import DEFAULT_METRIC, task_type

    kinds = {task_type(database.entry(lang, task, name)) for lang, name in datasets.items()}
    training = layered.value.get("training")
    if len(kinds) != 1 or not isinstance(training, dict) or layered.base is None:
        return
    kind = kinds.pop()
    if kind != "classification" and layered.source_of("$.training.metric") == layered.base:
        training["metric"] = DEFAULT_METRIC[kind]


def _task_problems(layered: Layered, database, task: str, datasets: dict[str, Any], grid) -> list[Problem]:
    """Per task type: the dataset entries have what the type needs, the selection metric is one
    it reports, and QLoRA has CUDA and bitsandbytes on this machine."""
    from finetune.login.tasks import entry_problems, metric_problems, task_type

    problems: list[Problem] = []
    kinds = set()
    for lang, name in datasets.items():
        entry = database.entry(lang, task, name)
        kinds.add(task_type(entry))
        where = join_path(join_path(join_path("$", lang), task), name)
        if task_type(entry) != "classification":  # (the schema already requires classification's classes)
            problems += entry_problems(entry, source=database.path, where=where)
    if len(kinds) == 1:
        src = layered.source_of("$.training.metric")
        problems += metric_problems(next(iter(kinds)), (layered.value.get("training") or {}).get("metric"), source=src)
    hyper = {**(layered.value.get("hyperparameters") or {}), **grid.fixed}
    wants_4bit = bool(hyper.get("lora_4bit")) or any(v is True for v in grid.swept.get("lora_4bit", []))
    if wants_4bit:
        path = "$.hyperparameters.lora_4bit"
        where = grid.source if "lora_4bit" in grid.parameters else layered.source_of(path)
        missing = qlora_missing(gpus=int((layered.value.get("slurm") or {}).get("gpus") or 0))
        if missing:
            problems.append(Problem(where, path, f"4-bit QLoRA needs {' and '.join(missing)}, which this machine "
                                    "lacks (no NVIDIA GPU here and slurm.gpus is 0; pip install bitsandbytes); "
                                    "request GPUs with slurm.gpus, or set lora_4bit to false"))
        if not hyper.get("lora_r") and not grid.swept.get("lora_r"):
            problems.append(Problem(where, path, "4-bit QLoRA needs adapters: set lora_r > 0"))
    return problems


def qlora_missing(*, gpus: int = 0) -> list[str]:
    """What 4-bit QLoRA lacks: "CUDA" (no NVIDIA device here and no ``slurm.gpus`` for the
    trials), "bitsandbytes" (not installed in this environment, which the trials share).

    Checked without importing torch (this runs on the login node): the NVIDIA driver's device
    files, and whether the bitsandbytes package can be found.
    """
    import glob
    import importlib.util

    missing = []
    if not gpus and not glob.glob("/dev/nvidia[0-9]*"):
        missing.append("CUDA")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes")
    return missing


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
        superseded = _supersede(trials, plan.trials, {**old.groups, **plan.groups})
        dropped: list[str] = []
        if replace:
            trials, dropped = _drop_replaceable(out, trials, {t.id for t in plan.trials})
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


def _drop_replaceable(out: Path, trials: list[Trial], planned: set[str]) -> tuple[list[Trial], list[str]]:
    """Trials this build does not produce that never ran (never submitted, no state, no result) or failed."""
    path = layout.manifest_file(out)
    try:  # manifest.json's trial ids, read here: the compute node imports this module, not the manifest's
        entries = json.loads(path.read_text(encoding="utf-8")).get("submissions") or [] if path.exists() else []
    except (OSError, ValueError, AttributeError):
        return trials, []  # cannot tell what was submitted: drop nothing
    submitted = {e.get("trial_id") for e in entries if isinstance(e, dict)}
    keep, dropped = [], []
    for t in trials:
        if t.id in planned:
            keep.append(t)
            continue
        tdir = layout.trial_dir(out, t.id)
        state = layout.read_state(tdir).get("state")
        never_ran = t.id not in submitted and not state and not layout.result_file(tdir).exists()
        if never_ran or (state == "failed" and not layout.is_done(tdir)):
            dropped.append(t.id)
        else:
            keep.append(t)
    return keep, dropped


def _weak_key(t: Trial) -> str:
    return canonical_json([t.model_type, sorted(t.train_languages), sorted(t.eval_languages), t.hyperparameters])


def _training_key(t: Trial, groups: dict[str, dict[str, Any]]) -> str | None:
    """What a trial trains, read from its group in plan.json, without the input files' contents
    and without the eval languages: task, training settings, checkpoint and tokenizer names, the
    training languages' datasets, model type and hyperparameters. None without its group."""
    cfg = (groups.get(t.group) or {}).get("config")
    if not isinstance(cfg, dict):
        return None
    try:
        training = {k: v for k, v in cfg["training"].items() if k not in OPERATIONAL_TRAINING_KEYS}
        mt = t.model_type
        return canonical_json([cfg["task"], training, cfg["checkpoints"][mt], cfg["tokenizers"][f"{mt}_prefix"],
                               {lang: cfg["datasets"].get(lang) for lang in sorted(t.train_languages)},
                               mt, sorted(t.train_languages), t.hyperparameters])
    except (KeyError, TypeError, AttributeError):
        return None


def _id_version(t: Trial, groups: dict[str, dict[str, Any]]) -> int:
    version = (groups.get(t.group) or {}).get("id_version")
    return version if isinstance(version, int) else (2 if t.lineage else 1)


def _supersede(trials: list[Trial], fresh: list[Trial], groups: dict[str, dict[str, Any]]) -> list[str]:
    """Mark trials of plan.json that this build replaces: same lineage (the same trial but for
    the content of its input files), other id, not planned now. Trials whose ids were made by an
    older ID_VERSION (their lineages are of another formula) are matched by what they train
    (``_training_key``: the eval languages aside, as ids are now); trials planned before
    lineages and groups existed by model type, languages and hyperparameters. Returns their ids."""
    planned = {t.id for t in fresh}
    by_lineage = {t.lineage: t.id for t in fresh if t.lineage}
    # encoded only when an old trial needs them (a big plan's write encodes no trial for these)
    by_weak: dict[str, str] | None = None
    by_training: dict[str, str] | None = None
    marked = []
    for t in trials:
        if t.id in planned:
            continue  # planned again (e.g. the old checkpoint is back): current
        newer = by_lineage.get(t.lineage) if t.lineage else None
        if newer is None and _id_version(t, groups) < ID_VERSION:
            key = _training_key(t, groups)
            if key is not None:
                if by_training is None:
                    by_training = {}
                    for f in fresh:
                        k = _training_key(f, groups)
                        if k is not None:
                            by_training.setdefault(k, f.id)
                newer = by_training.get(key)
            else:
                if by_weak is None:
                    by_weak = {_weak_key(f): f.id for f in fresh}
                newer = by_weak.get(_weak_key(t))
        if newer and newer != t.id and t.superseded_by != newer:
            t.superseded_by = newer
            marked.append(t.id)
    return marked


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
