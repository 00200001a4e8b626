"""`finetune evaluate DIR`: score finished trials' saved models on (more) eval languages, no retraining."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  finetune evaluate runs/ces-slk --languages ukrainian --config config/ces-slk-ukr.json config/topic.json
  finetune evaluate runs/ces-slk --trials 3f9c1a2b7d04,8e01d2c4a9b7      # predictions again, for significance

Loads each finished trial's model (DIR/trials/<id>/model: the checkpoint its protocol chose on the
training languages; a LoRA trial's adapter on its pretrained checkpoint), scores the eval and test
splits of the languages (classification: accuracy and macro P/R/F1; question answering: exact
match and F1; causal LM: loss and perplexity), keeps the per-example
predictions in its logits/ folder and the metrics in evaluations.json, which `finetune collect`
reads beside result.json. Nothing is trained again. Without --languages, a trial's own eval
languages are scored again. A language the plan's configs do not have needs --config with the
layers that name its dataset. Runs here, one trial after another.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser("evaluate", help="score finished trials on more eval languages (no retraining)",
                              description="Evaluate the saved models of a plan's finished trials.",
                              epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("plan_dir", metavar="DIR", help="a plan directory")
    p.add_argument("--languages", nargs="+", default=None, metavar="LANG",
                   help="eval languages (default: each trial's own)")
    p.add_argument("--trials", default=None, metavar="ID[,ID...]", help="only these trials (default: every finished one)")
    p.add_argument("--config", nargs="+", default=[], metavar="LAYER",
                   help="config layers that name the datasets of languages the plan does not have")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_evaluate)


def _datasets_from_layers(files: list[str], languages: list[str], task: str) -> dict[str, dict[str, Any]]:
    """Resolved dataset entries (TRIAL_CONFIG form) of ``languages`` from config layers."""
    from finetune.errors import ConfigError, Problem
    from finetune.login.database import load_database
    from finetune.login.layers import load_config, resolved_paths

    layered = load_config(files)
    cfg, paths = layered.value, resolved_paths(layered)
    database = load_database(paths["$.database"])
    mirrors = {k: paths.get(f"$.data.mirrors.{k}") for k in (cfg.get("data") or {}).get("mirrors") or {}}
    out, problems = {}, []
    for lang in languages:
        name = (cfg.get("datasets") or {}).get(lang)
        if name is None:
            problems.append(Problem(layered.source_of("$.datasets"), f"$.datasets.{lang}", "not set in these layers"))
            continue
        entry = database.entry(lang, task, name)
        out[lang] = {**entry, "name": name, "language": lang, "espeak": database.espeak(lang),
                     "path": database.local_folder(entry, mirrors)}
    if problems:
        raise ConfigError(problems=problems)
    return out


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
    from finetune.compute.evaluate import evaluate_trial
    from finetune.errors import Problem, UsageError
    from finetune.login.plan import load_plan

    plan = load_plan(args.plan_dir)
    wanted = set(args.trials.split(",")) if args.trials else None
    known = {t.id for t in plan.trials}
    if wanted and wanted - known:
        raise UsageError(problems=[Problem("--trials", "", f"not in the plan: {', '.join(sorted(wanted - known))}")])
    trials = [t for t in plan.trials if (wanted is None or t.id in wanted)
              and layout.is_finished(layout.trial_dir(args.plan_dir, t.id))]
    if not trials:
        raise UsageError(problems=[Problem(str(args.plan_dir), "", "no finished trials to evaluate")])
    datasets: dict[str, dict[str, Any]] = {}
    for group in plan.groups.values():  # languages some build of this plan configured
        for lang, entry in (group.get("datasets") or {}).items():
            datasets.setdefault(lang, entry)
    if args.config and args.languages:
        task = plan.groups[trials[0].group]["config"]["task"]
        datasets.update(_datasets_from_layers(args.config, args.languages, task))
    for t in trials:
        langs = args.languages or t.eval_languages
        scored = evaluate_trial(layout.trial_dir(args.plan_dir, t.id), langs,
                                datasets={k: v for k, v in datasets.items() if k in langs}, threads=args.threads)
        print(f"{t.id}: {_headline(scored)}")
    print(f"evaluated {len(trials)} trials; `finetune collect {Path(args.plan_dir)}` reports them")
    return 0
