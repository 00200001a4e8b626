"""Runs an array on this machine, N trials at a time, through the same entry point as SLURM.

Each task first makes its trial's folder and frozen config.json from the index file
(``finetune.login.batch.prepare_trial``, as an array task does), then runs ``python -m finetune train TRIAL_DIR`` with its output appended to the
trial's ``log.txt``, exactly what an array task does; the script and index file are written too,
so a plan run locally looks the same on disk. ``submit`` returns when the array is done. A trial
that exits 75 (checkpointed after SIGUSR2) is started again, as SLURM would requeue it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.login.batch import prepare_trial
from finetune.login.executors.base import ArrayJob, TaskState, write_job_files

MAX_REQUEUES = 20
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LocalExecutor:
    name = "local"
    scheduler = False  # submit() runs the array to the end

    def __init__(self, *, parallel: int | None = None, **options: Any):
        self.parallel = parallel
        self.exit_codes: dict[str, int] = {}  # trial id -> last exit code, for the report

    @classmethod
    def available(cls) -> bool:
        return True

    def write(self, job: ArrayJob) -> None:
        write_job_files(job)

    def submit(self, job: ArrayJob) -> str:
        workers = job.throttle or self.parallel or max(1, (os.cpu_count() or 2) // 2)
        env = trial_env(workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            if job.per_task > 1:  # bundles: one process per array task, as on SLURM
                by_task = list(pool.map(lambda k: run_local_bundle(job.index_path, k, job.per_task, env),
                                        range(job.tasks)))
                codes = [by_task[job.task_of(i)] for i in range(len(job.trial_ids))]
            else:
                codes = list(pool.map(lambda i: run_local_trial(prepare_trial(job.index_path, i), env),
                                      range(len(job.trial_ids))))
        self.exit_codes.update(zip(job.trial_ids, codes, strict=True))
        return f"local-{os.getpid()}-{job.index_path.stem}"

    def state(self, job_ids: list[str]) -> dict[str, TaskState]:
        return {}  # submit() blocks until done: nothing local is ever still queued

    def accounting(self, job_ids: list[str]) -> dict[str, TaskState] | None:
        return None  # no records: the trial files say how a run ended

    def cancel(self, job_ids: list[str]) -> None:
        return None

    def max_array_size(self) -> int | None:
        return None

    def cluster(self) -> None:
        return None  # this machine: trials share its cores, nothing can pend forever


def trial_env(workers: int) -> dict[str, str]:
    """The trials' environment: the cores shared out between the ``workers`` trials at a time
    (as SLURM's cpus_per_task would), unless the user fixed OMP_NUM_THREADS. Without this each
    trial's torch takes every core and concurrent trials slow each other down many times over."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return env


def _die_with(parent: int) -> Callable[[], None]:
    """For the child: SIGKILL when the submitter dies (PR_SET_PDEATHSIG), however it dies (even
    SIGKILL), so a rerun never meets an orphan still writing the trial. The trial's own lock
    (finetune.compute.trial) guards what this cannot (another machine, another submitter)."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the submitter died before prctl took effect
            os._exit(1)

    return preexec


def run_local_bundle(index_file: Path, task: int, per_task: int, env: dict[str, str] | None = None) -> int:
    """``python -m finetune array-task INDEX --task-id K --per-task N`` (each trial logs to its own
    log.txt; the bundle's own lines go to jobs/logs/); again while it exits 75."""
    argv = [sys.executable, "-m", "finetune", "array-task", str(index_file), "--task-id", str(task),
            "--per-task", str(per_task)]
    logs = layout.job_logs_dir(layout.plan_dir_of_index(index_file))
    logs.mkdir(parents=True, exist_ok=True)
    rc = 0
    for _ in range(MAX_REQUEUES + 1):
        with open(logs / f"{Path(index_file).stem}_{task}.out", "ab") as log:
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 preexec_fn=_die_with(os.getpid()))
        if rc not in (layout.EXIT_REQUEUE, -signal.SIGUSR2):
            return rc
    return rc


def run_local_trial(trial_dir: Path, env: dict[str, str] | None = None) -> int:
    """``python -m finetune train TRIAL_DIR`` >> TRIAL_DIR/log.txt; again while it exits 75."""
    argv = [sys.executable, "-m", "finetune", "train", str(trial_dir)]
    rc = 0
    for _ in range(MAX_REQUEUES + 1):
        with open(layout.log_file(trial_dir), "ab") as log:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            log.write(f"== {stamp} local run of {trial_dir.name}\n".encode())
            log.flush()
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 preexec_fn=_die_with(os.getpid()))
        # 75: checkpointed after USR2; killed by USR2 itself: it came before any handler, nothing was written
        if rc not in (layout.EXIT_REQUEUE, -signal.SIGUSR2):
            return rc
    return rc
