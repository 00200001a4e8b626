"""The plan directory: the only code that knows its file names, a trial's state and the exit codes.

Every runtime (login node, compute node, analysis) imports this module, so it imports nothing
heavy: the standard library, ``finetune.fileio`` and nothing else. ::

    DIR/
      plan.json                 the plan (finetune.login.plan)
      manifest.json             every submission, one entry per trial (finetune.login.manifest)
      jobs/<batch>/<key>-<n>.sbatch, .index   one rendered array script and its trial list
                                (line N: trial id, a tab, the trial's plan.json record)
      jobs/<batch>/groups.json  the shared resolved configs of the batch's trials, frozen at submit
      jobs/logs/                SLURM's own output files
      trials/<id>/
        config.json             the frozen trial config, written by the array task when the
                                trial starts (from its index line and the batch's groups.json)
        state.json              running | preempted | failed | finished | pruned, why, SLURM's restart count
        result.json             the final result; the trial is finished when it says so (or pruned)
        metrics.jsonl           one line per evaluation
        log.txt                 the output of every run of the trial, appended
        checkpoints/            resume state (removed once finished)
        model/                  the fine-tuned model (save_pretrained)
        evaluations.json        scores of model/ made later, per language, with the model and dataset
                                they are of (finetune.login.evaluations)
        evaluate.json           an evaluation job's request (languages, datasets), while it runs
        logits/<id>-<language>-<split>.npz   logits dumps (training.dump_logits)
        wandb/                  Weights & Biases run files (offline runs for `wandb sync`), last_step.json
        tensorboard/            TensorBoard event files (tensorboard: true)

A trial is **finished** when its ``result.json`` is readable JSON whose ``"state"`` is
``"finished"``; nothing else counts (a truncated, foreign or state-less file does not), so a
rerun redoes such a trial and ``collect`` does not score it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune.fileio import atomic_write_json

# --- names ------------------------------------------------------------------------------------------

PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
JOBS_DIR = "jobs"
JOB_LOGS_DIR = "logs"  # under jobs/
TRIALS_DIR = "trials"
BATCH_GROUPS_FILE = "groups.json"  # under jobs/<batch>/
PLAN_LOCK = ".plan.lock"  # one plan write at a time
SUBMIT_LOCK = ".submit.lock"  # one submit or cancel at a time

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
LOGITS_DIR = "logits"
EVALUATIONS_FILE = "evaluations.json"  # `finetune evaluate`: languages scored later from model/
EVALUATE_REQUEST_FILE = "evaluate.json"  # a finished trial's array task asks `finetune train` to score it
WANDB_DIR = "wandb"
WANDB_LAST_STEP_FILE = "last_step.json"  # under wandb/: the highest step logged, across requeues
TENSORBOARD_DIR = "tensorboard"
TRIAL_LOCK = ".trial.lock"  # held by the process running the trial: never two writers

# --- exit codes of a trial process (``finetune train DIR``) --------------------------------------

EXIT_FINISHED = 0
EXIT_FAILED = 1  # state.json says why
EXIT_BAD_INPUT = 2
EXIT_REQUEUE = 75  # checkpointed after SIGUSR2: run me again (EX_TEMPFAIL); the job script requeues

# --- trial states (state.json) ------------------------------------------------------------------

TRIAL_STATES = ("running", "preempted", "failed", "finished", "pruned")  # pruned: a search's pruner stopped it

PathLike = str | os.PathLike[str]


# --- paths -------------------------------------------------------------------------------------------


def plan_file(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / PLAN_FILE


def manifest_file(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / MANIFEST_FILE


def plan_lock_file(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / PLAN_LOCK


def submit_lock_file(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / SUBMIT_LOCK


def jobs_dir(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / JOBS_DIR


def job_logs_dir(plan_dir: PathLike) -> Path:
    return jobs_dir(plan_dir) / JOB_LOGS_DIR


def batch_dir(plan_dir: PathLike, batch: str) -> Path:
    """Where one submission's scripts and index files go: ``jobs/<batch>``."""
    return jobs_dir(plan_dir) / batch


def batch_groups_file(index_file: PathLike) -> Path:
    """The frozen groups of the batch an index file (``jobs/<batch>/<key>-<n>.index``) belongs to."""
    return Path(index_file).parent / BATCH_GROUPS_FILE


def plan_dir_of_index(index_file: PathLike) -> Path:
    """The plan directory an array's index file (``jobs/<batch>/<key>-<n>.index``) belongs to."""
    return Path(index_file).parents[2]


def trials_dir(plan_dir: PathLike) -> Path:
    return Path(plan_dir) / TRIALS_DIR


def trial_dir(plan_dir: PathLike, trial_id: str) -> Path:
    return Path(plan_dir) / TRIALS_DIR / trial_id


def config_file(trial: PathLike) -> Path:
    return Path(trial) / CONFIG_FILE


def state_file(trial: PathLike) -> Path:
    return Path(trial) / STATE_FILE


