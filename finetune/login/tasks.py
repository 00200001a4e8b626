"""Task types: what each needs from a dataset entry and which metrics it reports.

The one place that knows the task types; the planner checks entries with ``entry_problems``
before anything runs, the trainer and ``collect`` read the metric names and their direction.
Pure (no I/O, no heavy imports): this runs on the login node.

* ``classification``: ``train_features`` joined into one input, ``eval_feature`` the label column,
  ``classes`` the number of labels.
* ``question-answering``: ``train_features`` = [question, context], ``eval_feature`` the SQuAD-style
  answers column ({"text": [...], "answer_start": [...]}).
* ``causal-lm``: ``train_features`` the text column(s); no label.
"""

from __future__ import annotations

from typing import Any

from finetune.errors import Problem

TASK_TYPES = ("classification", "question-answering", "causal-lm")
METRICS = {
    "classification": ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"),
    "question-answering": ("loss", "exact_match", "f1"),
    "causal-lm": ("loss", "perplexity"),
}
ALL_METRICS = tuple(dict.fromkeys(m for ms in METRICS.values() for m in ms))
DEFAULT_METRIC = {"classification": "macro_f1", "question-answering": "f1", "causal-lm": "loss"}
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def task_type(entry: dict[str, Any]) -> str:
    return str(entry.get("task_type") or "classification")


def entry_problems(entry: dict[str, Any], *, source: str, where: str) -> list[Problem]:
    """What a database entry lacks for its task type (``where`` is its JSON path)."""
    kind = task_type(entry)
    problems = []
    feats = entry.get("train_features")
    n_feats = len(feats) if isinstance(feats, list) else 1
    if kind not in TASK_TYPES:
        return [Problem(source, f"{where}.task_type", f"unknown task type {kind!r} (choose {', '.join(TASK_TYPES)})")]
    if kind == "classification" and entry.get("classes") is None:
        problems.append(Problem(source, f"{where}.classes", "classification needs the number of classes"))
    if kind == "question-answering":
        if n_feats != 2:
            problems.append(Problem(source, f"{where}.train_features",
                                    f"question-answering needs two features [question, context], got {feats!r}"))
        if not entry.get("eval_feature"):
            problems.append(Problem(source, f"{where}.eval_feature",
                                    'question-answering needs the SQuAD answers column ({"text": [...], "answer_start": [...]})'))
        for key in ("classes", "labels"):
            if entry.get(key) is not None:
                problems.append(Problem(source, f"{where}.{key}", "question-answering has no classes; remove it"))
    if kind == "causal-lm":
        for key in ("classes", "labels"):
            if entry.get(key) is not None:
                problems.append(Problem(source, f"{where}.{key}", "causal-lm has no labels; remove it"))
    return problems


def metric_problems(kind: str, metric: Any, *, source: str, path: str = "$.training.metric") -> list[Problem]:
    """The selection metric must be one the task type reports."""
    if kind in METRICS and metric not in METRICS[kind]:
        return [Problem(source, path, f"{metric!r} is not a {kind} metric (choose {', '.join(METRICS[kind])}; "
                                      f"e.g. --set training.metric={DEFAULT_METRIC[kind]})")]
    return []
