"""Performance estimated from the probabilities alone (CBPE), realised coverage and live calibration
(steps/estimate.py), on synthetic windows whose probabilities are calibrated by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.inference_log import LoggedRow
from contract.names import (
    TAG_MONITORING_COVERAGE_ROWS,
    TAG_MONITORING_COVERAGE_TARGET,
    TAG_MONITORING_ESTIMATED_ACCURACY,
    TAG_MONITORING_LIVE_CALIBRATION_ERROR,
    TAG_MONITORING_REALISED_COVERAGE,
)
from contract.params import METRICS
from pyfunc.cleaning import FeatureSchema
from steps import estimate, evaluate, monitor, report
from steps.versions import Version


def calibrated_window(kind: str, n: int, seed: int):
    """(classes, positive, probabilities, labels drawn from them, the labels the model returned)."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        classes = np.array(["- 50000.", "50000+."], dtype=object)
        p = rng.beta(1.2, 3, n)
        proba = np.c_[1 - p, p]
        returned = classes[(p >= 0.35).astype(int)]  # its own cut-off, not 0.5
        positive = classes[1]
    else:
        classes = np.array([3, 5, 9])
        proba = rng.dirichlet([0.6, 0.6, 0.6], n)
        returned = classes[proba.argmax(axis=1)]
        positive = None
    drawn = (rng.random((n, 1)) > np.cumsum(proba, axis=1)).sum(axis=1)
    return classes, positive, proba, classes[np.minimum(drawn, len(classes) - 1)], returned


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_estimates_lie_within_a_few_standard_deviations_of_what_the_labels_then_give(kind):
    gaps = {m: [] for m in METRICS}
    for seed in range(12):
        classes, positive, proba, truth, returned = calibrated_window(kind, 1500, seed)
        found = estimate.estimate(proba, returned, classes, positive, draws=100, seed=seed)
        realised = evaluate.classification_metrics(truth, proba, classes, positive, returned)
        assert set(found.metrics) == set(found.uncertainty) == set(METRICS) and not found.missing
        for metric in METRICS:
            gaps[metric].append((realised[metric] - found.metrics[metric]) / found.uncertainty[metric])
    for metric, z in gaps.items():
        assert np.max(np.abs(z)) < 4, (metric, z)  # each window within 4 standard deviations
        assert 0.5 < np.std(z) < 1.6, (metric, z)  # and the deviations the size the uncertainty says


def test_certain_probabilities_estimate_exactly_what_steps_evaluate_realises():
    """Probabilities of 0 and 1 leave nothing to estimate: the expected confusion matrix is the real one, and
    every figure is evaluate's, with a label that is no class counting for none."""
    rng = np.random.default_rng(3)
    for classes, positive in ((np.array(["no", "yes"]), "yes"), (np.array([1, 2, 7, 8]), None)):
        truth = classes[rng.integers(0, len(classes), 300)]
        proba = (truth[:, None] == classes).astype(float)
        returned = np.where(rng.random(300) < 0.1, classes[0] if positive is None else "maybe",
                            classes[rng.integers(0, len(classes), 300)]).astype(classes.dtype)
        found = estimate.estimate(proba, returned, classes, positive, draws=5)
        realised = evaluate.classification_metrics(truth, proba, classes, positive, returned)
        assert found.metrics == pytest.approx(realised, abs=1e-12)
        assert found.uncertainty == pytest.approx({m: 0.0 for m in METRICS}, abs=1e-12)


def test_the_expected_roc_auc_is_the_realised_one_averaged_over_every_labelling():
    """Three rows: every one of the 8 labellings, weighted by its chance, against the expected pairs."""
    weight = np.array([0.2, 0.7, 0.7])  # a tie between the last two
    wins = pairs = 0.0
    for bits in range(8):
        labels = np.array([(bits >> i) & 1 for i in range(3)], dtype=bool)
        chance = np.prod(np.where(labels, weight, 1 - weight))
        for i in np.flatnonzero(labels):
            for j in np.flatnonzero(~labels):
                pairs += chance
                wins += chance * (1.0 if weight[i] > weight[j] else 0.5 if weight[i] == weight[j] else 0.0)
    assert estimate.expected_auc(weight, weight) == pytest.approx(wins / pairs, abs=1e-12)


