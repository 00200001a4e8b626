"""The same arrays through submitit's AutoExecutor (``map_array``): slurm when there, else local.

submitit renders its own sbatch script (our template is still written beside it for the
record); each task makes its trial's folder and config.json from the index file
(``finetune.login.batch.prepare_trial``) and calls ``run_local_trial``, i.e. ``python -m finetune train TRIAL_DIR`` with
output appended to the trial's log. Queue state and cancel go through the slurm tools, since
submitit's job ids are SLURM ids. Needs accounting: without sacct submitit can wait forever on a
job that died, so ``submit`` here never waits on results.

Each array gets its plan's job name (``finetune.login.reconcile``), so a rerun adopts an array
that a SIGKILLed submitter queued but did not record, as on the sbatch path. submitit runs
``sbatch`` with every other descriptor closed, so the plan's submit lock cannot reach it: on SLURM
``map_array`` runs in a child process that inherits the lock (``pass_fds``) and outlives a killed
submitter until its array is queued (``python -m finetune.login.executors.submitit_executor``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.login.batch import prepare_trial
from finetune.login.executors import slurm as slurm_tools
from finetune.login.executors.base import ArrayJob, SchedulerError, TaskState, write_job_files
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
        self.backend = cluster  # None: submitit picks (slurm when sbatch works)
        # descriptors the submitting process inherits (the plan's submit lock; see the module doc)
        self.pass_fds: tuple[int, ...] = tuple(options.get("pass_fds") or ())

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("submitit") is not None

    def write(self, job: ArrayJob) -> None:
        write_job_files(job)

    def submit(self, job: ArrayJob) -> str:
        request = {"folder": str(layout.jobs_dir(job.plan_dir) / "submitit" / "%j"), "backend": self.backend,
                   "parameters": submitit_parameters(job), "index": str(job.index_path), "tasks": job.tasks,
                   "per_task": job.per_task}
        if not self.pass_fds or not shutil.which("sbatch"):
            return map_array(request)
        # a child holds the lock until sbatch has returned, however this process ends; its own
        # session: a Ctrl-C meant for the submitter does not cut it short
        proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)], capture_output=True,
                              text=True, pass_fds=self.pass_fds, start_new_session=True)
        job_id = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0 or not job_id.isdigit():
            raise SchedulerError(f"submitit could not submit {job.index_path} (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-2000:] or proc.stdout.strip()}")
        return job_id

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


def map_array(request: dict[str, Any]) -> str:
    """One array through submitit's ``map_array``; its job id."""
    import submitit

    executor = submitit.AutoExecutor(folder=request["folder"], cluster=request["backend"])
    params = dict(request["parameters"])
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    n = int(request["tasks"])
    jobs = executor.map_array(_task, [request["index"]] * n, list(range(n)), [int(request["per_task"])] * n)
    return str(jobs[0].job_id).split("_")[0]


if __name__ == "__main__":  # the child of SubmititExecutor.submit: argv[1] is the request (JSON)
    # through the module's own name, so that submitit pickles finetune's ``_task``, not ``__main__``'s
    from finetune.login.executors.submitit_executor import map_array as _map_array

    print(_map_array(json.loads(sys.argv[1])), flush=True)
