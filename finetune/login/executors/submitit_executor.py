"""The same arrays through submitit's AutoExecutor (``map_array``): slurm when there, else local.

submitit renders its own sbatch script (our template is still written beside it for the
record); each task makes its trial's folder and config.json from the index file
(``finetune.login.batch.prepare_trial``) and calls ``run_local_trial``, i.e. ``python -m finetune train TRIAL_DIR`` with
output appended to the trial's log. Queue state and cancel go through the slurm tools, since
submitit's job ids are SLURM ids. Needs accounting: without sacct submitit can wait forever on a
job that died, so ``submit`` here never waits on results.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.login.batch import prepare_trial
from finetune.login.executors import slurm as slurm_tools
from finetune.login.executors.base import ArrayJob, TaskState, write_job_files
from finetune.login.executors.local import run_local_bundle, run_local_trial
from finetune.login.executors.resources import resolve_slurm


def _task(index_file: str, task: int, per_task: int = 1) -> int:
    if per_task > 1:
        return run_local_bundle(Path(index_file), task, per_task)
    return run_local_trial(prepare_trial(Path(index_file), task))


def time_minutes(time: str | None) -> int:
    """A SLURM time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]") in whole minutes (>= 1)."""
    if not time:
        return 60
    days = 0
    if "-" in time:
        d, time = time.split("-", 1)
        days = int(d)
        parts = [int(p) for p in time.split(":")] + [0, 0]
        hours, minutes, seconds = parts[0], parts[1], parts[2]
    else:
        parts = [int(p) for p in time.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts[0], parts[1], parts[2]
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    return max(1, total)


def submitit_parameters(job: ArrayJob) -> dict[str, Any]:
    s = resolve_slurm(job.slurm)
    params: dict[str, Any] = {
        "name": job.name,
        "timeout_min": time_minutes(job.time),
        "cpus_per_task": s["cpus_per_task"],
        "nodes": s["nodes"],
        "tasks_per_node": s["ntasks_per_node"],
        "slurm_array_parallelism": job.throttle or job.tasks,
        "slurm_signal_delay_s": s["signal_grace_s"],
    }
    if s["gpus"]:
        params["gpus_per_node"] = s["gpus"]
    for key in ("partition", "account", "qos", "mem"):
        if s[key] is not None:
            params[f"slurm_{key}"] = str(s[key])
    if s["setup"]:
        params["slurm_setup"] = list(s["setup"])
    extra = {k.replace("-", "_"): v for k, v in s["extra"].items() if v not in (None, False)}
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class SubmititExecutor:
    name = "submitit"
    scheduler = True

    def __init__(self, *, cluster: str | None = None, **options: Any):
        self.cluster = cluster  # None: submitit picks (slurm when sbatch works)

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("submitit") is not None

    def write(self, job: ArrayJob) -> None:
        write_job_files(job)

    def submit(self, job: ArrayJob) -> str:
        import submitit

        folder = layout.jobs_dir(job.plan_dir) / "submitit" / "%j"
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params = submitit_parameters(job)
        if executor.cluster != "slurm":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        executor.update_parameters(**params)
        n = job.tasks
        jobs = executor.map_array(_task, [str(job.index_path)] * n, list(range(n)), [job.per_task] * n)
        return str(jobs[0].job_id).split("_")[0]

    def state(self, job_ids: list[str]) -> dict[str, TaskState]:
        return slurm_tools.queue_state([j for j in job_ids if j.isdigit()])

    def accounting(self, job_ids: list[str]) -> dict[str, TaskState] | None:
        return slurm_tools.accounting_state([j for j in job_ids if j.isdigit()])

    def cancel(self, job_ids: list[str]) -> None:
        slurm_tools.cancel([j for j in job_ids if j.split("_")[0].isdigit()])

    def max_array_size(self) -> int | None:
        return slurm_tools.max_array_size()

    def queue_room(self, slurms: list[dict[str, Any]]) -> int | None:
        return slurm_tools.queue_room(slurms) if shutil.which("sbatch") else None

    def cluster(self):
        from finetune.login.nodes import query_cluster

        return query_cluster()