LABELS = st.one_of(st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True),
                   st.lists(st.integers(-3, 9), min_size=1, max_size=4, unique=True))


@settings(max_examples=60, deadline=None)
@given(LABELS, st.data())
def test_any_labels_any_window_gives_finite_figures_or_says_why_not(classes, data):
    """Any class labels, one class, every row the same answer, windows of 0-6 rows, probabilities of any
    shape (zeros, one class certain, not adding up to 1), answers that are no class."""
    n = data.draw(st.integers(0, 6))
    k = len(classes)
    proba = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]), min_size=k, max_size=k),
                                        min_size=n, max_size=n)), dtype=float).reshape(n, k)
    returned = np.array(data.draw(st.lists(st.sampled_from([*classes, "other"]), min_size=n, max_size=n)),
                        dtype=object)
    positive = data.draw(st.sampled_from([None, classes[-1]])) if k == 2 else None
    found = estimate.estimate(proba, returned, np.array(classes, dtype=object), positive, draws=8)
    assert set(found.metrics) | set(found.missing) == set(METRICS) and not set(found.metrics) & set(found.missing)
    assert set(found.uncertainty) == set(found.metrics)
    assert all(math.isfinite(v) for v in [*found.metrics.values(), *found.uncertainty.values()])
    assert all(0 <= v <= 1 for v in found.metrics.values())  # probabilities not adding up to 1 are scaled
    assert all(v >= 0 for v in found.uncertainty.values()) and all(found.missing.values())
    assert found.rows == int((proba.sum(axis=1) > 0).sum())


def row(i: int, label: str, p_yes: float, truth: str | None, members: tuple[str, ...] | None = None,
        level: float | None = None) -> LoggedRow:
    return LoggedRow(f"r-{i}", "1", 0.0, {}, label, {"no": 1 - p_yes, "yes": p_yes}, truth, members, level)


def test_realised_coverage_per_level_asked_and_the_tags_of_the_most_common_level():
    rows = [row(i, "yes", 0.8, "yes" if i % 10 else "no", ("yes",), 0.9) for i in range(40)]  # 36 of 40 covered
    rows += [row(40 + i, "no", 0.4, "yes", ("no", "yes"), 0.95) for i in range(30)]  # all covered
    rows += [row(70 + i, "no", 0.4, "yes", ("no",), 0.8) for i in range(5)]  # too few to count
    rows += [row(80 + i, "yes", 0.8, None, ("yes",), 0.9) for i in range(50)]  # no true label yet
    rows += [row(130 + i, "yes", 0.8, "no") for i in range(9)]  # answered without a set
    coverage = estimate.realised_coverage(rows, minimum=30)
    assert coverage == {"0.9": {"coverage": 0.9, "rows": 40}, "0.95": {"coverage": 1.0, "rows": 30}}
    figures = estimate.window_figures(rows, ["no", "yes"], "yes", "isotonic", minimum=30)
    assert figures["realised_coverage"] == coverage
    tags = estimate.version_tags(figures)
    assert tags[TAG_MONITORING_REALISED_COVERAGE] == "0.900000" and tags[TAG_MONITORING_COVERAGE_TARGET] == "0.900000"
    assert float(tags[TAG_MONITORING_COVERAGE_ROWS]) == 40
    assert estimate.run_metrics(figures)["realised_coverage"] == 0.9


def test_a_class_labelled_with_a_number_is_covered_by_its_text_in_the_set():
    rows = [LoggedRow(f"r-{i}", "1", 0.0, {}, 1, {"0": 0.3, "1": 0.7}, 1, ("1",), 0.9) for i in range(3)]
    assert estimate.realised_coverage(rows, minimum=1) == {"0.9": {"coverage": 1.0, "rows": 3}}


