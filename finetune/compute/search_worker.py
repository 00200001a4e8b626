"""A search worker (one array task): ask the study for a trial, run it, tell, ask again.

``finetune search-worker DIR --worker NAME`` is what each task of a search array runs (the
local executor runs the same). A trial is an ordinary trial: its content id comes from the
sampled hyperparameters, it is added to plan.json, frozen in ``trials/<id>/config.json`` (with a
``search`` section naming the study trial) and run by ``python -m finetune train`` in a child
process, which reports every evaluation to the study and stops when the pruner says so.

The worker's file ``search/workers/NAME.json`` names its current trial, and its mtime is the
heartbeat. Exit codes: 0 budget spent, 75 the trial checkpointed after SIGUSR2 (requeue me: the
requeued task, having the same name, resumes the same trial with the same id), 2 bad input.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.fileio import atomic_write_json, read_json
from finetune.layout import EXIT_REQUEUE as PREEMPTED
from finetune.login import search as S

MAX_DUPLICATES = 20  # asks in a row that give an already tried point: the space is exhausted


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _log(worker: str, message: str) -> None:
    print(f"== {_now()} worker {worker}: {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# ask and tell


def ask(plan_dir: Path, spec: dict[str, Any], worker: str) -> dict[str, Any] | None:
    """Under the ask lock: fail stale trials, check the budget, ask, make the trial.

    Returns the assignment ``{"number", "trial_id"}`` (also written to the worker's file), or
    None when nothing is left to ask. When the budget is taken only because other workers still
    run trials, waits: one of them may fail and need replacing.
    """
    from finetune.login.expand import searched_trial
    from finetune.login.plan import Plan, write_plan

    duplicates = 0
    while True:
        with S.AskLock(plan_dir):
            study = S.open_study(plan_dir, spec)
            t = S.tally(study)
            if S.fail_stale(plan_dir, study, spec, t.running):
                t = S.tally(study)
            if t.failed >= spec["trials"]:
                _log(worker, f"{t.failed} trials failed (as many as the budget): stopping")
                return None
            if not t.spent(spec["trials"]):
                asking = S.open_study(plan_dir, spec, number=len(study.get_trials(deepcopy=False)))
                trial = asking.ask()
                point = S.suggest(trial, spec)
                made = searched_trial(spec, point)
                twin = _twin(study, made.id, trial.number)
                trial.set_user_attr("trial_id", made.id)
                trial.set_user_attr("worker", worker)
                if twin is None:
                    write_plan(Plan(trials=[made], groups={spec["group"]: spec["group_config"]}, sources=[]), plan_dir)
                    _freeze(plan_dir, made, spec, trial.number, worker)
                    assignment = {"number": trial.number, "trial_id": made.id, "asked": _now(), **_whoami()}
                    atomic_write_json(S.worker_path(plan_dir, worker), assignment)
                    return assignment
                _tell_twin(study, trial, twin)
                duplicates += 1
                if duplicates >= MAX_DUPLICATES:
                    _log(worker, f"{duplicates} asks in a row gave points already tried: the space is exhausted")
                    return None
                continue
            if not [r for r in t.running if r.user_attrs.get("worker") != worker]:
                return None
            wait = min(10.0, spec["stale_after_s"] / 4)
        time.sleep(wait)


def _whoami() -> dict[str, Any]:
    """Who holds a trial: the SLURM job (alive while queued, even preempted), host and pid."""
    import socket

    return {"job": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(), "pid": os.getpid()}


def _twin(study, trial_id: str, number: int):
    for t in study.get_trials(deepcopy=False):
        if t.number != number and t.user_attrs.get("trial_id") == trial_id and "duplicate_of" not in t.user_attrs:
            return t
    return None


def _tell_twin(study, trial, twin) -> None:
    """A point already tried (same content id) is not run again: it is told what its twin got."""
    from optuna.trial import TrialState

    trial.set_user_attr("duplicate_of", twin.number)
    if twin.state == TrialState.COMPLETE:
        study.tell(trial.number, twin.value)
    elif twin.state == TrialState.PRUNED:
        study.tell(trial.number, state=TrialState.PRUNED)
    else:
        study.tell(trial.number, state=TrialState.FAIL)


def _freeze(plan_dir: Path, made, spec: dict[str, Any], number: int, worker: str) -> Path:
    """trials/<id>/config.json: the plan's frozen config plus where to report evaluations."""
    from finetune.login.plan import Plan

    plan = Plan(trials=[made], groups={spec["group"]: spec["group_config"]}, sources=[], out_dir=plan_dir)
    config = plan.trial_config(made)
    config["search"] = {"number": number, "worker": worker, "metric": spec["metric"],
                        "direction": spec["direction"], "pruner": spec["pruner"]}
    path = layout.config_file(layout.trial_dir(plan_dir, made.id))
    atomic_write_json(path, config)
    return path


def tell(plan_dir: Path, spec: dict[str, Any], number: int, trial_id: str, rc: int) -> str:
    """Tell the study how the trial ended (from its result.json); returns the state told."""
    from optuna.trial import TrialState

    study = S.open_study(plan_dir, spec)
    frozen = study.get_trials(deepcopy=False)[number]
    if frozen.state != TrialState.RUNNING:
        return frozen.state.name.lower()  # failed as stale meanwhile
    tdir = layout.trial_dir(plan_dir, trial_id)
    result = layout.read_result(tdir)
    state = result.get("state") if isinstance(result, dict) else None
    if rc == 0 and state == "finished":
        value = S.objective(result, spec["metric"])
        if value is not None:
            study.tell(number, value)
            return "complete"
        reason = f"result.json has no eval {spec['metric']}"
    elif rc == 0 and state == "pruned":
        study.tell(number, state=TrialState.PRUNED)
        return "pruned"
    else:
        saved = layout.read_state(tdir)
        reason = saved.get("reason") or f"exit code {rc}"
    study._storage.set_trial_user_attr(frozen._trial_id, "failed_reason", str(reason))
    study.tell(number, state=TrialState.FAIL)
    return "fail"


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# the worker loop


class _Usr2:
    """SIGUSR2 while a trial runs goes on to the trial; the worker remembers it."""

    def __init__(self) -> None:
        self.requested = False
        self.child: subprocess.Popen[bytes] | None = None
        self._previous = signal.signal(signal.SIGUSR2, self._on)

    def _on(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGUSR2)

    def restore(self) -> None:
        signal.signal(signal.SIGUSR2, self._previous)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A SIGKILLed worker takes its trial along (SLURM's cgroup would; a local run needs this)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def trial_command(trial_dir: Path, launcher: str = "", python: str | None = None) -> list[str]:
    """How the worker starts its trial.

    ``launcher`` empty (a trial of one task, or a local worker; the local executor runs every
    trial as one process, as for plans): ``python -m finetune train TRIAL_DIR``. Otherwise the
    shell words an array task puts before that line for a trial of several tasks (one srun step
    over every task of the worker's job, or one torchrun per node;
    ``finetune.login.submit.launcher``), which search.sbatch passes with ``--launcher`` after
    exporting MASTER_ADDR/MASTER_PORT as array.sbatch does. The line is exec'd, so the worker's
    USR2 goes to srun, which passes it to every rank; rank 0 alone asks the study whether to
    prune, and every rank obeys (``finetune.compute.training.loop``)."""
    from shlex import quote

    plain = [python or sys.executable, "-m", "finetune", "train", str(trial_dir)]
    if not launcher.strip():
        return plain
    return ["bash", "-c", "exec " + launcher + " ".join(quote(a) for a in plain)]


def run_trial_child(trial_dir: Path, beat: Path, usr2: _Usr2, beat_s: float, launcher: str = "") -> int:
    """The trial (``trial_command``) >> log.txt, beating the worker's heartbeat."""
    argv = trial_command(trial_dir, launcher)
    with open(layout.log_file(trial_dir), "ab") as log:
        log.write(f"== {_now()} search worker {beat.stem} runs {trial_dir.name}: {' '.join(argv)}\n".encode())
        log.flush()
        usr2.child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent)
        if usr2.requested:  # USR2 came while starting
            usr2.child.send_signal(signal.SIGUSR2)
        while True:
            try:
                rc = usr2.child.wait(timeout=beat_s)
                break
            except subprocess.TimeoutExpired:
                os.utime(beat)
    usr2.child = None
    return rc


def run_worker(plan_dir: str | os.PathLike[str], worker: str, launcher: str = "") -> int:
    plan_dir = Path(plan_dir).resolve()
    spec = S.load_spec(plan_dir)
    usr2 = _Usr2()
    beat_s = max(0.2, min(30.0, spec["stale_after_s"] / 4))
    path = S.worker_path(plan_dir, worker)
    try:
        while True:
            held = _read(path)
            if isinstance(held, dict) and "number" in held:
                study = S.open_study(plan_dir, spec)
                trials = study.get_trials(deepcopy=False)
                if held["number"] < len(trials) and trials[held["number"]].state.name == "RUNNING":
                    _log(worker, f"resuming trial {held['trial_id']} (study trial {held['number']})")
                    assignment = {**{k: v for k, v in held.items() if k != "preempted"}, **_whoami()}
                    atomic_write_json(path, assignment)
                else:
                    assignment = None
                    atomic_write_json(path, {"released": held, "updated": _now()})
            else:
                assignment = None
            if assignment is None:
                if usr2.requested:
                    return PREEMPTED
                assignment = ask(plan_dir, spec, worker)
                if assignment is None:
                    _log(worker, "budget spent")
                    return 0
                _log(worker, f"asked: trial {assignment['trial_id']} (study trial {assignment['number']})")
            tdir = layout.trial_dir(plan_dir, assignment["trial_id"])
            rc = run_trial_child(tdir, path, usr2, beat_s, launcher)
            if rc == PREEMPTED:  # kept for the requeued worker; its process is gone meanwhile, on purpose
                atomic_write_json(path, {**assignment, "preempted": True})
                _log(worker, f"trial {assignment['trial_id']} checkpointed; exiting {PREEMPTED} to be requeued")
                return PREEMPTED
            told = tell(plan_dir, spec, assignment["number"], assignment["trial_id"], rc)
            _log(worker, f"trial {assignment['trial_id']} exited {rc}: told {told}")
            atomic_write_json(path, {"released": assignment, "told": told, "updated": _now()})
            if usr2.requested:
                return PREEMPTED
    finally:
        usr2.restore()
