"""`finetune search` (an Optuna search over a grid config's search block, run by an array of
workers) and `finetune search-worker DIR --worker NAME` (what each array task runs)."""

from __future__ import annotations

import argparse

SEARCH_EPILOG = """examples:
  finetune search config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/search-demo.json -o runs/search
  finetune search config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json --grid-config config/search-demo.json -o runs/search --executor local
  python scripts/grid-search.py config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/search-demo.json -o runs/search

The grid config's "search" block says how: sampler (grid, random, tpe, qmc), trials (the budget),
workers (array tasks at once), pruner (none, median, successive-halving, hyperband), metric and
direction. Lists are categorical; {"low", "high", "log": true} and {"low", "high", "step"} are
ranges. Submits ONE array of `workers` tasks; each asks the study (DIR/search/study.journal,
Optuna's journal file storage) for a trial, runs it as an ordinary trial in DIR/trials/<id>/,
reports every evaluation for pruning, tells the result and asks again until the budget is spent.
Running it again continues the study. scripts/grid-search.py does the same for such a grid.
Exit codes: 0 done (submitted, or run here); 1 with --executor local, trials of this run failed
or a worker ended in error, each listed with its log; 2 bad input.
"""

WORKER_EPILOG = """examples:
  finetune search-worker runs/search --worker 0001-3

What each task of a search array runs (the local executor too): ask, run, tell, until the
budget is spent. Exit codes: 0 done, 75 its trial checkpointed after SIGUSR2 (requeue me: the
same worker name resumes the same trial), 2 bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter
    from finetune.cli.plan import add_plan_arguments, run

    p = subparsers.add_parser("search", help="Optuna search (sampling + pruning) by an array of workers",
                              description="Start or continue the search described by the grid config's search block.",
                              epilog=SEARCH_EPILOG, formatter_class=HelpFormatter)
    add_plan_arguments(p, matrix=False)
    p.set_defaults(func=lambda args: run(args, matrix=False, search=True))

    w = subparsers.add_parser("search-worker", help="one worker of a search array (ask, run, tell)",
                              description="Ask the study in DIR for trials and run them until the budget is spent.",
                              epilog=WORKER_EPILOG, formatter_class=HelpFormatter)
    w.add_argument("plan_dir", metavar="DIR")
    w.add_argument("--worker", required=True, metavar="NAME", help="this worker's name (batch-task)")
    w.add_argument("--launcher", default="", metavar="SHELL_WORDS",
                   help="what goes before `python -m finetune train TRIAL_DIR` for trials of several tasks "
                        "(search.sbatch passes the srun or torchrun words an array task would use)")
    w.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    import re

    from finetune.compute.search_worker import run_worker
    from finetune.errors import Problem, UsageError

    if not re.match(r"^[A-Za-z0-9_.-]+$", args.worker):
        raise UsageError(problems=[Problem("--worker", "", "letters, digits, '.', '_' and '-' only")])
    return run_worker(args.plan_dir, args.worker, args.launcher)