def test_live_calibration_error_is_evaluates_ece_of_the_labelled_rows_and_absent_below_the_minimum():
    rng = np.random.default_rng(4)
    p = rng.random(200)
    truth = np.where(rng.random(200) < p, "yes", "no")
    rows = [row(i, "yes" if p[i] >= 0.5 else "no", p[i], truth[i] if i < 120 else None) for i in range(200)]
    figures = estimate.window_figures(rows, ["no", "yes"], "yes", "sigmoid", minimum=120)  # exactly enough
    expected = evaluate.expected_calibration_error(truth[:120], np.c_[1 - p[:120], p[:120]], np.array(["no", "yes"]),
                                                   "yes")
    assert figures["live_calibration_error"] == pytest.approx(expected, abs=1e-12)
    assert estimate.version_tags(figures)[TAG_MONITORING_LIVE_CALIBRATION_ERROR] == f"{expected:.6f}"
    assert estimate.run_metrics(figures)["live_calibration_error"] == pytest.approx(expected)
    few = estimate.window_figures(rows, ["no", "yes"], "yes", "sigmoid", minimum=121)
    assert few["live_calibration_error"] is None and "live_calibration_error" not in estimate.run_metrics(few)
    assert TAG_MONITORING_LIVE_CALIBRATION_ERROR not in estimate.version_tags(few)


def test_every_row_is_estimated_without_feedback_and_uncalibrated_versions_are_flagged():
    rows = [row(i, "yes" if i % 3 else "no", 0.9 if i % 3 else 0.2, None) for i in range(60)]
    for calibration, calibrated in ((None, False), ("none", False), ("isotonic", True), ("temperature", True)):
        figures = estimate.window_figures(rows, ["no", "yes"], "yes", calibration, minimum=30)
        assert figures["probabilities_calibrated"] is calibrated
        assert figures["estimated_rows"] == 60 and set(figures["estimated_metrics"]) == set(METRICS)
    assert figures["estimated_metrics"]["accuracy"] == pytest.approx((40 * 0.9 + 20 * 0.8) / 60)
    assert figures["realised_coverage"] == {} and figures["live_calibration_error"] is None
    metrics = estimate.run_metrics(figures)
    assert set(metrics) == {f"estimated_{m}" for m in METRICS} | {f"estimated_{m}_std" for m in METRICS}
    assert estimate.version_tags(figures) == {
        TAG_MONITORING_ESTIMATED_ACCURACY: f"{figures['estimated_metrics']['accuracy']:.6f}"}


def test_the_report_shows_the_estimate_beside_the_realised_figures_and_flags_uncalibrated_probabilities():
    summary = {"model_name": "m", "version": "1", "estimated_metrics": {"accuracy": 0.8125, "f1": 0.5},
               "estimated_uncertainty": {"accuracy": 0.0101, "f1": 0.02}, "probabilities_calibrated": False}
    page = report.html_report(summary, [], None, {"accuracy": 0.7969}, {"accuracy": 0.8333}, {})
    assert "<tr><td>accuracy</td><td>0.8125</td><td>0.0101</td><td>0.7969</td><td>0.8333</td></tr>" in page
    assert "<tr><td>f1</td><td>0.5</td><td>0.02</td><td></td><td></td></tr>" in page
    assert "not calibrated" in page
    assert "not calibrated" not in report.html_report({**summary, "probabilities_calibrated": True}, [], None, {},
                                                      {}, {})


def test_a_row_the_model_refused_is_left_out_of_the_estimate_not_a_failure():
    rows = [row(i, "yes", 0.9, None) for i in range(10)]
    rows.append(LoggedRow("r-x", "1", 0.0, {}, None, {"no": None, "yes": None}, None))  # answered with an error
    figures = estimate.window_figures(rows, ["no", "yes"], "yes", "isotonic", minimum=30)
    assert figures["estimated_rows"] == 10 and figures["estimated_metrics"]["accuracy"] == pytest.approx(0.9)


def test_a_labelled_row_the_model_refused_leaves_live_figures_standing():
    """Feedback on a row answered with an error (null probabilities): the calibration error and the live metrics
    are of the other labelled rows, not a failed monitoring job."""
    rows = [row(i, "yes", 0.9, "yes" if i % 10 else "no") for i in range(40)]
    rows.append(LoggedRow("r-x", "1", 0.0, {}, None, {"no": None, "yes": None}, "yes"))
    figures = estimate.window_figures(rows, ["no", "yes"], "yes", "isotonic", minimum=30)
    assert figures["live_calibration_error"] == pytest.approx(0.0)  # 0.9 came true 36 times in 40
    version = Version("m", "1", "run", FeatureSchema([], [], []), ["no", "yes"], "yes", {})
    count, live = monitor.live_quality(rows, version, 30)
    assert count == 41 and live["accuracy"] == pytest.approx(0.9)
