#!/usr/bin/env python3
"""finetune-exp.py: fine-tune one experiment now, in this process (the interface users know).

Builds one trial from the config layers, the languages and the model type (the same trial, with
the same id, that ``finetune plan`` would make), writes it under ``--output-dir`` (default
``runs/exp-JOB_NUMBER``) and runs the trainer on it. Rerunning the same command resumes an
interrupted run and leaves a finished one alone. Under ``torchrun``/``srun`` every process runs
this script; rank 0 writes the plan, the others wait for it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from finetune.cli import HelpFormatter, run_script  # noqa: E402
from finetune.errors import Problem, UsageError  # noqa: E402

EPILOG = """examples:
  scripts/finetune-exp.py 17 config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json \\
      --train-langs russian --eval-langs russian polish --model-type normal --cpus 4
  scripts/finetune-exp.py 18 config/finetune-rus-pol.json config/finetune-rus-pol-topic.json \\
      --train-langs russian polish --eval-langs polish --model-type ipa --dump-logits --logit-directory logits/
  torchrun --nproc-per-node 2 scripts/finetune-exp.py 19 CONFIG... --train-langs polish --eval-langs polish \\
      --model-type normal --set training.strategy=fsdp

Outputs: OUTPUT_DIR/trials/<id>/{result.json,metrics.jsonl,model/,state.json}; logits (with
--dump-logits) as <id>-<language>-<split>.npz in --logit-directory or the trial's logits/.
Exit codes: 0 finished, 1 failed, 2 bad input, 75 preempted (run again to resume).
"""

JOB_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune-exp.py", description="Fine-tune one nanoGPT classifier experiment in this process.",
        epilog=EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("job_number", metavar="JOB_NUMBER", help="names the output folder runs/exp-JOB_NUMBER")
    p.add_argument("configs", metavar="CONFIG", nargs="+", help="config layers, merged in order after default.json")
    p.add_argument("--train-langs", nargs="+", required=True, metavar="L", help="languages to train on")
    p.add_argument("--eval-langs", nargs="+", required=True, metavar="L", help="languages to evaluate on")
    p.add_argument("--model-type", required=True, choices=["normal", "ipa"], help="which pretrained model")
    p.add_argument("--cpus", type=int, metavar="N", help="torch CPU threads (default: SLURM_CPUS_PER_TASK or all)")
    p.add_argument("--dump-logits", action="store_true", help="write eval/test logits and labels per language")
    p.add_argument("--logit-directory", metavar="DIR", help="where --dump-logits writes (implies --dump-logits)")
    p.add_argument("--output-dir", metavar="DIR", help="plan directory (default: runs/exp-JOB_NUMBER)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. hyperparameters.learning_rate=1e-4 (repeatable)")
    return p


def check_args(args: argparse.Namespace, languages: list[str]) -> list[Problem]:
    """Every problem with the flags at once (pure: the merged config's languages are passed in)."""
    problems = []
    if not JOB_NUMBER.match(args.job_number):
        problems.append(Problem("JOB_NUMBER", "", f"{args.job_number!r}: use letters, digits, '.', '_' or '-'"))
    if args.cpus is not None and args.cpus < 1:
        problems.append(Problem("--cpus", "", f"must be at least 1, got {args.cpus}"))
    for flag, langs in (("--train-langs", args.train_langs), ("--eval-langs", args.eval_langs)):
        for lang in langs:
            if lang not in languages:
                close = difflib.get_close_matches(lang, languages, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sorted(languages)) or "none"
                problems.append(Problem(flag, "", f"{lang!r} is not a language of the config "
                                                  f"($.datasets has {known}){hint}"))
        if len(set(langs)) != len(langs):
            problems.append(Problem(flag, "", "lists a language twice"))
    if args.logit_directory is not None and Path(args.logit_directory).exists() \
            and not Path(args.logit_directory).is_dir():
        problems.append(Problem("--logit-directory", "", f"{args.logit_directory} exists and is not a directory"))
    return problems


def prepare(args: argparse.Namespace) -> Path:
    """Check the flags, build and write the one-trial plan; return the trial directory."""
    from finetune.layout import config_file, trial_dir
    from finetune.login.layers import load_config
    from finetune.login.plan import build_plan, materialize_trial, write_plan

    missing = [Problem("CONFIG", "", f"{f}: no such file") for f in args.configs if not Path(f).is_file()]
    if missing:
        raise UsageError(problems=missing)
    layered = load_config(args.configs, args.overrides)
    datasets = layered.value.get("datasets")
    problems = check_args(args, list(datasets) if isinstance(datasets, dict) else [])
    if problems:
        raise UsageError(problems=problems)
    out = Path(args.output_dir or Path("runs") / f"exp-{args.job_number}")
    grid = out / "finetune-exp-grids" / f"{'+'.join(sorted(args.train_langs))}--{'+'.join(sorted(args.eval_langs))}.json"
    grid_text = json.dumps({"languages": {"train": sorted(args.train_langs), "eval": sorted(args.eval_langs)}},
                           indent=2) + "\n"
    main = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    if main:
        from finetune.fileio import atomic_write_text

        if not grid.is_file() or grid.read_text(encoding="utf-8") != grid_text:
            atomic_write_text(grid, grid_text)
    else:
        _wait_for(grid)
    plan = build_plan(args.configs, args.overrides, grid_config=str(grid), model_types=(args.model_type,))
    (trial,) = plan.trials
    folder = trial_dir(out, trial.id)
    if main:
        write_plan(plan, out)
        materialize_trial(out, trial.id)
    else:
        _wait_for(config_file(folder))
    return folder


def _wait_for(path: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise UsageError(problems=[Problem(str(path), "", "rank 0 did not write it in time")])
        time.sleep(0.5)


def main(args: argparse.Namespace) -> int:
    folder = prepare(args)
    print(f"trial {folder.name}: {folder}", file=sys.stderr, flush=True)
    from finetune.compute.trainer import run
    from finetune.layout import EXIT_FINISHED, result_file

    code = run(folder, dump_logits=bool(args.dump_logits or args.logit_directory),
               logit_directory=args.logit_directory, threads=args.cpus)
    if code == EXIT_FINISHED:
        print(f"result: {result_file(folder)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(run_script(build_parser(), main))
