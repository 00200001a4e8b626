"""SLURM through its command-line tools: sbatch, squeue, sacct, scancel, scontrol.

Every query covers all job ids at once (one squeue, one sacct), never one call per trial.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from finetune.login.executors.base import ArrayJob, SchedulerError, TaskState, write_job_files

SQUEUE_FORMAT = "%i|%T|%r|%j"  # "<array job>_<task>" (or "<job>") | state | reason | job name
SACCT_FIELDS = "JobID,State,ExitCode,NodeList"


def _run(argv: Sequence[str], *, cwd: str | None = None, timeout: float = 120,
         pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              pass_fds=tuple(pass_fds))
    except FileNotFoundError:
        raise SchedulerError(f"{argv[0]}: command not found (is SLURM installed and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{argv[0]}: no answer within {timeout:.0f}s") from None


class SlurmExecutor:
    name = "slurm"
    scheduler = True

    def __init__(self, **options: Any):
        # nothing to choose: sbatch takes everything from the script. ``pass_fds``: descriptors
        # sbatch inherits (the plan's submit lock): if the submitter is SIGKILLed, sbatch still
        # holds the lock until it has queued the array, so no rerun can miss that array.
        self.pass_fds: tuple[int, ...] = tuple(options.get("pass_fds") or ())
        self._listing: str | None = None  # one squeue per instance answers state and named_jobs

    @classmethod
    def available(cls) -> bool:
        return shutil.which("sbatch") is not None

    def write(self, job: ArrayJob) -> None:
        write_job_files(job)

    def submit(self, job: ArrayJob) -> str:
        argv = ["sbatch", "--parsable", f"--array={job.array_spec}", str(job.script_path)]
        self._listing = None
        proc = _run(argv, cwd=str(job.plan_dir), pass_fds=self.pass_fds)
        if proc.returncode != 0:
            raise SchedulerError(f"sbatch {job.script_path} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch {job.script_path}: unexpected output {proc.stdout.strip()!r}")
        return job_id

    def _squeue(self) -> str:
        if self._listing is None:
            self._listing = squeue_listing()
        return self._listing

    def state(self, job_ids: list[str]) -> dict[str, TaskState]:
        wanted = {str(j) for j in job_ids}
        return parse_squeue(self._squeue(), wanted) if wanted else {}

    def accounting(self, job_ids: list[str]) -> dict[str, TaskState] | None:
        return accounting_state(job_ids)

    def named_jobs(self, prefix: str) -> dict[str, str]:
        """job id -> job name of the user's queued jobs whose name starts with ``prefix`` (one squeue)."""
        out: dict[str, str] = {}
        for line in self._squeue().splitlines():
            parts = line.strip().split("|", 3)
            job = parts[0].partition("_")[0]
            if len(parts) == 4 and job.isdigit() and parts[3].startswith(prefix):
                out[job] = parts[3]
        return out

    def cancel(self, job_ids: list[str]) -> None:
        self._listing = None
        cancel(job_ids)

    def max_array_size(self) -> int | None:
        return max_array_size()

    def queue_room(self, slurms: list[dict[str, Any]]) -> int | None:
        return queue_room(slurms)

    def cluster(self):
        from finetune.login.nodes import query_cluster

        return query_cluster()


def cancel(job_ids: Sequence[str]) -> None:
    """One ``scancel`` for all ``job_ids`` (jobs or "<job>_<task>")."""
    if not job_ids:
        return
    proc = _run(["scancel", *sorted(set(job_ids), key=_id_key)])
    if proc.returncode != 0:
        raise SchedulerError(f"scancel failed (exit {proc.returncode}): {proc.stderr.strip()}")


def _id_key(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0]
    return (int(head) if head.isdigit() else 0, job_id)


def queue_state(job_ids: Sequence[str]) -> dict[str, TaskState]:
    """One ``squeue`` for the user's jobs; the tasks of ``job_ids``, keyed "<job>_<task>"."""
    wanted = {str(j) for j in job_ids}
    if not wanted:
        return {}
    return parse_squeue(squeue_listing(), wanted)


def squeue_listing() -> str:
    """The user's queued tasks, one per line (``SQUEUE_FORMAT``): one squeue call."""
    proc = _run(["squeue", "--me", "--array", "--noheader", f"--format={SQUEUE_FORMAT}"])
    if proc.returncode != 0:
        raise SchedulerError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def parse_squeue(text: str, wanted: set[str] | None = None) -> dict[str, TaskState]:
    out: dict[str, TaskState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) < 2:
            continue
        # %i, not %A/%K: a running array task's %A is its own job id on some versions (22.05)
        job, _, task = parts[0].partition("_")
        state = parts[1]
        reason = parts[2] if len(parts) > 2 else ""
        if wanted is not None and job not in wanted:
            continue
        for t in _expand_tasks(task):
            out[f"{job}_{t}"] = TaskState(state=state, reason="" if reason == "None" else reason)
    return out


