"""Collect a plan's trial results into one table: results.csv and results.md in the plan dir.

Reads only the documented files of a plan directory (plan.json, trials/<id>/{result,state,
config}.json), so it works on a plan that is still running, was half-submitted or lost trials:
every trial in plan.json gets one row, with its state (finished, failed with the reason,
running, preempted, missing). For every (model type, train set, eval language) the best
hyperparameters are chosen by an eval-split metric and their test metric is reported: choosing
on eval and reporting test keeps the test split out of model selection.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem, UsageError
from finetune.fileio import atomic_write_text

METRICS = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")
SPLITS = ("eval", "test")
LOWER_IS_BETTER = frozenset({"loss"})
STATES = ("finished", "pruned", "failed", "preempted", "running", "missing", "invalid")


@dataclass
class TrialRow:
    """One trial of the plan, whatever became of it."""

    trial_id: str
    model_type: str
    train_languages: list[str]
    eval_languages: list[str]
    hyperparameters: dict[str, Any]
    state: str  # one of STATES
    reason: str = ""
    # metrics[language][split][metric] -> value
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    best_step: int | None = None
    pruned_step: int | None = None  # a search's pruner stopped the trial at this training step

    @property
    def train_set(self) -> str:
        return train_set_name(self.train_languages)

    def metric(self, language: str, split: str, metric: str) -> float | None:
        value = self.metrics.get(language, {}).get(split, {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


@dataclass(frozen=True)
class BestCell:
    """The best finished trial of one (model type, train set, eval language) by the eval metric."""

    model_type: str
    train_set: str
    language: str
    trial_id: str
    hyperparameters: dict[str, Any]  # only the keys that vary in the plan
    eval_value: float
    test_value: float | None
    finished: int  # finished trials with this eval metric that competed for the cell
    total: int  # trials of the plan planned for the cell
    pruned_steps: tuple[int, ...] = ()  # the steps the cell's pruned trials were stopped at


@dataclass
class ResultsTable:
    plan_dir: Path
    metric: str
    rows: list[TrialRow]
    varying: list[str]  # hyperparameter names whose values differ between trials
    best: list[BestCell]

    @property
    def languages(self) -> list[str]:
        """Eval languages in the plan, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for lang in row.eval_languages:
                seen.setdefault(lang, None)
        return list(seen)

    @property
    def model_types(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.setdefault(row.model_type, None)
        return sorted(seen, key=_model_type_order)

    @property
    def train_sets(self) -> list[str]:
        seen = {row.train_set: row.train_languages for row in self.rows}
        return sorted(seen, key=lambda name: (len(seen[name]), name))

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for row in self.rows:
            out[row.state] = out.get(row.state, 0) + 1
        return {k: v for k, v in out.items() if v}

    def best_cell(self, model_type: str, train_set: str, language: str) -> BestCell | None:
        for cell in self.best:
            if (cell.model_type, cell.train_set, cell.language) == (model_type, train_set, language):
                return cell
        return None


def train_set_name(languages: Iterable[str]) -> str:
    """'polish+russian' for a union; order-independent so reruns name cells the same."""
    return "+".join(sorted(languages))


def _model_type_order(model_type: str) -> tuple[int, str]:
    return ({"normal": 0, "ipa": 1}.get(model_type, 2), model_type)


def collect(plan_dir: str | os.PathLike[str], *, metric: str = "macro_f1") -> ResultsTable:
    """Read every trial of ``plan_dir``; pure apart from reading files (writes nothing)."""
    plan_dir = Path(plan_dir)
    if metric not in METRICS:
        raise UsageError(problems=[Problem("--metric", "", f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")])
    plan_file = layout.plan_file(plan_dir)
    if not plan_file.is_file():
        raise UsageError(problems=[Problem(str(plan_file), "", "no plan here; make one with `finetune plan ... --output-dir DIR`")])
    plan = _read(plan_file)
    if not isinstance(plan, dict) or not isinstance(plan.get("trials"), list):
        raise UsageError(problems=[Problem(str(plan_file), "$.trials", "expected a list of trials")])
    rows = []
    for i, trial in enumerate(plan["trials"]):
        if not isinstance(trial, dict) or not isinstance(trial.get("id"), str):
            raise UsageError(problems=[Problem(str(plan_file), f"$.trials[{i}].id", "expected a trial with a string id")])
        rows.append(_row(plan_dir, trial))
    varying = _varying(rows)
    return ResultsTable(plan_dir, metric, rows, varying, _best(rows, metric, varying))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(problems=[Problem(str(path), "", f"cannot read: {e.strerror or e}")]) from None
    except json.JSONDecodeError as e:
        raise UsageError(problems=[Problem(str(path), "", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]) from None


def _try_read(path: Path) -> tuple[Any, str]:
    """(object, "") or (None, why): one broken trial file must not hide the other results."""
    if not path.is_file():
        return None, ""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{path}: unreadable ({e})"


def _row(plan_dir: Path, trial: dict[str, Any]) -> TrialRow:
    tdir = layout.trial_dir(plan_dir, trial["id"])
    hyper = dict(trial.get("hyperparameters") or {})
    config, _ = _try_read(layout.config_file(tdir))
    if isinstance(config, dict) and isinstance(config.get("hyperparameters"), dict):
        hyper = {**config["hyperparameters"], **hyper}
    row = TrialRow(
        trial_id=trial["id"],
        model_type=str(trial.get("model_type", "?")),
        train_languages=list(trial.get("train_languages") or []),
        eval_languages=list(trial.get("eval_languages") or []),
        hyperparameters=hyper,
        state="missing",
    )
    result, why = _try_read(layout.result_file(tdir))
    if why:
        row.state, row.reason = "invalid", why
        return row
    if layout.says_pruned(result):
        row.state, row.pruned_step = "pruned", result.get("pruned_step")
        row.reason = f"at step {row.pruned_step}"
        row.metrics = result.get("metrics") or {}
        return row
    if result is not None and not layout.says_finished(result):  # the rule submit and status follow
        row.state, row.reason = "invalid", f"{layout.result_file(tdir)}: does not say \"state\": \"finished\""
        return row
    if result is not None:
        problem = _check_result(layout.result_file(tdir), result)
        if problem:
            row.state, row.reason = "invalid", problem
            return row
        row.state = "finished"
        row.metrics = result.get("metrics") or {}
        row.best_step = result.get("best_step")
        if isinstance(result.get("hyperparameters"), dict):
            row.hyperparameters = {**row.hyperparameters, **result["hyperparameters"]}
        return row
    state, why = _try_read(layout.state_file(tdir))
    if why:
        row.state, row.reason = "invalid", why
    elif isinstance(state, dict) and state.get("state") in layout.TRIAL_STATES:
        row.state = str(state["state"])
        row.reason = str(state.get("reason") or "")
        if row.state == "finished":  # state says finished but the result is gone
            row.state, row.reason = "invalid", f"{layout.result_file(tdir)}: missing although {layout.STATE_FILE} says finished"
    return row


def _check_result(path: Path, result: dict[str, Any]) -> str:
    metrics = result.get("metrics")
    if metrics is None and result.get("workload") == "count":
        return ""  # the submit stand-in: finished, nothing to score
    if not isinstance(metrics, dict):
        return f"{path}: $.metrics: expected an object"
    for lang, splits in metrics.items():
        if not isinstance(splits, dict):
            return f"{path}: $.metrics.{lang}: expected an object of splits"
        for split, values in splits.items():
            if not isinstance(values, dict):
                return f"{path}: $.metrics.{lang}.{split}: expected an object of metrics"
    return ""


def _varying(rows: list[TrialRow]) -> list[str]:
    """Hyperparameters that differ between trials: these are what a grid varied."""
    keys: dict[str, set[str]] = {}
    for row in rows:
        for k, v in row.hyperparameters.items():
            keys.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    for row in rows:  # a key absent from some trials also varies
        for k in keys:
            if k not in row.hyperparameters:
                keys[k].add("<absent>")
    return sorted(k for k, vals in keys.items() if len(vals) > 1)


def _best(rows: list[TrialRow], metric: str, varying: list[str]) -> list[BestCell]:
    groups: dict[tuple[str, str, str], list[TrialRow]] = {}
    for row in rows:
        for lang in row.eval_languages:
            groups.setdefault((row.model_type, row.train_set, lang), []).append(row)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    out = []
    for (model_type, train_set, lang), members in groups.items():
        scored = [(r.metric(lang, "eval", metric), r) for r in members if r.state == "finished"]
        scored = [(v, r) for v, r in scored if v is not None]
        if not scored:
            continue
        # best value first; ties go to the smallest trial id so reruns pick the same trial
        value, best = min(scored, key=lambda vr: (-sign * vr[0], vr[1].trial_id))
        out.append(
            BestCell(
                model_type, train_set, lang, best.trial_id,
                {k: best.hyperparameters.get(k) for k in varying},
                value, best.metric(lang, "test", metric), len(scored), len(members),
                tuple(sorted(r.pruned_step for r in members if r.state == "pruned" and r.pruned_step is not None)),
            )
        )
    out.sort(key=lambda c: (_model_type_order(c.model_type), c.train_set.count("+"), c.train_set, c.language))
    return out


# ---------------------------------------------------------------- rendering (pure: text out)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _fmt_metric(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def csv_text(table: ResultsTable) -> str:
    """Every trial, every metric of every eval language: the machine-readable table."""
    langs = table.languages
    metric_cols = [(lang, split, m) for lang in langs for split in SPLITS for m in METRICS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["trial", "model_type", "train_set", "state", "reason", "best_step", *table.varying]
        + [f"{lang}/{split}/{m}" for lang, split, m in metric_cols]
    )
    for row in table.rows:
        w.writerow(
            [row.trial_id, row.model_type, row.train_set, row.state, row.reason,
             _fmt(row.best_step), *(_fmt(row.hyperparameters.get(k)) for k in table.varying)]
            + [_fmt_metric(row.metric(lang, split, m)) for lang, split, m in metric_cols]
        )
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_text(table: ResultsTable) -> str:
    """A human table: one row per trial, then the best hyperparameters per cell."""
    m = table.metric
    langs = table.languages
    counts = ", ".join(f"{n} {s}" for s, n in table.counts().items())
    lines = [f"# Results: {table.plan_dir.name}", "", f"{len(table.rows)} trials: {counts}.", ""]
    head = ["trial", "model", "train set", *table.varying, "state"]
    head += [f"{lang} {split} {m}" for lang in langs for split in SPLITS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        state = row.state + (f": {row.reason}" if row.reason else "")
        cells = [row.trial_id, row.model_type, row.train_set]
        cells += [_fmt(row.hyperparameters.get(k)) for k in table.varying]
        cells += [state]
        cells += [
            _fmt_metric(row.metric(lang, split, m)) if lang in row.eval_languages else "-"
            for lang in langs for split in SPLITS
        ]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", f"## Best hyperparameters per cell (chosen by eval {m}, reporting test {m})", ""]
    head = ["model", "train set", "eval language", "best trial", "hyperparameters", f"eval {m}", f"test {m}", "finished"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in table.best:
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in c.hyperparameters.items()) or "-"
        cells = [c.model_type, c.train_set, c.language, c.trial_id, hp,
                 _fmt_metric(c.eval_value), _fmt_metric(c.test_value) or "n/a", f"{c.finished}/{c.total}"]
        lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
    if not table.best:
        lines.append("| " + " | ".join(["n/a"] * len(head)) + " |")
    return "\n".join(lines) + "\n"


def write_tables(table: ResultsTable) -> tuple[Path, Path]:
    """Write results.csv and results.md into the plan dir, atomically."""
    csv_path = table.plan_dir / "results.csv"
    md_path = table.plan_dir / "results.md"
    atomic_write_text(csv_path, csv_text(table))
    atomic_write_text(md_path, markdown_text(table))
    return csv_path, md_path
