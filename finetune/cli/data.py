"""`finetune prefetch` (materialise what a plan needs; report what is missing) and
`finetune transcribe` (IPA with the espeak-ng voice of a language)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PREFETCH_EPILOG = """examples:
  finetune prefetch config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/grid-search.json
  finetune prefetch config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json --model-type ipa
  finetune prefetch runs/rus-pol            # a plan directory (frozen trial configs win)
  finetune prefetch runs/rus-pol --check    # only list what is missing; load nothing

Run it on the submit host, which has a network: it loads every dataset (hub downloads go into
data.cache_dir), makes the IPA columns of ipa trials and the token ids of every trial whose
checkpoint and tokenizer exist, so offline compute nodes only read the cache. Exit code 2 and a
list of every missing checkpoint, tokenizer and dataset when something is missing.
--set, --default, --grid-config, --model-type and --matrix choose the trials of config layers;
a plan directory is planned already and refuses them (give its layers instead).
"""

TRANSCRIBE_EPILOG = """examples:
  finetune transcribe --espeak ru "Я люблю тебя."
  echo "Dzień dobry." | finetune transcribe --espeak pl

One line of IPA per input line (espeak-ng from the espeakng-loader wheel, no stress marks,
punctuation kept). --espeak takes an espeak-ng voice code (the database's "espeak" field).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter
    from finetune.cli.config import add_layer_arguments, add_selection_arguments

    p = subparsers.add_parser(
        "prefetch", help="load every dataset, transcription, tokenizer and checkpoint a plan needs",
        description="Materialise the datasets, IPA transcriptions and token ids of every trial of a plan "
                    "into the cache, and report every missing checkpoint, tokenizer and dataset.",
        epilog=PREFETCH_EPILOG, formatter_class=HelpFormatter)
    add_layer_arguments(p)
    add_selection_arguments(p)
    p.add_argument("--cache-dir", metavar="DIR", default=None, help="override data.cache_dir")
    p.add_argument("--check", action="store_true", help="only check what is missing; load nothing")
    p.add_argument("--no-tokenize", action="store_true", help="skip making the token ids")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="transcribe in N processes (default: one)")
    p.set_defaults(func=run_prefetch)

    t = subparsers.add_parser(
        "transcribe", help="print the IPA transcription of text (espeak-ng)",
        description="Transcribe text to IPA, one line per input line.",
        epilog=TRANSCRIBE_EPILOG, formatter_class=HelpFormatter)
    t.add_argument("text", nargs="*", help="text to transcribe (default: lines from stdin)")
    t.add_argument("--espeak", "-l", required=True, metavar="VOICE", help="espeak-ng voice, e.g. ru, pl, en-us")
    t.set_defaults(func=run_transcribe)


def _source(args: argparse.Namespace):
    """A plan directory as is; config layers through finetune.login.plan.build_plan (nothing written)."""
    from finetune.login.plan import build_plan

    if len(args.config) == 1 and Path(args.config[0]).is_dir():
        _refuse_layer_flags(args, Path(args.config[0]))
        return args.config[0]
    return build_plan(args.config, args.set, grid_config=args.grid_config, model_types=args.model_type,
                      matrix=args.matrix, default=args.default)


def _refuse_layer_flags(args: argparse.Namespace, plan_dir: Path) -> None:
    """--set, --default, --grid-config, --model-type and --matrix make a plan from config layers; a
    plan directory is planned already. Ignoring them would check something else than asked."""
    from finetune.cli.config import DEFAULT_MODEL_TYPES
    from finetune.errors import Problem, UsageError

    given = [flag for flag, used in (("--set", args.set), ("--default", args.default),
                                     ("--grid-config", args.grid_config), ("--matrix", args.matrix),
                                     ("--model-type", list(args.model_type) != list(DEFAULT_MODEL_TYPES)))
             if used]
    if given:
        raise UsageError(problems=[Problem(flag, "", f"applies to config layers, not to the plan directory {plan_dir} "
                                           "(its trials are planned already): give the config layers instead, "
                                           "or replan with `finetune plan`/`finetune matrix` first")
                                   for flag in given])


def run_prefetch(args: argparse.Namespace) -> int:
    from finetune.compute.prefetch import prefetch
    from finetune.errors import FinetuneError
    from finetune.login.check import check_plan

    source = _source(args)
    if args.check:
        problems = check_plan(source, cache_dir=args.cache_dir)
        if problems:
            raise FinetuneError("missing inputs:", problems=problems)
        print("everything the plan needs is present")
        return 0
    report = prefetch(source, cache_dir=args.cache_dir, tokenize=not args.no_tokenize, workers=args.workers,
                      log=lambda line: print(line, file=sys.stderr))
    print(f"{report.trials} trials: {len(report.datasets)} datasets loaded, {len(report.transcribed)} transcribed, "
          f"{len(report.tokenized)} tokenized")
    if report.problems:
        raise FinetuneError("missing inputs:", problems=report.problems)
    print("everything the plan needs is present")
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    from finetune.compute.ipa import transcribe

    lines = args.text or [line.rstrip("\n") for line in sys.stdin]
    for out in transcribe(lines, args.espeak):
        print(out)
    return 0