def _expand_tasks(task: str) -> list[str]:
    """squeue/sacct task fields: "5", "N/A", or an unexpanded "[0-3,7%2]"."""
    if task in ("N/A", ""):
        return ["0"]
    task = task.strip("[]").split("%")[0]
    out: list[str] = []
    for part in task.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(str(i) for i in range(int(lo), int(hi) + 1))
        elif part:
            out.append(part)
    return out


def accounting_state(job_ids: Sequence[str]) -> dict[str, TaskState] | None:
    """One ``sacct`` for all ``job_ids``; None when accounting is off or unreachable.

    ``--duplicates``: a task SLURM requeued itself (after NODE_FAIL, say) has one record per run;
    the latest is its state, the earlier ones are kept in ``TaskState.earlier``."""
    ids = sorted({str(j) for j in job_ids}, key=_id_key)
    if not ids:
        return {}
    try:
        proc = _run(["sacct", "--allocations", "--duplicates", "--noheader", "--parsable2",
                     f"--format={SACCT_FIELDS}", f"--jobs={','.join(ids)}"], timeout=60)
    except SchedulerError:
        return None
    if proc.returncode != 0:
        return None
    return parse_sacct(proc.stdout)


def parse_sacct(text: str) -> dict[str, TaskState]:
    out: dict[str, TaskState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        job_id, state, exit_code = parts[0], parts[1].split(" ")[0], parts[2]
        if "." in job_id:  # a step (batch, extern, 0): the allocation line says it all
            continue
        if "_" in job_id:
            job, task = job_id.split("_", 1)
        else:
            job, task = job_id, "N/A"
        nodes = parts[3] if len(parts) > 3 else ""
        for t in _expand_tasks(task):
            key = f"{job}_{t}"
            earlier: tuple[str, ...] = ()
            if key in out:  # an earlier run of a requeued task (records come oldest first)
                prev = out[key]
                earlier = (*prev.earlier, prev.state + (f" on {prev.nodes}" if prev.nodes else ""))
            out[key] = TaskState(state=state, reason=exit_code, exit_code=exit_code, earlier=earlier, nodes=nodes)
    return out


def queue_limits(slurms: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The limits on jobs queued that apply to these slurm sections: ``slurm.max_queued``,
    MaxJobCount (``scontrol show config``) and each QOS's MaxSubmitJobsPerUser (``sacctmgr``,
    where accounting exists; the QOS is ``slurm.qos``, else ``normal``). An array task counts as
    one job, as SLURM counts it."""
    limits: dict[str, int] = {}
    for s in slurms:
        mine = s.get("max_queued")
        if isinstance(mine, int) and not isinstance(mine, bool) and mine >= 1:
            limits["slurm.max_queued"] = min(mine, limits.get("slurm.max_queued", mine))
    try:
        proc = _run(["scontrol", "show", "config"], timeout=30)
        m = re.search(r"^MaxJobCount\s*=\s*(\d+)", proc.stdout, re.MULTILINE) if proc.returncode == 0 else None
        if m:
            limits["MaxJobCount"] = int(m.group(1))
    except SchedulerError:
        pass
    wanted = {str(s.get("qos") or "normal") for s in slurms}
    try:  # one sacctmgr for every QOS
        proc = _run(["sacctmgr", "-nP", "show", "qos", "format=Name,MaxSubmitPU"], timeout=30)
    except SchedulerError:
        return limits  # no accounting here
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        name, _, value = line.strip().partition("|")
        if name in wanted and value.strip().isdigit():
            limits[f"QOS {name} MaxSubmitJobsPerUser"] = int(value)
    return limits


def queued_jobs() -> int:
    """Jobs (array tasks one by one) this user has in the queue now: one squeue."""
    import getpass

    proc = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"])
    if proc.returncode != 0:
        raise SchedulerError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return len(proc.stdout.split())


def queue_room(slurms: Sequence[dict[str, Any]]) -> int | None:
    """How many more array tasks may be queued now (None: no limit known)."""
    limits = queue_limits(slurms)
    if not limits:
        return None
    return max(0, min(limits.values()) - queued_jobs())


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (``scontrol show config``): an array's indices must stay below it."""
    try:
        proc = _run(["scontrol", "show", "config"], timeout=30)
    except SchedulerError:
        return None
    if proc.returncode != 0:
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(m.group(1)) if m else None
