"""Arrays the scheduler holds for a plan but its manifest does not list: found and adopted.

(SLURM arrays, whether ``sbatch`` or submitit queued them.)

Every array of a plan gets a job name unique to the plan and the array,
``ft-<plan folder>-<hash of the plan path>-<batch>-<key>-<n>``, and its index file
(``jobs/<batch>/<key>-<n>.index``) is on disk before ``sbatch`` runs. So when the submitter is
SIGKILLed between a successful ``sbatch`` and the manifest write (or someone deletes
``manifest.json`` while trials are queued), one ``squeue --me`` listing the job names finds the
plan's own arrays, and the index files say which trial each task runs: submit and cancel record
them in the manifest, status counts them, and nothing is queued twice.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.login import executors

ARRAY_RE = re.compile(r"^(?P<batch>[0-9]{4})-(?P<key>[0-9a-f]{8})-(?P<n>[0-9]+)$")
# Executors whose arrays are SLURM jobs named by this module (submitit's job ids are SLURM's).
NAMED = ("slurm", "submitit")


def job_prefix(plan_dir: Path) -> str:
    """``ft-<plan folder>-<hash of its absolute path>-``: the start of every job name of this plan."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan_dir.name).strip("-.")[:40] or "plan"
    tag = hashlib.sha256(str(Path(plan_dir).resolve()).encode()).hexdigest()[:6]
    return f"ft-{base}-{tag}-"


def array_job_name(plan_dir: Path, batch: str, key: str, n: int) -> str:
    return f"{job_prefix(plan_dir)}{batch}-{key}-{n}"


def may_have_arrays(plan_dir: Path, submissions: dict[str, Any], executor: str = "") -> bool:
    """Worth asking SLURM: array scripts were written (every sbatch follows its script) and either
    this submit goes to SLURM (sbatch or submitit), the manifest lists SLURM arrays, or it lists
    nothing (lost)."""
    if not layout.jobs_dir(plan_dir).is_dir():
        return False
    entries = [e for e in submissions["submissions"] if isinstance(e, dict)]
    return executor in NAMED or not entries or any(e.get("executor") in NAMED for e in entries)


def submitted_by(plan_dir: Path, job_id: str) -> str:
    """Which executor queued array ``job_id``: submitit leaves its folder ``jobs/submitit/<job id>``."""
    return "submitit" if (layout.jobs_dir(plan_dir) / "submitit" / job_id).is_dir() else "slurm"


def unrecorded(plan_dir: Path, submissions: dict[str, Any], executor: str = "slurm",
               ex: Any = None) -> list[dict[str, Any]]:
    """Manifest entries for the plan's queued arrays that the manifest does not list (one scheduler
    call: ``named_jobs`` of the executor ``ex``, whose answer its ``state`` reuses); [] when the
    executor cannot list jobs by name."""
    if executor not in executors.names() or not executors.is_scheduler(executor):
        return []
    ex = ex if ex is not None else executors.make_executor(executor)
    named = getattr(ex, "named_jobs", None)
    if named is None or not executors.executor_class(executor).available():
        return []
    prefix = job_prefix(plan_dir)
    known = {str(e.get("job_id")) for e in submissions["submissions"] if isinstance(e, dict)}
    out: list[dict[str, Any]] = []
    for job_id, name in sorted(named(prefix).items()):
        m = ARRAY_RE.match(name[len(prefix):])
        if job_id in known or m is None:
            continue
        batch = m["batch"]
        index = layout.batch_dir(plan_dir, batch) / f"{m['key']}-{m['n']}.index"
        try:
            # line N: the trial of task N (its id, then maybe a tab and its plan record)
            trial_ids = [t.split("\t", 1)[0] for t in index.read_text(encoding="utf-8").split("\n") if t]
        except OSError:
            continue
        script = index.with_suffix(".sbatch")
        try:  # a bundle runs several trials per array task (--per-task N in its script)
            m_per = re.search(r"--per-task (\d+)", script.read_text(encoding="utf-8"))
        except OSError:
            m_per = None
        per_task = max(1, int(m_per.group(1))) if m_per else 1
        by = submitted_by(plan_dir, job_id) if executor == "slurm" else executor
        out.extend({"job_id": job_id, "array_index": i // per_task, "trial_id": tid, "executor": by, "submitted": "",
                    "batch": batch, "script": str(script.relative_to(plan_dir)), "adopted": True}
                   for i, tid in enumerate(trial_ids))
    return out


def adopt(plan_dir: Path, submissions: dict[str, Any], ex: Any = None) -> int:
    """Record the plan's unrecorded queued arrays in the manifest (caller holds the submit lock);
    returns how many tasks were adopted."""
    found = unrecorded(plan_dir, submissions, ex=ex)
    if found:
        submissions["submissions"].extend(found)
        from finetune.fileio import atomic_write_json

        atomic_write_json(layout.manifest_file(plan_dir), submissions, indent=1)
    return len(found)
