"""What a window of logged answers says of the model's quality: estimated before any label comes back, and
measured from feedback where the answers carried prediction sets.

The estimate is NannyML's confidence-based performance estimation (CBPE): if the served probabilities are
calibrated, a row answered ``a`` whose probability of class ``t`` is ``p`` counts ``p`` in cell (t, a) of an
expected confusion matrix; accuracy, precision, recall and F1 follow from that matrix exactly as the realised
figures follow from the real one (:func:`steps.evaluate.confusion_scores`), and ROC-AUC from the expected
positive and negative weight of each score. Its uncertainty is the standard deviation of the figures the labels
could still give: :data:`DRAWS` seeded Monte Carlo draws of every row's label from its probabilities, each scored
by :func:`steps.evaluate.resampled_scores` (no analytic form covers F1 or ROC-AUC; one method for all five).
Calibration holds under covariate shift (new inputs, same relation to the label), not under concept shift.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.inference_log import LoggedRow
from contract.names import (
    TAG_MONITORING_COVERAGE_ROWS,
    TAG_MONITORING_COVERAGE_TARGET,
    TAG_MONITORING_ESTIMATED_ACCURACY,
    TAG_MONITORING_LIVE_CALIBRATION_ERROR,
    TAG_MONITORING_REALISED_COVERAGE,
)
from contract.params import METRICS
from steps import evaluate

DRAWS = 200  # label draws for the uncertainty: its own relative error is about 1/sqrt(2 * DRAWS), 5%
DRAW_CELLS = 2_000_000  # rows times draws scored at once: memory in tens of MB
UNCALIBRATED = ("", "none")  # a version's calibration tag (absent: trained before calibration existed)


@dataclass(frozen=True)
class Estimate:
    """Estimated figures (finite only), their standard deviations, the rows they rest on, and why a figure is
    missing (empty when none is)."""

    metrics: dict[str, float] = field(default_factory=dict)
    uncertainty: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    missing: dict[str, str] = field(default_factory=dict)


def as_classes(labels: Iterable[Any], classes: Sequence[Any]) -> np.ndarray:
    """Logged labels as the version's classes (JSON may hold a class 1 as "1"); any other label as it is."""
    by_text = {str(c): c for c in classes}
    return np.array([by_text.get(str(v), v) for v in labels])


def probabilities(rows: Sequence[LoggedRow], classes: Sequence[Any]) -> np.ndarray:
    """Each row's served probability of each class: 0 where the answer holds none, NaN where it holds no number
    (a row the model refused is answered with an error and null probabilities)."""
    return np.array([[_number(r.probabilities.get(str(c), 0.0)) for c in classes] for r in rows],
                    dtype=float).reshape(len(rows), len(classes))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def estimate(proba: np.ndarray, y_pred: np.ndarray, classes: Sequence[Any], positive: Any,
             draws: int = DRAWS, seed: int = 0) -> Estimate:
    """CBPE of :data:`contract.params.METRICS` from the probabilities and the labels the version returned, with
    the definitions of :func:`steps.evaluate.resampled_scores` (binary: of ``positive``; multiclass: macro).
    Rows whose probabilities are not finite or add up to nothing are left out; the others are scaled to sum 1."""
    classes = np.asarray(classes)
    proba = np.asarray(proba, dtype=float).reshape(len(y_pred), len(classes))
    sums = proba.sum(axis=1)
    usable = np.isfinite(proba).all(axis=1) & (proba >= 0).all(axis=1) & (sums > 0)
    if len(classes) < 1 or not usable.any():
        return Estimate(missing={m: "no answered row with probabilities" for m in METRICS})
    proba, y_pred = proba[usable] / sums[usable, None], np.asarray(y_pred)[usable]
    found: dict[str, float] = {}
    missing: dict[str, str] = {}
    for metric in METRICS:
        value = expected_score(metric, proba, y_pred, classes, positive)
        if np.isfinite(value):
            found[metric] = value
        else:
            missing[metric] = "undefined: the probabilities expect one class only"
    spread = draw_spread(proba, y_pred, classes, positive, list(found), draws, seed)
    for metric, std in spread.items():
        if not np.isfinite(std):
            found.pop(metric)
            missing[metric] = "too few rows of each class to say how uncertain it is"
    return Estimate(found, {m: spread[m] for m in found}, int(usable.sum()), missing)


def expected_score(metric: str, proba: np.ndarray, y_pred: np.ndarray, classes: np.ndarray, positive: Any) -> float:
    """One metric of the expected confusion matrix (NaN where undefined)."""
    k = len(classes)
    codes = evaluate._codes(y_pred, classes)  # the one mapping of labels to classes
    if metric == "roc_auc":
        columns = [evaluate._codes([positive], classes)[0]] if positive is not None else range(k)
        return float(np.mean([expected_auc(proba[:, c], proba[:, c]) for c in columns]))
    counts = np.zeros((1, k + 1, k + 1))
    for returned in np.unique(codes):  # cell (t, a): the probability of t of the rows answered a
        counts[0, :k, returned] = proba[codes == returned].sum(axis=0)
    index = evaluate._codes([positive], classes)[0] if positive is not None else None
    return float(evaluate.confusion_scores(metric, counts, index)[0])


def expected_auc(weight: np.ndarray, score: np.ndarray) -> float:
    """The ROC-AUC the labels are expected to give ``score``: the chance a positive row scores above a negative
    one (a tie counting half), each row positive with probability ``weight``. A row is never paired with itself
    (it is one or the other). NaN when the weights expect no positive or no negative pair."""
    _, group = np.unique(score, return_inverse=True)
    positives = np.bincount(group, weight)
    negatives = np.bincount(group, 1 - weight)
    below = np.cumsum(negatives) - negatives
    itself = float(np.sum(weight * (1 - weight)))
    pairs = weight.sum() * (1 - weight).sum() - itself
    if pairs <= 1e-12:
        return float("nan")
    return float(((positives * (below + negatives / 2)).sum() - itself / 2) / pairs)


