"""`finetune evaluate DIR`: score finished trials' saved models on (more) eval languages, as jobs, no retraining."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from finetune.cli.plan import add_submit_arguments

EPILOG = """examples:
  finetune evaluate runs/ces-slk --languages ukrainian --config config/ces-slk-ukr.json config/topic.json
  finetune evaluate runs/ces-slk --trials 3f9c1a2b7d04,8e01d2c4a9b7      # predictions again, for significance
  finetune evaluate runs/ces-slk --executor local --parallel 2

Submits an evaluation job per finished trial (job arrays through the same executors, manifest
and flags as `finetune submit`): each loads the trial's model (DIR/trials/<id>/model: the
checkpoint its protocol chose on the training languages; a LoRA trial's adapter on its pretrained
checkpoint), scores the eval and test splits of the languages (classification: accuracy and
macro P/R/F1; question answering: exact match and F1; causal LM: loss and perplexity), keeps the
per-example predictions in its logits/ folder and the metrics in evaluations.json (with the model
and dataset they are of), which `finetune collect` reads beside result.json. Nothing is trained
again. Without --languages, a trial's own eval
languages are scored again. A language the plan's configs do not have needs --config with the
layers that name its dataset. (Adding an eval language to the layers and running `finetune
plan`/`submit` does the same for the new language without this command: the trial ids do not
change, and submit sends the trained trials to be scored only.)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser("evaluate", help="score finished trials on more eval languages, as jobs (no retraining)",
                              description="Evaluate the saved models of a plan's finished trials.",
                              epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("plan_dir", metavar="DIR", help="a plan directory")
    p.add_argument("--languages", nargs="+", default=None, metavar="LANG",
                   help="eval languages (default: each trial's own)")
    p.add_argument("--trials", default=None, metavar="ID[,ID...]", help="only these trials (default: every finished one)")
    p.add_argument("--config", nargs="+", default=[], metavar="LAYER",
                   help="config layers that name the datasets of languages the plan does not have")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads of each evaluation")
    add_submit_arguments(p)
    p.set_defaults(func=_evaluate)


def _datasets_from_layers(files: list[str], languages: list[str], task: str
                          ) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """Resolved dataset entries (TRIAL_CONFIG form) of ``languages`` from config layers, and the
    content fingerprints of the local ones (hub mirrors are the hub's data: None)."""
    from finetune.errors import ConfigError, Problem
    from finetune.login.database import load_database
    from finetune.login.fingerprint import Fingerprints
    from finetune.login.layers import join_path, load_config, resolved_paths

    layered = load_config(files)
    cfg, paths = layered.value, resolved_paths(layered)
    database = load_database(paths["$.database"])
    mirrors = {k: paths.get(join_path("$.data.mirrors", k)) for k in (cfg.get("data") or {}).get("mirrors") or {}}
    out, prints, problems = {}, {}, []
    fp = Fingerprints()
    for lang in languages:
        name = (cfg.get("datasets") or {}).get(lang)
        if name is None:
            problems.append(Problem(layered.source_of("$.datasets"), f"$.datasets.{lang}", "not set in these layers"))
            continue
        entry = database.entry(lang, task, name)
        out[lang] = {**entry, "name": name, "language": lang, "espeak": database.espeak(lang),
                     "path": database.local_folder(entry, mirrors)}
        local = out[lang]["path"] and entry["dataset"] not in mirrors
        prints[lang] = fp.folder(out[lang]["path"]) if local else None
    fp.save()
    if problems:
        raise ConfigError(problems=problems)
    return out, prints


HEADLINE = ("macro_f1", "f1", "perplexity")  # classification, question answering, causal LM


def _headline(scored: dict[str, dict[str, dict[str, float]]]) -> str:
    """``russian test macro_f1 0.6123, ...``: each language's test (else eval) split, its task's main metric."""
    shown = []
    for lang, splits in scored.items():
        split = "test" if "test" in splits else "eval"
        metrics = splits.get(split) or {}
        name = next((m for m in HEADLINE if m in metrics), "loss")
        shown.append(f"{lang} {split} {name} {metrics.get(name, float('nan')):.4f}")
    return ", ".join(shown)


def _evaluate(args: argparse.Namespace) -> int:
    from finetune import layout
    from finetune.cli.plan import GUARD, submit_following
    from finetune.errors import Problem, UsageError
    from finetune.login.evaluations import current_scores, request_file
    from finetune.login.plan import load_plan
    from finetune.login.submit import Evaluate, submit

    plan = load_plan(args.plan_dir)
    wanted = set(args.trials.split(",")) if args.trials else None
    known = {t.id for t in plan.trials}
    if wanted and wanted - known:
        raise UsageError(problems=[Problem("--trials", "", f"not in the plan: {', '.join(sorted(wanted - known))}")])
    request = Evaluate(languages=args.languages, trials=wanted, threads=args.threads)
    if args.config and args.languages:
        groups = [plan.groups[t.group] for t in plan.trials if t.group in plan.groups]
        if groups:
            request.datasets, request.fingerprints = _datasets_from_layers(args.config, args.languages,
                                                                           groups[0]["config"]["task"])
    report = submit_following(
        lambda: submit(args.plan_dir, executor=args.executor, template=args.template, timeout=args.timeout,
                       throttle=args.throttle, dry_run=args.dry_run, max_array_size=args.max_array_size,
                       parallel=args.parallel, max_trials=None if args.yes else GUARD, evaluate=request), args)
    if not report.evaluating and not report.active:
        raise UsageError(problems=[Problem(str(args.plan_dir), "", "no finished trials to evaluate"
                                           + (f" ({len(report.unfinished)} not trained yet)" if report.unfinished else ""))])
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.dry_run:
        from finetune.cli._dry_run import dry_run_lines

        print("\n".join(dry_run_lines(report, args.plan_dir)))
    failed = []
    if not report.scheduler and not args.dry_run:  # they ran here: show the scores
        for tid in report.evaluating:
            tdir = layout.trial_dir(args.plan_dir, tid)
            if request_file(tdir).is_file():  # still asked for: the evaluation failed
                failed.append(tid)
                print(f"{tid}: evaluation failed; see {layout.log_file(tdir)}")
                continue
            scores = current_scores(tdir)
            langs = args.languages or plan.trial(tid).eval_languages
            print(f"{tid}: {_headline({lang: scores.get(lang) or {} for lang in langs})}")
    print(report.summary())
    if failed:
        print(f"{len(failed)} evaluations failed", file=sys.stderr)
        return 1
    print(f"`finetune collect {Path(args.plan_dir)}` reports them"
          + (" once the jobs are done (`finetune status`)" if report.scheduler and not args.dry_run else ""))
    return 0

