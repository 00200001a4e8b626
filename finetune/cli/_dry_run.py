"""What a dry run shows: the trials that would run and the first rendered script (shared by plan,
matrix and submit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_ROWS = 50


def trial_table(plan_dir: str | Path, trial_ids: list[str]) -> list[str]:
    """One line per trial: id, model type, train set, eval languages, the varying hyperparameters."""
    from finetune.login.plan import load_plan

    plan = load_plan(plan_dir)
    wanted = set(trial_ids)
    trials = [t for t in plan.trials if t.id in wanted]
    varying = varying_hyperparameters(trials)
    head = ["trial", "model", "train set", "eval languages", *varying]
    rows = [[t.id, t.model_type, "+".join(sorted(t.train_languages)), ",".join(t.eval_languages),
             *(str(t.hyperparameters.get(k)) for k in varying)] for t in trials]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"{len(trials)} trials would run:", fmt.format(*head)]
    lines += [fmt.format(*r) for r in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        lines.append(f"... and {len(rows) - MAX_ROWS} more")
    return lines


def varying_hyperparameters(trials: list[Any]) -> list[str]:
    """The hyperparameters whose value is not the same in every trial, sorted."""
    from finetune.login.identity import canonical_json

    values: dict[str, set[str]] = {}
    for t in trials:
        for k, v in t.hyperparameters.items():
            values.setdefault(k, set()).add(canonical_json(v))
    return sorted(k for k, vs in values.items() if len(vs) > 1)


def dry_run_lines(report: Any, plan_dir: str | Path) -> list[str]:
    """The table and the first script's text (before the caller's own last line)."""
    arrays = getattr(report, "arrays", None) or []
    ids = [t for job in arrays for t in getattr(job, "trial_ids", [])]
    lines = trial_table(plan_dir, ids) if ids else ["no trials would run"]
    scripts = [job.script_path for job in arrays if getattr(job, "script_path", None)]
    if scripts and Path(scripts[0]).is_file():
        lines += ["", f"--- {scripts[0]} (first of {len(scripts)} script(s)) ---",
                  Path(scripts[0]).read_text(encoding="utf-8").rstrip("\n"), "---"]
    return lines
