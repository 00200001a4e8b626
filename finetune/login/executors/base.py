"""The executor interface: write an array's files, submit it, ask the scheduler, cancel.

An ``ArrayJob`` is one resource group's slice of a submission: the rendered script, the index
file (line N = the trial that array task N runs) and the resources. ``submit.py`` builds them
(pure); an executor only moves them to a scheduler. Queue states come back keyed by
``"<array job id>_<task>"`` so one scheduler call answers for a whole plan.

This module knows no backend: they live one per module, listed in ``executors/__init__.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from finetune import layout
from finetune.errors import FinetuneError
from finetune.fileio import atomic_write_text

if TYPE_CHECKING:
    from finetune.login.nodes import Cluster


class SchedulerError(FinetuneError):
    """A scheduler command failed (not bad input, but the run cannot go on)."""


@dataclass(frozen=True)
class ArrayJob:
    name: str  # job name, [A-Za-z0-9_.-] only
    plan_dir: Path
    script_path: Path
    index_path: Path
    script: str  # the rendered text
    trial_ids: tuple[str, ...]  # array task i runs trial_ids[i]
    slurm: dict[str, Any] = field(default_factory=dict)  # the group's slurm section (resources.resolve_slurm)
    time: str | None = None  # the group's time limit (slurm.time or --timeout)
    throttle: int | None = None
    records: tuple[str | None, ...] = ()  # plan.json record of each trial (one-line JSON), None: frozen by hand
    per_task: int = 1  # array task k runs trials k*per_task .. (k+1)*per_task - 1, one after another

    @property
    def tasks(self) -> int:
        return -(-len(self.trial_ids) // self.per_task)

    def task_of(self, i: int) -> int:
        """The array task that runs trial ``trial_ids[i]``."""
        return i // self.per_task

    @property
    def array_spec(self) -> str:
        spec = f"0-{self.tasks - 1}"
        return f"{spec}%{self.throttle}" if self.throttle else spec

    def trial_dir(self, trial_id: str) -> Path:
        return layout.trial_dir(self.plan_dir, trial_id)


@dataclass(frozen=True)
class TaskState:
    """What the scheduler says about one array task."""

    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED, ...
    reason: str = ""  # squeue's reason, or sacct's exit code "1:0"
    exit_code: str = ""
    nodes: str = ""  # sacct's NodeList
    earlier: tuple[str, ...] = ()  # sacct: how earlier runs of this task ended ("NODE_FAIL on n[1-2]"), oldest first

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


# Scheduler states in which a task still holds (or will hold) its trial.
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
     "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
)


class Executor(Protocol):
    """What every backend provides; ``executors/__init__.py`` maps names to classes.

    ``scheduler``: True when ``submit`` only queues the array (its tasks outlive the call and
    ``state``/``accounting``/``cancel`` ask the scheduler); False when ``submit`` runs it to the
    end (nothing is ever queued). ``available()`` says whether ``--executor auto`` may pick it.
    A constructor takes keyword options only (``parallel``: trials at once, for a backend
    without a scheduler) and ignores those it has no use for.
    """

    name: str
    scheduler: bool

    @classmethod
    def available(cls) -> bool:
        """Can this backend run here (its tools are installed)?"""

    def write(self, job: ArrayJob) -> None:
        """Put the job's script and index file on disk (atomically)."""

    def submit(self, job: ArrayJob) -> str:
        """Queue (or run) the array; return its job id."""

    def state(self, job_ids: list[str]) -> dict[str, TaskState]:
        """Tasks the queue knows about, keyed "<job id>_<task>": one call for all ids.
        Raises SchedulerError when the queue cannot be asked."""

    def accounting(self, job_ids: list[str]) -> dict[str, TaskState] | None:
        """How finished tasks ended (one call for all ids); None when there is no accounting."""

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel these jobs or tasks (one call)."""

    def max_array_size(self) -> int | None:
        """The most tasks one array may have here; None when the backend sets no limit."""

    def cluster(self) -> Cluster | None:
        """The nodes and partitions requests must fit (finetune.login.nodes); None: nothing to check."""


def write_job_files(job: ArrayJob) -> None:
    """The files every executor leaves behind: the script (executable) and the index
    (``finetune.login.batch``: line N = trial id and record of array task N)."""
    from finetune.login.batch import index_text

    atomic_write_text(job.index_path, index_text(job.trial_ids, job.records))
    atomic_write_text(job.script_path, job.script)
    os.chmod(job.script_path, 0o755)
