"""Held-out metrics and report figures, computed on the scikit-learn pipeline's outputs.

Metrics are computed here rather than with ``mlflow.models.evaluate``: a pyfunc
returning several columns cannot be evaluated as a classifier, and its SHAP
step fails on pandas 3 string columns.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from contract.params import METRICS

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402


def score(metric: str, y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: object | None,
          y_pred: np.ndarray | None = None) -> float:
    """One metric of a model's answers (see :func:`resampled_scores`); ValueError where it is undefined
    (ROC-AUC of rows of one class), as scikit-learn's."""
    value = float(resampled_scores(metric, y_true, proba, classes, positive, y_pred)[0])
    if np.isnan(value):
        raise ValueError(f"{metric} is not defined: the true labels hold one class only")
    return value


def resampled_scores(metric: str, y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray,
                     positive: object | None, y_pred: np.ndarray | None = None,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """``metric`` of a model's answers on many resamples of the rows at once: ``rows`` holds one resample a
    row (indices into ``y_true``); None scores the rows once, as given. NaN where the metric is undefined
    (ROC-AUC of a resample missing a class).

    ROC-AUC comes from the probabilities, the others from the labels the model returned, ``y_pred`` (None:
    the most probable class). Binary: precision/recall/F1/ROC-AUC of ``positive``. Multiclass (``positive``
    None): macro averages and one-vs-rest macro ROC-AUC. A label that is not one of ``classes`` counts for
    none. The figures are scikit-learn's (``zero_division=0``; tests/unit/steps/test_evaluate.py compares
    them), from confusion counts of every resample at once: a scikit-learn call a resample took 10 s for
    the 1,000 resamples of the promotion rule's bootstrap on 300 rows, 86 s on 20,000.
    """
    classes = np.asarray(classes)
    k = len(classes)
    true = _codes(y_true, classes)
    rows = np.arange(len(true))[None, :] if rows is None else np.asarray(rows)
    proba = np.asarray(proba, dtype=float)
    if metric == "roc_auc":
        columns = [_codes([positive], classes)[0]] if positive is not None else range(k)
        return np.mean([_auc(true == c, proba[:, c], rows) for c in columns], axis=0)  # NaN if one is
    pred = proba.argmax(axis=1) if y_pred is None else _codes(y_pred, classes)
    # counts[r, t, p]: rows of resample r with true class t, returned class p (k: not a class)
    cells = (k + 1) ** 2
    pairs = (true * (k + 1) + pred)[rows] + np.arange(len(rows))[:, None] * cells
    counts = np.bincount(pairs.ravel(), minlength=len(rows) * cells).reshape(len(rows), k + 1, k + 1)
    return confusion_scores(metric, counts, _codes([positive], classes)[0] if positive is not None else None)


def confusion_scores(metric: str, counts: np.ndarray, positive: int | None) -> np.ndarray:
    """``metric`` (any but roc_auc) of confusion counts, one matrix a resample: ``counts[r, t, p]``, the rows of
    resample r with true class t that were returned class p, the last index of each axis for a label that is no
    class. The counts may be expected ones, fractions (steps/estimate.py). ``positive``: the index of the class
    binary metrics score; None for macro averages."""
    k = counts.shape[1] - 1
    hits = np.diagonal(counts, axis1=1, axis2=2)[:, :k]
    if metric == "accuracy":
        return hits.sum(axis=1) / counts.sum(axis=(1, 2))
    by_class = _rate(metric, hits, returned=counts[:, :, :k].sum(axis=1), actual=counts[:, :k, :].sum(axis=2))
    return by_class[:, positive] if positive is not None else by_class.mean(axis=1)


def _rate(metric: str, hits: np.ndarray, returned: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Precision, recall or F1 of a class from its confusion counts (rows it got right, rows it was
    returned for, rows that are it), array by array; 0 where they divide by zero (``zero_division=0``)."""
    numerator, denominator = {"precision": (hits, returned), "recall": (hits, actual),
                              "f1": (2 * hits, returned + actual)}[metric]
    return _ratio(numerator, denominator)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def _codes(labels: np.ndarray | list, classes: np.ndarray) -> np.ndarray:
    """Each label's index in ``classes``; ``len(classes)`` for a label that is none of them."""
    codes = pd.Index(classes).get_indexer(pd.Index(labels))
    return np.where(codes < 0, len(classes), codes)


def _auc(is_positive: np.ndarray, score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``score`` for each resample: the chance a positive row scores above a negative one,
    a tie counting half (the area under scikit-learn's ROC curve); NaN without both kinds of row."""
    _, group = np.unique(score, return_inverse=True)  # rows of equal score share a group, in score order
    groups = group.max() + 1
    keys = (group * 2 + is_positive)[rows] + np.arange(len(rows))[:, None] * groups * 2
    counts = np.bincount(keys.ravel(), minlength=len(rows) * groups * 2).reshape(len(rows), groups, 2)
    negatives, positives = counts[:, :, 0].astype(float), counts[:, :, 1].astype(float)
    below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    wins = (positives * (below + negatives / 2)).sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(rows), np.nan), where=pairs > 0)


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: object | None,
    y_pred: np.ndarray | None = None,
) -> dict[str, float]:
    """accuracy, roc_auc, precision, recall, f1 (see :func:`score`)."""
    return {metric: score(metric, y_true, proba, classes, positive, y_pred) for metric in METRICS}


CALIBRATION_BINS = 15  # equal-width bins of the reliability diagram and the ECE (Guo et al., 2017)


def calibration_target(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray,
                       positive: object | None) -> tuple[np.ndarray, np.ndarray]:
    """(probability, whether it came true) a row, as the reliability diagram and the ECE read them: the positive
    class's probability for a binary target, the returned (most probable) class's for a multiclass one."""
    proba = np.asarray(proba, dtype=float)
    true = _codes(y_true, np.asarray(classes))
    if positive is not None:
        column = _codes([positive], np.asarray(classes))[0]
        return proba[:, column], true == column
    top = proba.argmax(axis=1)
    return proba[np.arange(len(top)), top], true == top


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: object | None,
                     bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of :func:`calibration_target`'s probability: its rows, the sum of their probabilities
    and how many came true. Rows without a probability (a row the model refused) are left out."""
    predicted, happened = calibration_target(y_true, proba, classes, positive)
    known = np.isfinite(predicted)
    predicted, happened = np.clip(predicted[known], 0.0, 1.0), happened[known]
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    return (np.bincount(which, minlength=bins), np.bincount(which, predicted, bins),
            np.bincount(which, happened.astype(float), bins))


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: object | None,
                               bins: int = CALIBRATION_BINS) -> float:
    """The rows' mean gap between a probability and how often it came true, bin by bin (:func:`reliability_bins`,
    each weighted by its rows); NaN without rows."""
    rows, predicted, happened = reliability_bins(y_true, proba, classes, positive, bins)
    if not rows.sum():
        return float("nan")
    return float(np.abs(predicted - happened).sum() / rows.sum())


def brier_score(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Mean squared distance between the probabilities and the one-hot truth; halved for two classes, so that a
    binary target's equals the usual (the positive class's) Brier score, as scikit-learn's ``scale_by_half``."""
    proba = np.asarray(proba, dtype=float)
    truth = np.zeros_like(proba)
    true = _codes(y_true, np.asarray(classes))
    known = true < proba.shape[1]
    truth[np.flatnonzero(known), true[known]] = 1.0
    total = np.mean(np.sum((proba - truth) ** 2, axis=1))
    return float(total / 2 if proba.shape[1] == 2 else total)


