"""Where every trial of a plan stands: one ``squeue`` and one ``sacct`` for the whole plan.

A trial is ``finished`` when its result.json says so (``finetune.layout.is_finished``); else
``pending``/``running`` when the scheduler still holds its latest submission; else what accounting says about that submission
(``failed`` with OUT_OF_MEMORY, TIMEOUT, PREEMPTED, NODE_FAIL or the exit code; ``cancelled``);
else what its state.json says; else ``unsubmitted``. Without accounting (sacct refused) the
report says so and uses squeue plus the trial files alone.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import UsageError
from finetune.layout import is_finished
from finetune.login import executors, manifest, reconcile
from finetune.login.executors.base import SchedulerError, TaskState

STATES = ("finished", "pruned", "running", "pending", "preempted", "failed", "cancelled", "invalid", "unknown", "unsubmitted")
FAILURE_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
LOG_TAIL_LINES = 10


@dataclass
class TrialStatus:
    trial_id: str
    state: str  # one of STATES
    reason: str = ""  # OUT_OF_MEMORY, TIMEOUT, PREEMPTED, NODE_FAIL, "exit code 1", squeue's reason, ...
    job: str = ""  # "<job id>_<task>" of the latest submission
    restart_count: int | None = None
    log_tail: list[str] = field(default_factory=list)


@dataclass
class StatusReport:
    plan_dir: Path
    trials: list[TrialStatus]
    accounting: bool  # sacct answered
    scheduler: bool  # squeue answered (False: no SLURM submissions, or no SLURM here)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(t.state for t in self.trials)
        return {s: c[s] for s in STATES if c[s]}

    @property
    def pending_reasons(self) -> dict[str, int]:
        """Why pending trials wait (squeue's reason: Priority, Resources, PartitionConfig, ...), most first."""
        c = Counter(t.reason or "unknown" for t in self.trials if t.state == "pending")
        return dict(c.most_common())

    def summary(self) -> str:
        """'DIR: 12 trials: finished 8, pending 4 (PartitionConfig 3, Priority 1)'."""
        parts = []
        for state, n in self.counts.items():
            why = ", ".join(f"{r} {k}" for r, k in self.pending_reasons.items()) if state == "pending" else ""
            parts.append(f"{state} {n}" + (f" ({why})" if why else ""))
        return f"{self.plan_dir}: {len(self.trials)} trials: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"plan_dir": str(self.plan_dir), "counts": self.counts, "pending_reasons": self.pending_reasons,
                "accounting": self.accounting,
                "scheduler": self.scheduler, "notes": self.notes,
                "trials": [t.__dict__ for t in self.trials]}