def result_file(trial: PathLike) -> Path:
    return Path(trial) / RESULT_FILE


def metrics_file(trial: PathLike) -> Path:
    return Path(trial) / METRICS_FILE


def log_file(trial: PathLike) -> Path:
    return Path(trial) / LOG_FILE


def checkpoints_dir(trial: PathLike) -> Path:
    return Path(trial) / CHECKPOINTS_DIR


def model_dir(trial: PathLike) -> Path:
    return Path(trial) / MODEL_DIR


def evaluations_file(trial: PathLike) -> Path:
    return Path(trial) / EVALUATIONS_FILE


def evaluate_request_file(trial: PathLike) -> Path:
    return Path(trial) / EVALUATE_REQUEST_FILE


def trial_lock_file(trial: PathLike) -> Path:
    return Path(trial) / TRIAL_LOCK


def logits_dir(trial: PathLike) -> Path:
    return Path(trial) / LOGITS_DIR


def wandb_dir(trial: PathLike) -> Path:
    return Path(trial) / WANDB_DIR


def wandb_last_step_file(trial: PathLike) -> Path:
    return wandb_dir(trial) / WANDB_LAST_STEP_FILE


def tensorboard_dir(trial: PathLike) -> Path:
    return Path(trial) / TENSORBOARD_DIR


def logits_name(trial_id: str, language: str, split: str) -> str:
    """A logits dump's file name: unique per trial, so dumps of many trials can share a folder."""
    return f"{trial_id}-{language}-{split}.npz"


def logits_glob(trial_id: str | None, language: str | None, split: str) -> str:
    """The pattern matching ``logits_name`` with the unknown parts left open."""
    return logits_name(trial_id or "*", language or "*", split)


# --- trial state ---------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def restart_count() -> int:
    """How often SLURM requeued this job (``SLURM_RESTART_COUNT``; 0 outside SLURM)."""
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(restart) if restart.isdigit() else 0


def write_state(trial: PathLike, state: str, reason: str = "", **extra: Any) -> None:
    """``state.json``: the state, why (empty when nothing to say), SLURM's restart count, a time stamp."""
    if state not in TRIAL_STATES:
        raise ValueError(f"unknown trial state {state!r}; one of {', '.join(TRIAL_STATES)}")
    atomic_write_json(state_file(trial), {"state": state, "reason": reason or "", "restart_count": restart_count(),
                                          "updated": _now(), **extra})


def read_state(trial: PathLike) -> dict[str, Any]:
    """``state.json`` as a dict; ``{}`` when missing, unreadable or not an object."""
    try:
        data = json.loads(state_file(trial).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def says_finished(result: Any) -> bool:
    """THE rule, on the parsed ``result.json``: an object whose ``"state"`` is ``"finished"``."""
    return isinstance(result, dict) and result.get("state") == "finished"


def read_result(trial: PathLike) -> Any:
    """The parsed ``result.json``; None when missing or unreadable."""
    try:
        return json.loads(result_file(trial).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def result_problem(trial: PathLike, result: Any) -> str:
    """What makes a parsed ``result.json`` not this trial's own ("" when nothing): another trial's
    id in ``"trial"`` (a copied or moved file), or fields of the wrong type. Such a result is
    "invalid": never finished, never scored."""
    if not isinstance(result, dict):
        return ""
    owner = result.get("trial")
    name = os.path.basename(os.fspath(trial).rstrip(os.sep)) if owner is not None else ""
    if owner is not None and owner != name:
        name = Path(trial).name
        if owner != name:
            return f"{result_file(trial)}: $.trial is {owner!r}, not this trial ({name}): the result of another trial"
    if "state" in result and not isinstance(result["state"], str):
        return f"{result_file(trial)}: $.state: expected a string"
    if "metrics" in result and not isinstance(result["metrics"], dict):
        return f"{result_file(trial)}: $.metrics: expected an object"
    return ""


def is_finished(trial: PathLike) -> bool:
    """Is this trial done (``says_finished`` on its own ``result.json``)? Submit skips it, collect scores it."""
    result = read_result(trial)
    return says_finished(result) and not result_problem(trial, result)


def says_pruned(result: Any) -> bool:
    """A search's pruner stopped the trial: ``result.json`` says ``"state": "pruned"`` (with
    ``"pruned_step"``, the training step, and the metrics of that evaluation)."""
    return isinstance(result, dict) and result.get("state") == "pruned"


def pruned_step(trial: PathLike) -> int | None | bool:
    """The step the trial was pruned at (None when not recorded); False when it was not pruned."""
    result = read_result(trial)
    if not says_pruned(result) or result_problem(trial, result):
        return False
    step = result.get("pruned_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def is_done(trial: PathLike) -> bool:
    """Nothing left to run: finished, or pruned (submit does not run a pruned trial again)."""
    result = read_result(trial)
    return (says_finished(result) or says_pruned(result)) and not result_problem(trial, result)
