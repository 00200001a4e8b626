"""`finetune collect` (tables and plots of a plan's results) and `finetune demo` (the README's job)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from finetune.errors import FinetuneError

COLLECT_EPILOG = """examples:
  finetune collect runs/rus-pol
  finetune collect runs/rus-pol --plots --metric accuracy
  finetune collect runs/rus-pol --selection each-language
  finetune collect runs/search --html

Writes DIR/results.csv and DIR/results.md (one row per trial with its state: finished, failed
with the reason, running, preempted, missing, superseded), DIR/summary.csv (one row per
configuration and eval language: trials that differ only in their seed are one configuration,
with n_seeds and the mean and std of every split and metric) and DIR/best.csv (per model type,
train set and eval language: the configuration with the best mean eval metric, and its test
mean and std), and prints the markdown report.

Selection protocol (--selection, default: the plan's training.selection, else train-languages):
train-languages chooses on the training languages' eval splits only (zero-shot transfer);
each-language chooses on each target's own eval split (the oracle). Every output states it.

--plots also draws DIR/plots/transfer-heatmap.png (mean +- std and n per cell, the majority-class
baseline in the legend, and * on IPA cells that differ significantly from normal text: the test
of `finetune significance DIR`, Holm-adjusted, written to DIR/significance.md) and one
learning-curve PNG per trial under DIR/plots/curves/.
--html writes DIR/report.html, one self-contained page (plotly inlined): the sortable table, the
heatmaps, learning curves and, for a search, the optimisation history, parameter importances and
parallel coordinates.
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
                        "(classification: macro_f1, accuracy, macro_precision, macro_recall, loss; question answering: "
                        "f1, exact_match; causal LM: loss, perplexity (lower is better); default: macro_f1)")
    p.add_argument("--selection", choices=("train-languages", "each-language"), default=None,
                   help="how hyperparameters are chosen (default: the plan's training.selection, else train-languages)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level at which --plots marks IPA cells that differ from normal text (default: 0.05)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the significance test behind the marks (default: enough for Holm over "
                        "every cell to reach --alpha / 10, at least 2000)")
    p.add_argument("--html", action="store_true",
                   help="also write DIR/report.html: sortable table, heatmaps, learning curves and, for a "
                        "search, Optuna's views; one self-contained file (no network needed to open it)")
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
    from finetune.errors import Problem, UsageError

    if not 0 < args.alpha < 1:
        raise UsageError(problems=[Problem("--alpha", "", f"must be between 0 and 1, got {args.alpha}")])
    if args.rounds is not None and args.rounds < 1:
        raise UsageError(problems=[Problem("--rounds", "", f"must be at least 1, got {args.rounds}")])
    table = collect(args.plan_dir, metric=args.metric, selection=args.selection)
    paths = list(write_tables(table))
    notes: list[str] = []
    if args.plots:
        from finetune.analysis.plots import learning_curves, transfer_heatmaps

        comparison = _ipa_vs_normal(table, args, paths, notes)
        plots = Path(args.plan_dir) / "plots"
        paths.append(transfer_heatmaps(table, plots / "transfer-heatmap.png", comparison=comparison, alpha=args.alpha))
        curves = learning_curves(args.plan_dir, plots / "curves", metric=args.metric)
        if curves:
            paths.append(plots / "curves")
    if args.html:
        from finetune.analysis.report import write_report

        paths.append(write_report(args.plan_dir, metric=args.metric, table=table))
    if not args.quiet:
        print(markdown_text(table))
    for note in notes:
        print(f"note: {note}")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _ipa_vs_normal(table, args: argparse.Namespace, paths: list, notes: list[str]):
    """The IPA-vs-normal test behind the heatmap's marks; None (and a note) when it cannot run."""
    from finetune.analysis.comparison import compare_conditions, comparison_text, parse_condition
    from finetune.analysis.significance import EXAMPLE_SCORES, SCORES
    from finetune.fileio import atomic_write_text

    if not {"ipa", "normal"} <= set(table.model_types):
        return None
    if table.metric not in SCORES + EXAMPLE_SCORES:
        notes.append(f"no significance marks: the test scores {', '.join(SCORES + EXAMPLE_SCORES)}, "
                     f"not {table.metric}")
        return None
    a, b = parse_condition("model_type=ipa", "--a"), parse_condition("model_type=normal", "--b")
    try:
        cells = max(1, len(table.train_sets) * len(table.languages))
        rounds = args.rounds or max(2000, math.ceil(10 * cells / args.alpha))
        cmp = compare_conditions(table, a, b, rounds=rounds, allow_missing=True)
    except FinetuneError as e:
        notes.append(f"no significance marks: {e}")
        return None
    out = Path(args.plan_dir) / "significance.md"
    atomic_write_text(out, comparison_text(cmp))
    paths.append(out)
    lacking = [u for u in cmp.untested if "no predictions kept" in u]
    if lacking:
        notes.append(f"{len(lacking)} cell(s) untested for lack of per-example predictions (see {out}); "
                     f"`finetune significance {args.plan_dir}` lists the trials and how to get them")
    return cmp


def _demo(args: argparse.Namespace) -> int:
    from finetune.demo import run_demo

    return run_demo(executor=args.executor, out=args.out, size=args.size, parallel=args.parallel,
                    timeout=args.timeout, overrides=args.set)
