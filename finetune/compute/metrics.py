"""Classification metrics: loss, accuracy and macro precision/recall/F1 (scikit-learn).

Macro averages follow scikit-learn's convention: the classes that occur in the labels or the
predictions, each weighted equally; a class never predicted counts as precision 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRICS = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
LOWER_IS_BETTER = frozenset({"loss"})


def classification_metrics(logits: Any, labels: Sequence[int] | Any, *, loss: float | None = None) -> dict[str, float]:
    """Metrics of one split from its logits ``(n, classes)`` and integer labels ``(n,)``.

    ``loss`` is the mean cross-entropy when the caller computed it; otherwise it is computed from
    the logits (in float64, so it does not depend on the batch order).
    """
    import numpy as np
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    if labels.size == 0:
        raise ValueError("no examples to score")
    preds = logits.argmax(axis=1)
    if loss is None:
        loss = cross_entropy(logits, labels)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    return {
        "loss": float(loss),
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def cross_entropy(logits: Any, labels: Any) -> float:
    """Mean cross-entropy of integer labels under softmax(logits), numerically stable."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return float((log_z - shifted[np.arange(len(labels)), labels]).mean())


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Strictly better than the best so far (ties keep the earlier checkpoint)."""
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best
