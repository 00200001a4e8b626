"""One trial, by its directory: the entry point every executor runs (``finetune train DIR``).

Dispatches on ``training.workload``: ``"finetune"`` (the trainer, imported only then) or
``"count"`` (the stand-in of finetune.compute.workloads). Exit codes: 0 finished, 1 failed, 75
checkpointed after SIGUSR2 (requeue me).
"""

from __future__ import annotations

from pathlib import Path

from finetune import layout
from finetune.errors import ConfigError, Problem
from finetune.fileio import read_json

WORKLOADS = ("finetune", "count")
TRAINABLE_TASK_TYPES = ("classification", "question-answering", "causal-lm")


def run_trial(trial_dir: str | Path) -> int:
    """Run the trial in ``trial_dir``; a finished one is left exactly as it is (exit 0), unless
    its array task asked for more scores (``evaluate.json``, finetune.login.evaluations): then
    its saved model is evaluated on those languages, and nothing is trained."""
    import sys

    trial_dir = Path(trial_dir)
    if layout.is_finished(trial_dir):  # before anything is read or written: no state.json, no log line
        from finetune.login.evaluations import request_file

        if request_file(trial_dir).is_file():  # an evaluation job: score the saved model, train nothing
            if not _hold_trial_lock(trial_dir):
                print(f"{trial_dir}: another process holds {layout.TRIAL_LOCK}; not evaluating now", file=sys.stderr)
                return layout.EXIT_FAILED
            from finetune.compute.evaluate import run_request

            return run_request(trial_dir)
        print(f"{trial_dir}: already finished ({layout.RESULT_FILE} says so); nothing to do", file=sys.stderr)
        return layout.EXIT_FINISHED
    path = layout.config_file(trial_dir)
    if not path.is_file():
        raise ConfigError(problems=[Problem(str(path), "", "no trial config here (submit writes it)")])
    config = read_json(path)
    workload = (config.get("training") or {}).get("workload", "finetune")
    if workload == "finetune":
        _refuse_untrainable(config, str(path))
    if workload in WORKLOADS and not _hold_trial_lock(trial_dir):  # before the first write
        print(f"{trial_dir}: another process is running this trial ({layout.TRIAL_LOCK} is held); "
              "not starting a second writer", file=sys.stderr)
        return layout.EXIT_FAILED
    if workload == "count":
        from finetune.compute.workloads import count

        return count(trial_dir, config)
    if workload == "finetune":
        from finetune.compute.trainer import run

        return int(run(trial_dir))
    raise ConfigError(problems=[Problem(str(path), "$.training.workload",
                                        f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")])


_LOCKS: list = []  # the lock files stay open (and locked) as long as the process lives


def _hold_trial_lock(trial_dir: Path) -> bool:
    """Lock ``trial_dir/.trial.lock`` for the life of this process (rank 0 only: the ranks of one
    distributed trial are one writer). False when another process holds it."""
    import fcntl
    import os

    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    if rank not in ("0", ""):
        return True
    if not trial_dir.is_dir():
        return True  # nothing to guard; the config check below says what is wrong
    f = open(layout.trial_lock_file(trial_dir), "a")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return False
    _LOCKS.append(f)
    return True


def _refuse_untrainable(config: dict, path: str) -> None:
    """A task type the trainer has no task class for (the planner checks too)."""
    datasets = config.get("datasets") or {}
    other = {lang: e for lang, e in datasets.items() if e.get("task_type", "classification") not in TRAINABLE_TASK_TYPES}
    if other:
        kinds = sorted({str(e.get("task_type")) for e in other.values()})
        shown = ", ".join(f"{lang} ({e.get('name', e.get('dataset'))})" for lang, e in other.items())
        raise ConfigError(problems=[Problem(path, "$.datasets", f"cannot train this trial: task {config.get('task')!r} "
                                            f"is {' and '.join(kinds)} ({shown}), and `finetune train` trains "
                                            f"{', '.join(TRAINABLE_TASK_TYPES)} tasks only so far")])
