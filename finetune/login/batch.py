"""A submission's frozen trials: O(arrays) files at submit, the trial folder made when it starts.

Submit writes, per batch (``jobs/<batch>/``), one ``groups.json`` (the shared resolved configs of
the batch's trials, as plan.json had them at submit) and, per array, one index file whose line N
is the trial of array task N: its id, a tab and its plan.json record. Nothing per trial.

The array task itself (``prepare_trial``, on the compute node, when the trial starts) makes
``trials/<id>/`` and writes the frozen ``config.json`` from its index line and the batch's
groups: the same TRIAL_CONFIG ``Plan.trial_config`` gives. Freezing holds: the index and
groups files are never rewritten, so editing or deleting the config layers, or replanning,
after submit changes nothing a queued trial runs. A line with the id alone (a trial frozen
by hand or by an older submit, with no group in plan.json) runs the ``config.json`` already there.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, Problem, UsageError
from finetune.fileio import atomic_write_json, read_json

SEPARATOR = "\t"
VERSION = 1


def index_text(trial_ids: Sequence[str], records: Sequence[str | None] = ()) -> str:
    """The index file: ``id`` or ``id<TAB>record`` per line (records are one-line JSON)."""
    if not records:
        return "".join(f"{t}\n" for t in trial_ids)
    return "".join(f"{t}{SEPARATOR}{r}\n" if r else f"{t}\n" for t, r in zip(trial_ids, records, strict=True))


def record_text(trial: Any, cache: dict[tuple, Any] | None = None) -> str:
    """A plan trial's record as one line of JSON: the whole record (``Trial.record()``), or with
    ``cache`` (reused between calls) the same trial with its set's hyperparameters as ``"shared"``
    (``Trial.from_record`` reads both), so what the trials of one set share is encoded once."""
    from finetune.login.plan_file import record_line

    if cache is None:
        return json.dumps(trial.record(), ensure_ascii=False, separators=(",", ":"))
    key = (trial.group, trial.model_type, id(trial.train_languages), id(trial.eval_languages), id(trial.shared()))
    found = cache.get(key)
    if found is None:  # the set's part: encoded once; the objects are kept so their ids stay unique
        text = json.dumps({"model_type": trial.model_type, "train_languages": trial.train_languages,
                           "eval_languages": trial.eval_languages, "group": trial.group, "shared": trial.shared()},
                          ensure_ascii=False, separators=(",", ":"))[1:-1]
        found = cache[key] = (text, trial.train_languages, trial.eval_languages, trial.shared())
    return record_line(trial)[:-1] + "," + found[0] + "}"


def write_groups(folder: str | os.PathLike[str], plan_dir: str | os.PathLike[str],
                 groups: dict[str, dict[str, Any]]) -> Path:
    """``jobs/<batch>/groups.json``: the groups the batch's trials were submitted with."""
    path = Path(folder) / layout.BATCH_GROUPS_FILE
    atomic_write_json(path, {"version": VERSION, "plan_dir": str(plan_dir), "groups": groups}, indent=None)
    return path


def read_task(index_file: str | os.PathLike[str], task: int | str) -> tuple[str, dict[str, Any] | None]:
    """(trial id, plan.json record or None) of array task ``task``; UsageError naming the line."""
    index = Path(index_file)
    try:
        n = int(task)
        if n < 0:
            raise ValueError
        with open(index, encoding="utf-8") as f:
            line = next(itertools.islice(f, n, None), None)
        if line is None:
            raise IndexError
    except (OSError, ValueError, IndexError):
        raise UsageError(f"{index}: no trial for array task {task}") from None
    tid, _, rest = line.rstrip("\n").partition(SEPARATOR)
    tid = tid.strip()
    if not tid or not all(c.isalnum() or c in "_-" for c in tid):
        raise UsageError(f"{index}: line {n + 1} is not a trial id")
    if not rest.strip():
        return tid, None
    try:
        record = json.loads(rest)
    except ValueError as e:
        raise ConfigError(problems=[Problem(str(index), f"line {n + 1}", f"not a trial record: {e}")]) from None
    if not isinstance(record, dict) or record.get("id") != tid:
        raise ConfigError(problems=[Problem(str(index), f"line {n + 1}", f"not the record of trial {tid}")])
    return tid, record