def draw_spread(proba: np.ndarray, y_pred: np.ndarray, classes: np.ndarray, positive: Any, metrics: list[str],
                draws: int, seed: int) -> dict[str, float]:
    """The standard deviation of each realised metric over ``draws`` label draws from ``proba``; NaN when fewer
    than two draws define it (ROC-AUC of draws of one class).

    A draw is a resample of an extended window, row i's copy c answered as row i and labelled class c: so
    :func:`steps.evaluate.resampled_scores` scores many draws at once (a call a draw took 35 s on 100,000 rows)."""
    n, k = proba.shape
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(proba, axis=1)
    labels, answers, answered = np.tile(classes, n), np.repeat(proba, k, axis=0), np.repeat(y_pred, k)
    scores: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    batch = max(1, DRAW_CELLS // max(n, 1))
    for start in range(0, draws, batch):
        u = rng.random((min(batch, draws - start), n, 1))
        drawn = np.minimum((u > cumulative[None]).sum(axis=2), k - 1)
        rows = np.arange(n) * k + drawn
        for metric in metrics:
            scores[metric].append(evaluate.resampled_scores(metric, labels, answers, classes, positive, answered,
                                                            rows))
    spread = {}
    for metric, values in scores.items():
        finite = np.concatenate(values)[np.isfinite(np.concatenate(values))] if values else np.array([])
        spread[metric] = float(np.std(finite, ddof=1)) if len(finite) >= 2 else float("nan")
    return spread


def realised_coverage(rows: Sequence[LoggedRow], minimum: int) -> dict[str, dict[str, float]]:
    """Per confidence level asked (as text, "0.9"): the share of true labels inside the prediction sets served,
    and the labelled rows with a set behind it; a level with fewer than ``minimum`` such rows is left out."""
    covered: dict[str, list[bool]] = {}
    for row in rows:
        if row.true_label is None or row.prediction_set is None or row.confidence is None:
            continue
        members = {str(c) for c in row.prediction_set}
        covered.setdefault(f"{row.confidence:g}", []).append(str(row.true_label) in members)
    return {level: {"coverage": float(np.mean(hits)), "rows": len(hits)}
            for level, hits in sorted(covered.items()) if len(hits) >= minimum}


def main_level(coverage: dict[str, dict[str, float]]) -> str | None:
    """The level most labelled rows were answered at (of equal counts, the highest): the one the tags carry."""
    counts = Counter({level: figures["rows"] for level, figures in coverage.items()})
    return max(counts, key=lambda level: (counts[level], float(level)), default=None)


def window_figures(rows: Sequence[LoggedRow], classes: Sequence[Any], positive: Any, calibration: str | None,
                   minimum: int) -> dict[str, Any]:
    """The monitor summary's keys for a window's rows: the estimate (every row, labelled or not), whether it
    rests on calibrated probabilities, and from the rows with a true label (at least ``minimum``) the realised
    coverage of the sets and the live expected calibration error."""
    proba = probabilities(rows, classes)
    found = estimate(proba, as_classes([r.label for r in rows], classes), classes, positive)
    labelled = [i for i, r in enumerate(rows) if r.true_label is not None]
    error = None
    if len(labelled) >= minimum and len(classes) >= 2:
        value = evaluate.expected_calibration_error(as_classes([rows[i].true_label for i in labelled], classes),
                                                    proba[labelled], np.asarray(classes), positive)
        error = value if np.isfinite(value) else None
    figures: dict[str, Any] = {
        "estimated_metrics": found.metrics, "estimated_uncertainty": found.uncertainty,
        "estimated_rows": found.rows, "probabilities_calibrated": (calibration or "") not in UNCALIBRATED,
        "realised_coverage": realised_coverage(rows, minimum), "live_calibration_error": error}
    if found.missing:
        figures["estimation_missing"] = found.missing
    return figures


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The monitoring run's metrics of :func:`window_figures`' keys (those the summary holds)."""
    metrics = {f"estimated_{m}": v for m, v in summary.get("estimated_metrics", {}).items()}
    metrics.update({f"estimated_{m}_std": v for m, v in summary.get("estimated_uncertainty", {}).items()})
    level = main_level(summary.get("realised_coverage", {}))
    if level is not None:
        metrics["realised_coverage"] = summary["realised_coverage"][level]["coverage"]
    if summary.get("live_calibration_error") is not None:
        metrics["live_calibration_error"] = summary["live_calibration_error"]
    return metrics


def version_tags(summary: dict[str, Any]) -> dict[str, str]:
    """The monitored version's tags of these figures, only those the window gives."""
    tags = {}
    if "accuracy" in summary.get("estimated_metrics", {}):
        tags[TAG_MONITORING_ESTIMATED_ACCURACY] = f"{summary['estimated_metrics']['accuracy']:.6f}"
    level = main_level(summary.get("realised_coverage", {}))
    if level is not None:
        figures = summary["realised_coverage"][level]
        tags.update({TAG_MONITORING_REALISED_COVERAGE: f"{figures['coverage']:.6f}",
                     TAG_MONITORING_COVERAGE_TARGET: f"{float(level):.6f}",
                     TAG_MONITORING_COVERAGE_ROWS: f"{figures['rows']:.6f}"})
    if summary.get("live_calibration_error") is not None:
        tags[TAG_MONITORING_LIVE_CALIBRATION_ERROR] = f"{summary['live_calibration_error']:.6f}"
    return tags
