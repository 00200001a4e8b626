"""``DIR/manifest.json``: every submission of a plan, one entry per trial and array task.

An entry says which executor took the trial, its job id and array index, when, in which batch
(``jobs/<batch>/``) and with which script. A trial's latest entry is what status and submit ask
the scheduler about. The file is rewritten atomically after every array sent, so it always
lists what is queued.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import ConfigError, Problem
from finetune.fileio import atomic_write_json, read_json

VERSION = 1


def load(plan_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest (an empty one when nothing was submitted yet); ConfigError when malformed."""
    path = layout.manifest_file(plan_dir)
    if not path.is_file():
        return {"version": VERSION, "submissions": []}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("submissions"), list):
        raise ConfigError(problems=[Problem(str(path), "$.submissions", "not a submission list")])
    problems = []
    for i, e in enumerate(data["submissions"]):
        if not isinstance(e, dict):
            problems.append(Problem(str(path), f"$.submissions[{i}]", "not a submission entry (an object)"))
            continue
        for key, types in (("trial_id", (str,)), ("job_id", (str, int)), ("array_index", (int,)),
                           ("executor", (str,))):
            if key not in e:
                problems.append(Problem(str(path), f"$.submissions[{i}].{key}", "missing"))
            elif not isinstance(e[key], types) or isinstance(e[key], bool):
                problems.append(Problem(str(path), f"$.submissions[{i}].{key}", f"has the wrong type ({e[key]!r})"))
    if problems:
        raise ConfigError(f"{path} is damaged; fix or remove these entries (queued arrays of this plan "
                          "are found again by their job names):", problems=problems)
    return data


def latest(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """trial id -> its most recent submission."""
    return {e["trial_id"]: e for e in manifest["submissions"] if isinstance(e, dict) and "trial_id" in e}


def task_key(entry: dict[str, Any]) -> str:
    """``"<job id>_<array index>"``: how executors key the states of array tasks."""
    return f"{entry['job_id']}_{entry['array_index']}"


def next_batch(manifest: dict[str, Any]) -> str:
    """The name of the next submission's folder under jobs/: 0001, 0002, ..."""
    batches = {str(e.get("batch")) for e in manifest["submissions"] if isinstance(e, dict)}
    highest = max((int(b) for b in batches if b.isdigit()), default=0)
    return f"{max(len(batches), highest) + 1:04d}"


def record(plan_dir: str | os.PathLike[str], manifest: dict[str, Any], *, executor: str, job_id: str,
           trial_ids: tuple[str, ...] | list[str], batch: str, script: Path, per_task: int = 1) -> None:
    """Add one array's tasks to ``manifest`` and write it (atomically). ``per_task``: trials
    per array task (trial i runs in task i // per_task)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rel = str(Path(script).relative_to(plan_dir))
    manifest["submissions"].extend(
        {"job_id": job_id, "array_index": i // per_task, "trial_id": tid, "executor": executor, "submitted": stamp,
         "batch": batch, "script": rel}
        for i, tid in enumerate(trial_ids)
    )
    atomic_write_json(layout.manifest_file(plan_dir), manifest, indent=1)


def by_executor(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """executor name -> {trial id -> entry}: one scheduler call per executor, never per trial."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for tid, e in entries.items():
        out.setdefault(str(e.get("executor")), {})[tid] = e
    return out
