"""Paired approximate randomization test between two systems scored on the same examples.

Under the null hypothesis the two systems are interchangeable, so swapping their predictions on
any example is as likely as not. Each round swaps every pair with probability 1/2 and recomputes
the difference of the metric; the p-value is the share of rounds whose absolute difference is at
least the observed one (with the usual +1 correction, Noreen 1989; Riezler and Maxwell 2005).

Inputs are the logits files the trainer dumps (``--dump-logits``):
``<trial-id>-<language>-<split>.npz`` with arrays ``logits`` and ``labels``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune import layout
from finetune.errors import Problem, UsageError

SCORES = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class SignificanceResult:
    metric: str
    score_a: float
    score_b: float
    difference: float  # score_a - score_b
    p_value: float
    rounds: int
    examples: int
    file_a: str = ""
    file_b: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores(preds: Any, labels: Any, metric: str) -> Any:
    """The metric of each row of ``preds`` (rounds, n) against ``labels`` (n,), vectorised.

    ``macro_f1`` matches scikit-learn's ``f1_score(average="macro", zero_division=0)``: the mean
    over the classes that occur in the labels or in that row's predictions.
    """
    import numpy as np

    preds = np.atleast_2d(preds)
    labels = np.asarray(labels)
    if metric == "accuracy":
        return (preds == labels).mean(axis=1)
    if metric != "macro_f1":
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCORES)}")
    classes = np.union1d(np.unique(labels), np.unique(preds))
    total = np.zeros(preds.shape[0])
    present = np.zeros(preds.shape[0])
    for c in classes:
        is_pred = preds == c
        is_true = labels == c
        tp = (is_pred & is_true).sum(axis=1)
        denom = is_pred.sum(axis=1) + is_true.sum()
        total += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present += denom > 0
    return total / np.maximum(present, 1)


def approximate_randomization(
    preds_a: Any, preds_b: Any, labels: Any, *, metric: str = "macro_f1", rounds: int = 10000, seed: int = 0,
    chunk: int = 1000,
) -> SignificanceResult:
    """Two-sided paired approximate randomization test of ``metric(a) - metric(b)``."""
    import numpy as np

    a, b, y = (np.asarray(x, dtype=np.int64) for x in (preds_a, preds_b, labels))
    if not (a.shape == b.shape == y.shape) or a.ndim != 1:
        raise ValueError(f"predictions {a.shape}, {b.shape} and labels {y.shape} must be equal 1-d shapes")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    score_a, score_b = float(scores(a, y, metric)[0]), float(scores(b, y, metric)[0])
    observed = abs(score_a - score_b)
    rng = np.random.default_rng(seed)
    at_least = 0
    done = 0
    while done < rounds:
        r = min(chunk, rounds - done)
        swap = rng.random((r, y.size)) < 0.5
        sa = scores(np.where(swap, b, a), y, metric)
        sb = scores(np.where(swap, a, b), y, metric)
        # a tiny slack so that float noise does not turn an equal difference into a smaller one
        at_least += int((np.abs(sa - sb) >= observed - 1e-12).sum())
        done += r
    return SignificanceResult(
        metric=metric, score_a=score_a, score_b=score_b, difference=score_a - score_b,
        p_value=(at_least + 1) / (rounds + 1), rounds=rounds, examples=int(y.size),
    )


def load_logits(path: str | Path) -> tuple[Any, Any]:
    """``(logits, labels)`` from a dump; errors name the file."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["logits"], data["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(problems=[Problem(str(path), "", f"not a logits dump (logits, labels): {e}")]) from None


def find_logits(where: str | Path, *, language: str | None, split: str, flag: str) -> Path:
    """A dump file given directly, or the one of ``language``/``split`` in a trial directory."""
    where = Path(where)
    if where.is_file():
        return where
    if not where.is_dir():
        raise UsageError(problems=[Problem(flag, "", f"{where} is neither a trial directory nor a logits file")])
    folder = layout.logits_dir(where) if layout.logits_dir(where).is_dir() else where
    found = sorted(folder.glob(layout.logits_glob(_trial_id(where), language, split)))
    if len(found) != 1:
        what = f"language {language!r}, split {split!r}" if language else f"split {split!r}"
        detail = "none" if not found else ", ".join(p.name for p in found)
        hint = "; choose one with --language" if len(found) > 1 and not language else ""
        raise UsageError(
            problems=[Problem(flag, "", f"expected one logits dump for {what} in {folder} "
                              f"(written by --dump-logits), found {detail}{hint}")]
        )
    return found[0]


def _trial_id(trial_dir: Path) -> str | None:
    import json

    try:
        return str(json.loads(layout.config_file(trial_dir).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compare(
    a: str | Path, b: str | Path, *, language: str | None = None, split: str = "eval", metric: str = "macro_f1",
    rounds: int = 10000, seed: int = 0,
) -> SignificanceResult:
    """Test two trials (directories or dump files) on the same split of the same language."""
    file_a = find_logits(a, language=language, split=split, flag="TRIAL_A")
    file_b = find_logits(b, language=language, split=split, flag="TRIAL_B")
    logits_a, labels_a = load_logits(file_a)
    logits_b, labels_b = load_logits(file_b)
    if labels_a.shape != labels_b.shape or (labels_a != labels_b).any():
        raise UsageError(
            problems=[Problem(str(file_b), "labels", f"differ from those of {file_a}: the test needs the same "
                              "examples in the same order")]
        )
    result = approximate_randomization(
        logits_a.argmax(axis=1), logits_b.argmax(axis=1), labels_a, metric=metric, rounds=rounds, seed=seed
    )
    return SignificanceResult(**{**result.to_dict(), "file_a": str(file_a), "file_b": str(file_b)})