def plot_reliability(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, classes: np.ndarray,
                     positive: object | None, path: Path) -> None:
    """How often each predicted probability came true on the test split, before and after calibration."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="lightgrey", linestyle="--", label="perfectly calibrated")
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    for name, proba in (("uncalibrated", before), ("calibrated (served)", after)):
        rows, predicted, happened = reliability_bins(y_true, proba, classes, positive)
        kept = rows > 0
        mean_p, rate = predicted[kept] / rows[kept], happened[kept] / rows[kept]
        ece = expected_calibration_error(y_true, proba, classes, positive)
        ax.plot(mean_p, rate, marker="o", label=f"{name}: ECE {ece:.4f}")
    ax.set_xticks(edges[::3])
    what = f"P({positive})" if positive is not None else "probability of the returned class"
    ax.set_xlabel(f"predicted {what}")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability diagram (test split)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The cut-offs tried: a grid (as scikit-learn's TunedThresholdClassifierCV) fine enough for a forest's
# probabilities, which move in steps of 1/n_estimators.
THRESHOLDS = np.round(np.linspace(0.01, 0.99, 99), 2)


def scores_by_threshold(is_positive: np.ndarray, proba_positive: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall and F1 of the positive class at each cut-off of :data:`THRESHOLDS`,
    from the confusion counts of all cut-offs at once (scikit-learn's scorers, 0 where they divide by zero,
    one call per cut-off, took seconds)."""
    y = np.asarray(is_positive, dtype=bool)
    predicted = np.asarray(proba_positive)[None, :] >= THRESHOLDS[:, None]
    tp, returned = (predicted & y).sum(axis=1), predicted.sum(axis=1)
    actual = np.full(len(THRESHOLDS), y.sum())
    wrong = (returned - tp) + (actual - tp)
    return {"accuracy": _ratio(len(y) - wrong, np.full(len(THRESHOLDS), len(y))),
            **{metric: _rate(metric, tp, returned, actual) for metric in ("precision", "recall", "f1")}}