def trial_config(index_file: str | os.PathLike[str], record: dict[str, Any],
                 groups: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """TRIAL_CONFIG of ``record`` with the groups of the index file's batch."""
    from finetune.login.plan import Plan, Trial

    index = Path(index_file)
    if groups is None:
        groups = read_groups(index)
    plan_dir = layout.plan_dir_of_index(index)
    try:
        trial = Trial.from_record(record)
    except (KeyError, TypeError):
        raise ConfigError(problems=[Problem(str(index), "", f"incomplete trial record {record.get('id')!r}")]) from None
    plan = Plan(trials=[trial], groups=groups, sources=[], out_dir=plan_dir)
    try:
        return plan.trial_config(trial)
    except ConfigError as e:  # name the batch's file, not plan.json
        raise ConfigError(problems=[Problem(str(layout.batch_groups_file(index)), p.path, p.message)
                                    for p in e.problems]) from None


def read_groups(index_file: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    path = layout.batch_groups_file(index_file)
    if not path.is_file():
        raise ConfigError(problems=[Problem(str(path), "", "missing: the batch's frozen configs (submit writes it)")])
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
        raise ConfigError(problems=[Problem(str(path), "$.groups", "not a group table")])
    return data["groups"]


def prepare_trial(index_file: str | os.PathLike[str], task: int | str) -> Path:
    """Make array task ``task``'s trial folder and frozen ``config.json``; return the folder.

    A done trial (finished or pruned) is left exactly as it is; a finished one whose eval
    languages lack a current score (or whose record asks, ``"evaluate"``: `finetune evaluate`)
    gets an evaluation request (``request_evaluation``) beside it. Otherwise ``config.json`` is
    (re)written when it differs from what this batch froze: a trial submitted again (failed,
    cancelled) runs with its latest submission's settings; a requeued task finds it unchanged.
    """
    index = Path(index_file).resolve()
    tid, record = read_task(index, task)
    tdir = layout.trial_dir(layout.plan_dir_of_index(index), tid)
    tdir.mkdir(parents=True, exist_ok=True)
    if record is not None and layout.is_finished(tdir):
        request_evaluation(index, tdir, record)
        return tdir
    if record is None or layout.is_done(tdir):
        return tdir
    config = trial_config(index, record)
    path = layout.config_file(tdir)
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current != config:
        atomic_write_json(path, config)
    return tdir


def request_evaluation(index_file: str | os.PathLike[str], trial_dir: Path, record: dict[str, Any]) -> list[str]:
    """Write ``trials/<id>/evaluate.json`` (finetune.login.evaluations) for a finished trial: the
    languages its record asks for (``"evaluate"``), else the eval languages without a current
    score, with their dataset entries and fingerprints from the batch's groups. Returns the
    languages ([] and nothing written when none is missing). ``finetune train`` then scores them."""
    from finetune.login import evaluations

    group = read_groups(index_file).get(str(record.get("group")))
    asked = record.get("evaluate")
    if isinstance(asked, list):
        langs = sorted({str(lang) for lang in asked})
    else:
        langs = evaluations.pending(trial_dir, list(record.get("eval_languages") or []), group)
    if not langs:
        return []
    entries = (group or {}).get("datasets") or {}
    prints = ((group or {}).get("inputs") or {}).get("datasets") or {}
    threads = record.get("evaluate_threads")
    atomic_write_json(evaluations.request_file(trial_dir), {
        "languages": langs, "datasets": {lang: entries[lang] for lang in langs if lang in entries},
        "fingerprints": {lang: prints.get(lang) for lang in langs},
        **({"threads": threads} if isinstance(threads, int) and threads > 0 else {})})
    return langs
