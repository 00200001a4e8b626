"""`finetune submit|status|cancel DIR`, `finetune train TRIAL_DIR`, `finetune array-task INDEX`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetune.cli.plan import GUARD, add_submit_arguments, positive_int, report_failures, submit_following

SUBMIT_EPILOG = """examples:
  finetune submit runs/rus-pol
  finetune submit runs/rus-pol --throttle 8 --timeout 02:00:00
  finetune submit runs/rus-pol --executor local --parallel 2
  finetune submit runs/rus-pol --template jobs/templates/old-style.sbatch --dry-run
  finetune submit runs/rus-pol --follow --follow-interval 120

Submits every trial of the plan that is neither finished (result.json) nor queued or running
(one squeue call): one job array per resource group (the trials' `slurm` sections), split at
the cluster's MaxArraySize. Job ids go into DIR/manifest.json after every sbatch. Running it
again sends only failed, cancelled, timed-out and never-submitted trials: zero duplicates.
Queue limits: at most as many array tasks are queued as MaxJobCount, the QOS's
MaxSubmitJobsPerUser (sacctmgr) and slurm.max_queued leave room for; run it again, or with
--follow (waits and tops up), to queue the rest. slurm.trials_per_task K: each array task runs K trials.
Templates: *.j2 = jinja2 (StrictUndefined), any other file = old-style str.format fields.
Exit codes: 0 submitted (or, run here, every trial finished); 1 trials run here (--executor
local) failed: each is listed with its reason and log.txt, and running submit again reruns only
the unfinished ones; 2 bad input (nothing written or submitted).
"""

STATUS_EPILOG = """examples:
  finetune status runs/rus-pol
  finetune status runs/rus-pol --all
  finetune status runs/rus-pol --json > status.json

One squeue and one sacct call for the whole plan. Failed trials show the reason (OUT_OF_MEMORY,
TIMEOUT, PREEMPTED, NODE_FAIL, exit code) and the tail of their log.txt. Without accounting it
falls back to squeue plus the trial files.
"""

CANCEL_EPILOG = """examples:
  finetune cancel runs/rus-pol

Cancels every queued or running array task of the plan (one squeue, one scancel). Finished
results are untouched; `finetune submit DIR` later sends the cancelled trials again.
"""

TRAIN_EPILOG = """examples:
  finetune train runs/rus-pol/trials/3f9c1a2b7d04
  python -m finetune train runs/rus-pol/trials/3f9c1a2b7d04

Runs one trial from its frozen config.json (what every executor runs). Exit codes: 0 finished,
1 failed (state.json says why), 2 bad input, 75 checkpointed after SIGUSR2 (requeue me).
"""

ARRAY_EPILOG = """examples:
  SLURM_ARRAY_TASK_ID=3 finetune array-task runs/rus-pol/jobs/0001/1a2b3c4d-0.index

Runs the trial on line $SLURM_ARRAY_TASK_ID + 1 of the index file (trial id, a tab, its plan.json
record; the plan directory is the index file's grandparent's parent): makes the trial's folder
and frozen config.json from the record and the batch's groups.json, then runs it with output
appended to its log.txt. --prepare: only make the folder and config.json (the shipped template
does this before it starts the trial's ranks). --per-task K (slurm.trials_per_task): task N runs
the trials on lines N*K+1 .. N*K+K one after another in this process, skipping finished ones;
SIGUSR2 checkpoints the running one and exits 75 (requeue: the next run resumes it).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser("submit", help="submit a plan's unfinished trials as job arrays",
                              description="Submit the trials of a plan directory that are neither finished nor queued.",
                              epilog=SUBMIT_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("plan_dir", metavar="DIR", help="the plan directory (with plan.json)")
    add_submit_arguments(p)
    p.set_defaults(func=_submit)

    p = subparsers.add_parser("status", help="where every trial of a plan stands",
                              description="Trial states of a plan from one squeue and one sacct call.",
                              epilog=STATUS_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("plan_dir", metavar="DIR")
    p.add_argument("--all", action="store_true", help="list every trial, not only the failed ones")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_status)

    p = subparsers.add_parser("cancel", help="cancel a plan's queued and running trials",
                              description="Cancel every queued or running array task of a plan.",
                              epilog=CANCEL_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("plan_dir", metavar="DIR")
    p.set_defaults(func=_cancel)

    p = subparsers.add_parser("train", help="run one trial (what every executor calls)",
                              description="Run one trial from TRIAL_DIR/config.json.",
                              epilog=TRAIN_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("trial_dir", metavar="TRIAL_DIR")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("array-task", help="run the trial of $SLURM_ARRAY_TASK_ID from an index file",
                              description="Resolve an array task to its trial and run it.",
                              epilog=ARRAY_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("index_file", metavar="INDEX_FILE")
    p.add_argument("--task-id", type=int, default=None, help="the array task (default: $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--prepare", action="store_true", help="make the trial folder and config.json; run nothing")
    p.add_argument("--per-task", type=positive_int, default=1, metavar="K",
                   help="a bundle (slurm.trials_per_task): run the trials on lines task*K+1 .. task*K+K, one after another")
    p.set_defaults(func=_array_task)


def _submit(args: argparse.Namespace) -> int:
    from finetune.login.submit import submit

    report = submit_following(
        lambda: submit(args.plan_dir, executor=args.executor, template=args.template, timeout=args.timeout,
                       throttle=args.throttle, dry_run=args.dry_run, max_array_size=args.max_array_size,
                       parallel=args.parallel, max_trials=None if args.yes else GUARD), args)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.dry_run:
        from finetune.cli._dry_run import dry_run_lines

        print("\n".join(dry_run_lines(report, args.plan_dir)))
    print(report.summary())
    if not report.scheduler and not args.dry_run:  # the trials ran here: say how they ended
        from finetune.login.status import plan_status

        counts = plan_status(args.plan_dir).counts
        print("states: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return report_failures(report, args.plan_dir)


def _status(args: argparse.Namespace) -> int:
    from finetune.login.status import plan_status

    report = plan_status(args.plan_dir)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=1)
        print()
        return 0
    print(report.summary())
    for note in report.notes:
        print(f"note: {note}")
    described = _trial_descriptions(args.plan_dir) if args.all else {}
    for t in report.trials:
        requeued = t.reason.startswith("requeued by SLURM")  # after a node failure, say: worth a line
        if not args.all and t.state not in ("failed", "cancelled", "preempted") and not requeued:
            continue
        extra = "".join([f" [{t.reason}]" if t.reason else "", f" job {t.job}" if t.job else "",
                         f" restarts {t.restart_count}" if t.restart_count else ""])
        what = described.get(t.trial_id, "")
        print(f"  {t.trial_id} {t.state}{extra}" + (f"  {what}" if what else ""))
        for line in t.log_tail if t.state == "failed" else []:
            print(f"      | {line}")
    return 0


def _trial_descriptions(plan_dir: str) -> dict[str, str]:
    """trial id -> 'ipa, train czech+slovak, learning_rate=0.0001 seed=2' (only the varying hyperparameters)."""
    from finetune.cli._dry_run import varying_hyperparameters
    from finetune.errors import FinetuneError
    from finetune.login.plan import load_plan

    try:
        trials = load_plan(plan_dir).trials
    except FinetuneError:
        return {}
    varying = varying_hyperparameters(trials)
    return {t.id: f"{t.model_type}, train {'+'.join(sorted(t.train_languages))}"
                  + "".join(f", {k}={t.hyperparameters.get(k)}" for k in varying)
            for t in trials}


def _cancel(args: argparse.Namespace) -> int:
    from finetune.login.submit import cancel

    report = cancel(args.plan_dir)
    print(f"cancelled {len(report.trials)} trials ({len(report.job_ids)} array tasks)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from finetune.compute.trial import run_trial

    return run_trial(args.trial_dir)


def _array_task(args: argparse.Namespace) -> int:
    from finetune import layout
    from finetune.compute.trial import run_trial
    from finetune.errors import Problem, UsageError
    from finetune.login.batch import prepare_trial

    index = Path(args.index_file).resolve()
    task = args.task_id if args.task_id is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise UsageError("array-task: no --task-id and no $SLURM_ARRAY_TASK_ID")
    if args.per_task > 1:
        if args.prepare:
            raise UsageError(problems=[Problem("--prepare", "", "prepares one trial: not with --per-task")])
        from finetune.compute.bundle import run_bundle

        try:
            number = int(task)
        except ValueError:
            raise UsageError(f"array-task: task {task!r} is not a number") from None
        return run_bundle(index, number, args.per_task)
    trial_dir = prepare_trial(index, task)
    if args.prepare:
        return 0
    from finetune.login.evaluations import request_file

    if layout.is_finished(trial_dir) and not request_file(trial_dir).is_file():
        return run_trial(trial_dir)  # says so in the job's output; the trial's files stay untouched
    log = open(layout.log_file(trial_dir), "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    return run_trial(trial_dir)
