"""`finetune collect` (tables and plots of a plan's results) and `finetune demo` (the README's job)."""

from __future__ import annotations

import argparse
from pathlib import Path

COLLECT_EPILOG = """examples:
  finetune collect runs/rus-pol
  finetune collect runs/rus-pol --plots --metric accuracy

Writes DIR/results.csv and DIR/results.md (one row per trial with its state: finished, failed
with the reason, running, preempted, missing) and prints the markdown table. For every (model
type, train set, eval language) it names the hyperparameters that were best on the eval split
and reports their test metric. --plots also draws DIR/plots/transfer-heatmap.png and one
learning-curve PNG per trial under DIR/plots/curves/.
"""

DEMO_EPILOG = """examples:
  finetune demo                          # the Russian/Polish SIB-200 demo on this machine
  finetune demo --size tiny --out /tmp/demo-tiny
  finetune demo --executor slurm         # the same on a SLURM cluster
  finetune demo --executor slurm --set slurm.partition=gpu --set slurm.account=my-account

Makes the small normal and IPA pretrained models when absent, plans the Russian/Polish
cross-language matrix with config/grid-demo.json, runs it, collects the table and draws the
heatmaps. Rerunning reuses the models and every finished trial.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser(
        "collect",
        help="tables (csv, md) and plots of a plan's results",
        description="Collect every trial's result of a plan into results.csv and results.md.",
        epilog=COLLECT_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("plan_dir", metavar="DIR", help="a plan directory (from `finetune plan`)")
    p.add_argument("--plots", action="store_true", help="also draw the transfer heatmaps and learning curves")
    p.add_argument("--metric", default="macro_f1",
                   help="metric that picks the best hyperparameters on eval and is reported on test "
                        "(macro_f1, accuracy, macro_precision, macro_recall, loss; default: macro_f1)")
    p.add_argument("--quiet", action="store_true", help="write the files, print only their paths")
    p.set_defaults(func=_collect)

    d = subparsers.add_parser(
        "demo",
        help="the Russian/Polish SIB-200 cross-language demo, end to end",
        description="Pretrain (when absent), plan, run, collect and plot the Russian/Polish demo.",
        epilog=DEMO_EPILOG,
        formatter_class=HelpFormatter,
    )
    d.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="where trials run (default: local, this machine)")
    d.add_argument("--out", metavar="DIR", default=None,
                   help="plan directory (default: runs/demo, or runs/demo-tiny with --size tiny)")
    d.add_argument("--size", choices=("tiny", "demo"), default="demo",
                   help="demo: the README's run (minutes); tiny: a seconds-long smoke run for tests")
    d.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="trials at once on the local executor (default: chosen by the executor)")
    d.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up waiting for the trials after S seconds (default: no limit)")
    d.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", dest="set",
                   help="override a config value, e.g. slurm.partition=gpu (repeatable)")
    d.set_defaults(func=_demo)


def _collect(args: argparse.Namespace) -> int:
    from finetune.analysis.results import collect, markdown_text, write_tables

    table = collect(args.plan_dir, metric=args.metric)
    paths = list(write_tables(table))
    if args.plots:
        from finetune.analysis.plots import learning_curves, transfer_heatmaps

        plots = Path(args.plan_dir) / "plots"
        paths.append(transfer_heatmaps(table, plots / "transfer-heatmap.png"))
        curves = learning_curves(args.plan_dir, plots / "curves", metric=args.metric)
        if curves:
            paths.append(plots / "curves")
    if not args.quiet:
        print(markdown_text(table))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from finetune.demo import run_demo

    return run_demo(executor=args.executor, out=args.out, size=args.size, parallel=args.parallel,
                    timeout=args.timeout, overrides=args.set)