def best_threshold(is_positive: np.ndarray, proba_positive: np.ndarray, metric: str) -> float:
    """The cut-off of :data:`THRESHOLDS` that maximises ``metric`` for these (out-of-fold) probabilities;
    f1 for roc_auc, which does not depend on one. Of equal scores, the one nearest 0.5."""
    known = ~np.isnan(proba_positive)  # a row in no out-of-bag sample has no out-of-fold probability
    scores = scores_by_threshold(is_positive[known], proba_positive[known])[metric if metric != "roc_auc" else "f1"]
    best = np.flatnonzero(scores == scores.max())
    return float(THRESHOLDS[best[np.argmin(np.abs(THRESHOLDS[best] - 0.5))]])


def plot_threshold(is_positive: np.ndarray, proba_positive: np.ndarray, chosen: float, path: Path) -> None:
    """Precision, recall and F1 of the positive class against the cut-off, on the test split."""
    curves = scores_by_threshold(is_positive, proba_positive)
    curves.pop("accuracy")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, values in curves.items():
        ax.plot(THRESHOLDS, values, label=name)
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen {chosen:.2f}")
    ax.axvline(0.5, color="lightgrey", linestyle=":")
    ax.set_xlabel("threshold on the positive class's probability")
    ax.set_title("Precision and recall against the threshold (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(5, len(classes)), max(4, len(classes) * 0.8)))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=classes, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: object | None,
             path: Path) -> None:
    """One curve for the positive class (binary) or one per class, one-vs-rest."""
    fig, ax = plt.subplots(figsize=(6, 5))
    curves = [positive] if positive is not None else list(classes)
    for label in curves:
        column = list(classes).index(label)
        RocCurveDisplay.from_predictions(
            y_true == label, proba[:, column], name=f"{label}", ax=ax, plot_chance_level=label == curves[-1]
        )
    ax.set_title("ROC curve (test split)" + (" one-vs-rest" if positive is None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importance(importance: pd.Series, path: Path, measure: str, top: int = 30) -> None:
    shown = importance.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.3 * len(shown) + 1)))
    ax.barh(shown.index.astype(str), shown.to_numpy())
    ax.set_xlabel(f"importance ({measure})")
    ax.set_title(f"Feature importance by input column (top {len(shown)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
