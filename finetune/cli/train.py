"""`finetune significance`: conditions of a plan compared over seeds and cells, or two trials.

(`finetune train TRIAL_DIR` itself is registered in cli/submit.py.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finetune import layout
from finetune.errors import Problem, UsageError

EPILOG = """examples:
  finetune significance runs/ces-slk                                   # IPA vs normal text, every cell and pooled
  finetune significance runs/ces-slk --a learning_rate=1e-4 --b learning_rate=1e-3 --language czech
  finetune significance runs/ces-slk --selection each-language --json
  finetune significance runs/rus-pol/trials/3f9c1a2b7d04 runs/rus-pol/trials/8e01d2c4a9b7 --language polish

With one plan directory: compares condition A (default model_type=ipa) with condition B (default
model_type=normal) in every cell (train set x eval language, plus the model type when the
conditions set something else) on the configurations the plan's selection protocol chooses (as in
`finetune collect`). Seed s of A is paired with seed s of B on the same examples; a paired
approximate randomization test stratified by seed pools them, and a bootstrap over examples gives
the confidence interval of A - B. Prints one row per cell (p also Holm-adjusted over the cells) and
the result pooled over the matrix. Uses the per-example predictions the trainer keeps by default
(training.dump_logits); trials without them are listed with how to get them. Question answering
(exact_match, f1 per question) and causal LM (loss, perplexity: token-weighted over blocks, lower
is better) are tested the same way on their per-example scores; the metric defaults to the plan's
training.metric.

With two trial directories (or two logits .npz files): the same test between two single trials.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.analysis.significance import EXAMPLE_SCORES, SCORES
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser(
        "significance", help="paired significance test: two conditions of a plan, or two trials",
        description="Is condition A's score different from condition B's on the same examples? Swaps "
                    "the two sides' predictions per example at random (within each seed) and counts how "
                    "often the difference is at least the observed one.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="DIR | TRIAL_A TRIAL_B",
                   help="a plan directory; or two trial directories or logits .npz files")
    p.add_argument("--a", default=None, metavar="KEY=VALUE[,...]",
                   help="condition A in a plan (default: model_type=ipa)")
    p.add_argument("--b", default=None, metavar="KEY=VALUE[,...]",
                   help="condition B in a plan (default: model_type=normal)")
    p.add_argument("--language", action="append", default=None,
                   help="eval language (repeatable; with two trials: needed when they have several)")
    p.add_argument("--split", default=None, choices=["eval", "test"],
                   help="split (default: test for a plan, eval for two trials)")
    p.add_argument("--metric", default=None, choices=SCORES + EXAMPLE_SCORES,
                   help="metric (default: a plan's training.metric, else macro_f1; question answering: "
                        "exact_match or f1; causal LM: loss or perplexity, lower is better)")
    p.add_argument("--selection", default=None, choices=("train-languages", "each-language"),
                   help="how configurations are chosen in a plan (default: the plan's training.selection)")
    p.add_argument("--rounds", type=int, default=10000, help="randomization and bootstrap rounds (default: 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval level (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomization (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_significance)


def _significance(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise UsageError(problems=[Problem("--rounds", "", f"must be at least 1, got {args.rounds}")])
    if not 0 < args.confidence < 1:
        raise UsageError(problems=[Problem("--confidence", "", f"must be between 0 and 1, got {args.confidence}")])
    if len(args.paths) == 1:
        return _conditions(args)
    if len(args.paths) != 2:
        raise UsageError(problems=[Problem("DIR | TRIAL_A TRIAL_B", "", f"expected one plan directory or two "
                                           f"trials, got {len(args.paths)} paths")])
    for flag in ("a", "b", "selection"):
        if getattr(args, flag) is not None:
            raise UsageError(problems=[Problem(f"--{flag}", "", "applies to a plan directory, not to two trials")])
    return _two_trials(args)


def _conditions(args: argparse.Namespace) -> int:
    from finetune.analysis.comparison import compare_conditions, comparison_text, parse_condition
    from finetune.analysis.results import collect

    plan = Path(args.paths[0])
    if not layout.plan_file(plan).is_file():
        raise UsageError(problems=[Problem(str(plan), "", f"not a plan directory (no {layout.PLAN_FILE}); give a plan "
                                           "directory, or two trial directories")])
    table = collect(plan, metric=args.metric or _plan_metric(plan), selection=args.selection)
    a = parse_condition(args.a or "model_type=ipa", "--a")
    b = parse_condition(args.b or "model_type=normal", "--b")
    cmp = compare_conditions(table, a, b, split=args.split or "test", languages=args.language,
                             rounds=args.rounds, seed=args.seed, confidence=args.confidence)
    print(json.dumps(cmp.to_dict(), indent=2) if args.json else comparison_text(cmp), end="" if not args.json else "\n")
    return 0


def _plan_metric(plan: Path) -> str:
    """The plan's selection metric (training.metric, one for every group) when the test scores
    it: f1 for a question-answering plan, loss for a causal-LM one; else macro_f1."""
    from finetune.analysis.significance import EXAMPLE_SCORES, SCORES

    try:
        data = json.loads(layout.plan_file(plan).read_text(encoding="utf-8"))
        metrics = {((g.get("config") or {}).get("training") or {}).get("metric")
                   for g in (data.get("groups") or {}).values()}
    except (OSError, ValueError, AttributeError):
        return "macro_f1"
    if len(metrics) == 1 and (m := metrics.pop()) in SCORES + EXAMPLE_SCORES:
        return str(m)
    return "macro_f1"


def _two_trials(args: argparse.Namespace) -> int:
    from finetune.analysis.significance import compare

    languages = args.language or []
    if len(languages) > 1:
        raise UsageError(problems=[Problem("--language", "", "give one language when comparing two trials")])
    r = compare(args.paths[0], args.paths[1], language=languages[0] if languages else None,
                split=args.split or "eval", metric=args.metric or "macro_f1", rounds=args.rounds, seed=args.seed)
    if args.json:
        print(json.dumps({**r.to_dict(), "better": r.better}, indent=2))
        return 0
    print(f"A: {r.file_a}\nB: {r.file_b}")
    print(f"{r.metric}: A {r.score_a:.4f}, B {r.score_b:.4f}, difference {r.difference:+.4f} "
          f"on {r.examples} examples" + ("; lower is better" if r.lower_is_better else ""))
    print(f"p-value {r.p_value:.4g} ({r.rounds} rounds, paired approximate randomization, two-sided)")
    return 0
