"""Metrics of each task type, all fractions 0-1 except loss and perplexity.

* classification: loss, accuracy and macro precision/recall/F1 (scikit-learn). Macro averages
  follow scikit-learn's convention: the classes that occur in the labels or the predictions,
  each weighted equally; a class never predicted counts as precision 0.
* question-answering: SQuAD's ``exact_match`` and ``f1`` (best over the gold answers, averaged
  over questions) after SQuAD's answer normalisation (lower case, no punctuation, no English
  articles, single spaces); punctuation is every Unicode punctuation character, as in MLQA's
  evaluation, so the quotes and dashes of other languages are dropped too.
* causal-lm: ``loss`` (mean cross-entropy per predicted token) and ``perplexity`` = exp(loss).

Lower is better for ``loss`` and ``perplexity`` (``LOWER_IS_BETTER``), higher for the rest.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from finetune.login.tasks import ALL_METRICS, LOWER_IS_BETTER  # noqa: F401  (re-exported)
from finetune.login.tasks import METRICS as TASK_METRICS

METRICS = TASK_METRICS["classification"]


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


# --- question answering (SQuAD) ---------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and English articles removed, single spaces."""
    text = text.lower()
    text = "".join(c for c in text if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised whitespace tokens (SQuAD's; two empty answers match)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]], *, loss: float | None = None) -> dict[str, float]:
    """``exact_match`` and ``f1`` as fractions 0-1: each question's best over its gold answers, averaged.

    A question without gold answers scores 1 only for an empty prediction (SQuAD 2.0's rule).
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    if not predictions:
        raise ValueError("no examples to score")
    em = f1 = 0.0
    for pred, answers in zip(predictions, golds, strict=True):
        answers = list(answers) or [""]
        em += max(exact_match(pred, g) for g in answers)
        f1 += max(token_f1(pred, g) for g in answers)
    out = {"exact_match": em / len(predictions), "f1": f1 / len(predictions)}
    if loss is not None:
        out = {"loss": float(loss), **out}
    return out


# --- causal language modelling ----------------------------------------------------------------


def causal_lm_metrics(loss_sum: float, tokens: int) -> dict[str, float]:
    """Mean cross-entropy per predicted token and its exponential."""
    if tokens <= 0:
        raise ValueError("no tokens to score")
    loss = loss_sum / tokens
    return {"loss": float(loss), "perplexity": float(math.exp(min(loss, 700.0)))}

