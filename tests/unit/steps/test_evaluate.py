"""The metrics of every resample at once agree with scikit-learn's scorers called on each resample."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from contract.params import METRICS
from steps import evaluate


def sklearn_score(metric, y_true, proba, classes, positive, y_pred):
    """The reference: one scikit-learn call, as the metrics were computed before; NaN where it refuses."""
    try:
        if metric == "roc_auc":
            if positive is not None:
                return roc_auc_score(y_true == positive, proba[:, list(classes).index(positive)])
            return roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
        if metric == "accuracy":
            return accuracy_score(y_true, y_pred)
        options = ({"pos_label": positive, "average": "binary", "zero_division": 0} if positive is not None
                   else {"labels": classes, "average": "macro", "zero_division": 0})
        return {"precision": precision_score, "recall": recall_score, "f1": f1_score}[metric](
            y_true, y_pred, **options)
    except ValueError:
        return np.nan


def case(kind: str, rng: np.random.Generator):
    n = 60
    if kind == "binary text":
        classes = np.array(["- 50000.", "50000+."], dtype=object)
        y = classes[(rng.random(n) < 0.25).astype(int)]
        p = np.round(np.clip(rng.random(n) * 0.6 + (y == classes[1]) * 0.3, 0, 1), 1)  # ties
        proba = np.c_[1 - p, p]
        return classes, classes[1], y, proba, classes[(p >= 0.4).astype(int)]  # its own cut-off
    classes = np.array([3, 5, 9])
    y = classes[rng.integers(0, 3, n)]
    raw = np.round(rng.random((n, 3)) + (y[:, None] == classes) * 0.5, 1)
    proba = raw / raw.sum(axis=1, keepdims=True)
    return classes, None, y, proba, (classes[proba.argmax(axis=1)] if kind == "multiclass argmax" else
                                     classes[rng.integers(0, 3, n)])


@pytest.mark.parametrize("kind", ["binary text", "multiclass argmax", "multiclass own labels"])
@pytest.mark.parametrize("metric", METRICS)
def test_every_resamples_metric_is_scikit_learns(kind, metric):
    rng = np.random.default_rng(1)
    classes, positive, y, proba, y_pred = case(kind, rng)
    rows = rng.integers(0, len(y), (40, len(y)))
    rows[0] = np.flatnonzero(y != (positive if positive is not None else classes[2]))[:len(y) // 2].repeat(2)
    rows[1, :] = 7  # one row, many times
    expected = [sklearn_score(metric, y[r], proba[r], classes, positive, y_pred[r]) for r in rows]
    given = y_pred if kind != "multiclass argmax" else None  # None: the most probable class
    got = evaluate.resampled_scores(metric, y, proba, classes, positive, given, rows)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the resample without a class has no ROC-AUC (NaN), as scikit-learn refuses it
    assert np.isnan(got[0]) == (metric == "roc_auc") and np.isnan(got[1]) == (metric == "roc_auc")
    assert evaluate.score(metric, y, proba, classes, positive, given) == pytest.approx(
        sklearn_score(metric, y, proba, classes, positive, y_pred), abs=1e-12)


def test_a_returned_label_that_is_no_class_counts_for_none():
    classes = np.array(["no", "yes"], dtype=object)
    y = np.array(["yes", "yes", "no", "no"], dtype=object)
    y_pred = np.array(["yes", "maybe", "maybe", "no"], dtype=object)
    proba = np.array([[0.2, 0.8], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    assert evaluate.score("accuracy", y, proba, classes, "yes", y_pred) == 0.5
    assert evaluate.score("recall", y, proba, classes, "yes", y_pred) == 0.5  # "maybe" is a miss
    assert evaluate.score("precision", y, proba, classes, "yes", y_pred) == 1.0


def test_roc_auc_of_one_class_is_refused_as_scikit_learn_does():
    y = np.array([1, 1, 1])
    with pytest.raises(ValueError, match="roc_auc is not defined"):
        evaluate.score("roc_auc", y, np.array([[0.3, 0.7]] * 3), np.array([0, 1]), 1)
