"""Per-example predictions of finished trials: where they live, reading them, and what is missing.

The trainer keeps, for every eval language and split, ``logits`` (n, classes) and ``labels`` (n,)
(question answering: ``exact_match``, ``f1`` per question; causal LM: ``loss_sum``, ``tokens`` per
block) in ``<trial>/logits/<trial-id>-<language>-<split>.npz`` (``training.logit_directory`` moves
them; ``training.dump_logits`` false turns them off). A few kilobytes per language, so they are
kept by default and a significance test never needs a rerun.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem, UsageError

# How to get predictions that were not kept; `finetune evaluate` re-scores a trained model.
HOW_TO_GET = ("score them again from the trained models with `finetune evaluate {plan} --trials {ids}` "
              "(keeps the predictions; no retraining)")


def prediction_path(trial_dir: str | Path, trial_id: str, language: str, split: str,
                    config: dict[str, Any] | None = None) -> Path:
    """Where the trial in ``trial_dir`` keeps its predictions on ``language``/``split``."""
    trial_dir = Path(trial_dir)
    logdir = ((config or {}).get("training") or {}).get("logit_directory")
    folder = Path(logdir) if logdir else layout.logits_dir(trial_dir)
    return folder / layout.logits_name(trial_id, language, split)


def load_logits(path: str | Path) -> tuple[Any, Any]:
    """``(logits, labels)`` from a dump; errors name the file."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["logits"], data["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(problems=[Problem(str(path), "", f"not a logits dump (logits, labels): {e}")]) from None


@dataclass(frozen=True)
class Predictions:
    trial_id: str
    language: str
    split: str
    predicted: Any  # (n,) int64: argmax of the logits
    labels: Any  # (n,) int64
    path: Path


def load_predictions(plan_dir: str | Path, trial_id: str, language: str, split: str,
                     metric: str = "macro_f1") -> Predictions | None:
    """The predictions of one trial of a plan, or None when they were not kept.

    Classification metrics: the argmax labels and the gold labels of the logits dump. The
    per-example metrics of question answering (``exact_match``, ``f1``: ``predicted`` is each
    question's score, ``labels`` all ones) and causal LM (``loss``, ``perplexity``: each block's
    summed token loss, ``labels`` its token count) from their score dumps; the statistic is
    sum(predicted) / sum(labels) (finetune.analysis.significance.statistic)."""
    import json

    import numpy as np

    tdir = layout.trial_dir(plan_dir, trial_id)
    try:
        config = json.loads(layout.config_file(tdir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    path = prediction_path(tdir, trial_id, language, split, config if isinstance(config, dict) else None)
    if not path.is_file():
        return None
    if metric in EXAMPLE_METRICS:
        return _example_scores(path, trial_id, language, split, metric)
    logits, labels = load_logits(path)
    return Predictions(trial_id, language, split, np.asarray(logits).argmax(axis=1).astype(np.int64),
                       np.asarray(labels, dtype=np.int64), path)


EXAMPLE_METRICS = ("exact_match", "f1", "loss", "perplexity")  # = significance.EXAMPLE_SCORES


def _example_scores(path: Path, trial_id: str, language: str, split: str, metric: str) -> Predictions:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise UsageError(problems=[Problem(str(path), "", f"not a dump file (.npz): {e}")]) from None
    key = "loss_sum" if metric in ("loss", "perplexity") else metric
    if key not in arrays:
        raise UsageError(problems=[Problem(str(path), key, f"no per-example {key!r} in this dump (has: "
                                           f"{', '.join(sorted(arrays))}); is {metric} a metric of this task type?")])
    values = np.asarray(arrays[key], dtype=np.float64)
    if key == "loss_sum":
        if "tokens" not in arrays:
            raise UsageError(problems=[Problem(str(path), "tokens", "missing: the loss needs each block's token count")])
        weights = np.asarray(arrays["tokens"], dtype=np.float64)
    else:
        weights = np.ones_like(values)
    return Predictions(trial_id, language, split, values, weights, path)


def missing_error(plan_dir: str | Path, missing: dict[str, list[str]], split: str) -> UsageError:
    """The error for trials without kept predictions: which ones, on what, and how to get them."""
    lines = [f"{tid} ({', '.join(sorted(langs))})" for tid, langs in sorted(missing.items())]
    how = HOW_TO_GET.format(plan=plan_dir, ids=",".join(sorted(missing)))
    return UsageError(problems=[Problem(
        str(plan_dir), "", f"{len(missing)} trial(s) kept no per-example predictions on the {split} split "
        f"(trained with training.dump_logits false?): {'; '.join(lines)}; {how}")])


def majority_baseline(labels: Any, metric: str) -> float | None:
    """The score of always predicting the most frequent label (None for loss, which has none)."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0 or metric == "loss":
        return None
    classes, counts = np.unique(labels, return_counts=True)
    share = counts.max() / labels.size
    k = len(classes)  # scikit-learn's macro average: classes in the labels or the predictions
    if metric == "accuracy":
        return float(share)
    if metric == "macro_f1":
        return float(2 * share / (1 + share) / k)
    if metric == "macro_precision":
        return float(share / k)
    if metric == "macro_recall":
        return float(1 / k)
    raise ValueError(f"unknown metric {metric!r}")
