"""`finetune significance TRIAL_A TRIAL_B`: paired approximate randomization test on dumped logits.

(`finetune train TRIAL_DIR` itself is registered in cli/submit.py.)
"""

from __future__ import annotations

import argparse
import json

from finetune.errors import Problem, UsageError

EPILOG = """examples:
  finetune significance runs/rus-pol/trials/3f9c1a2b7d04 runs/rus-pol/trials/8e01d2c4a9b7 --language polish
  finetune significance logits/3f9c1a2b7d04-polish-eval.npz logits/8e01d2c4a9b7-polish-eval.npz --rounds 100000
  finetune significance TRIAL_A TRIAL_B --language russian --split test --metric accuracy --json

Both trials need logits dumped for the same language and split (train with --dump-logits, or
training.dump_logits in the config). Prints both scores, their difference and the two-sided p-value.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.analysis.significance import SCORES
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser(
        "significance", help="paired approximate randomization test between two trials",
        description="Is trial A's score different from trial B's on the same examples? Swaps the two "
                    "trials' predictions per example at random and counts how often the difference is "
                    "at least the observed one.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("trial_a", metavar="TRIAL_A", help="trial directory, or a logits .npz file")
    p.add_argument("trial_b", metavar="TRIAL_B", help="trial directory, or a logits .npz file")
    p.add_argument("--language", help="eval language (needed when the trials have several)")
    p.add_argument("--split", default="eval", choices=["eval", "test"], help="split (default: eval)")
    p.add_argument("--metric", default="macro_f1", choices=SCORES, help="metric (default: macro_f1)")
    p.add_argument("--rounds", type=int, default=10000, help="randomization rounds (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomization (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_significance)


def _significance(args: argparse.Namespace) -> int:
    from finetune.analysis.significance import compare

    if args.rounds < 1:
        raise UsageError(problems=[Problem("--rounds", "", f"must be at least 1, got {args.rounds}")])
    r = compare(args.trial_a, args.trial_b, language=args.language, split=args.split, metric=args.metric,
                rounds=args.rounds, seed=args.seed)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(f"A: {r.file_a}\nB: {r.file_b}")
    print(f"{r.metric}: A {r.score_a:.4f}, B {r.score_b:.4f}, difference {r.difference:+.4f} "
          f"on {r.examples} examples")
    print(f"p-value {r.p_value:.4g} ({r.rounds} rounds, paired approximate randomization, two-sided)")
    return 0