def log_tail(trial_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    path = layout.log_file(trial_dir)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


def _tail(trial_dir: Path | None) -> list[str]:
    return log_tail(trial_dir) if trial_dir is not None else []


def _failure_reason(acct: TaskState) -> str:
    if acct.state == "FAILED":
        code = acct.exit_code.split(":")
        if len(code) == 2 and code[1] not in ("", "0"):
            return f"signal {code[1]}"
        return f"exit code {code[0]}" if code and code[0] else "FAILED"
    return acct.state


def classify(trial_id: str, trial_dir: Path | None, entry: dict[str, Any] | None, queue: dict[str, TaskState],
             acct: dict[str, TaskState] | None, *, queue_known: bool = True, search: bool = False,
             folder: bool = True, bundled: bool = False) -> TrialStatus:
    """One trial's status from the files, its latest manifest entry and the scheduler's answers.

    ``folder=False`` (or ``trial_dir`` None): the trial has no folder yet (its array task has not
    started it), so no file is read: a big plan's status costs one directory listing, not reads
    (nor paths made) per trial.

    ``queue_known=False`` (squeue could not be asked): a trial SLURM may still hold is "unknown",
    never guessed cancelled or failed from its absence in an empty answer.

    ``bundled``: its array task runs several trials one after another (``slurm.trials_per_task``);
    while the task runs, only the trial whose state.json says running is running, the others of
    the task wait their turn ("pending", reason "waiting in its bundle")."""
    folder = folder and trial_dir is not None
    saved = layout.read_state(trial_dir) if folder else {}
    restart = saved.get("restart_count")
    if not isinstance(restart, int) or isinstance(restart, bool) or restart < 0:
        restart = None  # a hand-edited or damaged state.json: not shown as a count
    job = f"{entry['job_id']}_{entry['array_index']}" if entry else ""
    wrong = layout.result_problem(trial_dir, layout.read_result(trial_dir)) if folder else ""
    if not folder:
        pass
    elif wrong:  # another trial's result (or a malformed one): never counted finished
        return TrialStatus(trial_id, "invalid", wrong, job=job, restart_count=restart)
    elif is_finished(trial_dir):
        return TrialStatus(trial_id, "finished", job=job, restart_count=restart)
    elif (step := layout.pruned_step(trial_dir)) is not False:
        return TrialStatus(trial_id, "pruned", f"at step {step}", job=job, restart_count=restart)
    elif layout.result_file(trial_dir).exists():
        return TrialStatus(trial_id, "failed", f"{layout.RESULT_FILE} unreadable or not finished", job, restart,
                           _tail(trial_dir))
    q = queue.get(job) if job else None
    a = acct.get(job) if (acct is not None and job) else None
    if q is not None and q.active:
        state = "running" if q.state in ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT") else "pending"
        reasons = [q.reason] if state == "pending" and q.reason else []
        if state == "running" and bundled and saved.get("state") != "running":
            state, reasons = "pending", [f"waiting in its bundle (task {job} runs its trials one after another)"]
        # SLURM requeued it itself (a node failed, ...): say so, the queue's reason alone ("BeginTime") does not
        failures = [e for e in (a.earlier if a is not None else ()) if e.split(" ")[0] in FAILURE_STATES]
        if failures:
            reasons.insert(0, f"requeued by SLURM after {failures[-1]}")
        return TrialStatus(trial_id, state, reason="; ".join(reasons), job=job, restart_count=restart)
    remote = entry is not None and executors.is_scheduler(entry.get("executor"))
    if remote and not queue_known and (a is None or a.state in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED")):
        return TrialStatus(trial_id, "unknown", "scheduler unreachable: it may still be queued or running", job,
                           restart)
    if a is not None and a.state in FAILURE_STATES:
        return TrialStatus(trial_id, "failed", _failure_reason(a), job, restart, _tail(trial_dir))
    if a is not None and a.state == "CANCELLED":
        return TrialStatus(trial_id, "cancelled", "CANCELLED", job, restart, _tail(trial_dir))
    if a is not None and a.state == "COMPLETED" and saved.get("state") != "preempted":
        return TrialStatus(trial_id, "failed", f"exit code 0 without {layout.RESULT_FILE}", job, restart, _tail(trial_dir))
    if saved.get("state") == "failed":
        return TrialStatus(trial_id, "failed", saved.get("reason") or "failed", job, restart, _tail(trial_dir))
    if saved.get("state") == "preempted":
        return TrialStatus(trial_id, "preempted", saved.get("reason") or "", job, restart, _tail(trial_dir))
    if entry is None and search:  # asked by a search worker (no manifest entry): the files say
        state = "running" if saved.get("state") == "running" else "pending"
        return TrialStatus(trial_id, state, "search worker", restart_count=restart)
    if entry is None:
        return TrialStatus(trial_id, "unsubmitted", restart_count=restart)
    if saved.get("state") == "running":  # the scheduler no longer has it and no one says why
        return TrialStatus(trial_id, "failed", "stopped while running (no accounting record)", job, restart,
                           _tail(trial_dir))
    if not remote:  # its executor ran it to the end (local)
        return TrialStatus(trial_id, "failed", f"ended without {layout.RESULT_FILE}", job, restart, _tail(trial_dir))
    return TrialStatus(trial_id, "cancelled", "left the queue before starting", job, restart, _tail(trial_dir))


def plan_status(plan_dir: str | Path) -> StatusReport:
    from finetune.login.plan import load_plan

    plan_dir = Path(plan_dir).resolve()
    if not layout.plan_file(plan_dir).is_file():
        raise UsageError(f"{plan_dir}: no plan here ({layout.PLAN_FILE} missing; run `finetune plan` first)")
    plan = load_plan(plan_dir)
    submissions = manifest.load(plan_dir)
    notes: list[str] = []
    made: dict[str, Any] = {}
    if reconcile.may_have_arrays(plan_dir, submissions):
        made["slurm"] = executors.make_executor("slurm")  # its one squeue answers state below too
        try:  # queued arrays the manifest misses (a SIGKILLed submitter): counted, not written here
            submissions["submissions"] = submissions["submissions"] + reconcile.unrecorded(
                plan_dir, submissions, ex=made["slurm"])
        except SchedulerError:
            pass  # the queue is asked again below, and its failure reported there
    entries = manifest.latest(submissions)
    groups = {name: group for name, group in manifest.by_executor(entries).items() if executors.is_scheduler(name)}
    remote = bool(groups)
    queue: dict[str, TaskState] = {}
    acct: dict[str, TaskState] | None = {} if remote else None
    scheduler = remote
    for name, group in groups.items():  # one state and one accounting call per executor
        ex = made.get(name) or executors.make_executor(name)
        job_ids = sorted({str(e["job_id"]) for e in group.values()})
        try:
            queue.update(ex.state(job_ids))
        except SchedulerError as e:
            scheduler = False
            notes.append(f"{name}: queue unavailable ({e}); states come from the trial files")
        answer = ex.accounting(job_ids)
        if answer is None:
            acct = None
            notes.append(f"{name}: accounting unavailable: failure reasons come from the trial files only")
        elif acct is not None:
            acct.update(answer)
    from finetune.login.search import is_search

    search = is_search(plan_dir)
    try:  # one listing: trials the array tasks have not started yet have no folder, nothing to read
        started = set(os.listdir(layout.trials_dir(plan_dir)))
    except OSError:
        started = set()
    per_task = Counter(manifest.task_key(e) for e in entries.values())  # > 1: a bundle (trials_per_task)
    trials = [classify(t.id, layout.trial_dir(plan_dir, t.id) if t.id in started else None, e, queue, acct,
                       queue_known=scheduler or not remote, search=search, folder=t.id in started,
                       bundled=e is not None and per_task[manifest.task_key(e)] > 1)
              for t in plan.trials for e in (entries.get(t.id),)]
    return StatusReport(plan_dir, trials, accounting=acct is not None, scheduler=scheduler, notes=notes)
