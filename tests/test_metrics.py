"""Metrics against hand-computed values and scikit-learn's own functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune.compute.metrics import classification_metrics, cross_entropy, is_better


def _logits_for(preds: list[int], classes: int) -> np.ndarray:
    out = np.zeros((len(preds), classes))
    out[np.arange(len(preds)), preds] = 5.0
    return out


def test_hand_computed_example():
    # labels 0 0 1 1 2, predictions 0 1 1 1 0
    labels = [0, 0, 1, 1, 2]
    m = classification_metrics(_logits_for([0, 1, 1, 1, 0], 3), labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # precision: class0 1/2, class1 2/3, class2 0 (never predicted) -> mean 7/18
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    # recall: class0 1/2, class1 2/2, class2 0/1
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    f1 = [2 * p * r / (p + r) if p + r else 0 for p, r in ((1 / 2, 1 / 2), (2 / 3, 1), (0, 0))]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_agrees_with_sklearn_on_random_predictions():
    from sklearn.metrics import f1_score, log_loss, precision_score, recall_score

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 7))
    labels = rng.integers(0, 7, size=300)
    m = classification_metrics(logits, labels)
    preds = logits.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["macro_precision"] == pytest.approx(precision_score(labels, preds, average="macro"))
    assert m["macro_recall"] == pytest.approx(recall_score(labels, preds, average="macro"))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["loss"] == pytest.approx(log_loss(labels, probs, labels=range(7)))


def test_cross_entropy_is_stable_for_large_logits():
    assert cross_entropy([[1000.0, 0.0]], [0]) == pytest.approx(0.0, abs=1e-12)
    assert cross_entropy([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)
    assert cross_entropy([[0.0, 0.0]], [1]) == pytest.approx(math.log(2))


def test_given_loss_is_kept_and_bad_shapes_are_refused():
    assert classification_metrics(_logits_for([1], 2), [1], loss=0.25)["loss"] == 0.25
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics(np.zeros((0, 2)), [])


def test_is_better_knows_the_direction():
    assert is_better("macro_f1", 0.5, None) and is_better("macro_f1", 0.6, 0.5)
    assert not is_better("macro_f1", 0.5, 0.5)  # ties keep the earlier checkpoint
    assert is_better("loss", 0.4, 0.5) and not is_better("loss", 0.6, 0.5)
