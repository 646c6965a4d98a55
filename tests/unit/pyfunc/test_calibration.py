"""The calibration maps and the conformal prediction sets (pyfunc/calibration.py), as pure rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfunc.calibration import (
    ISOTONIC_MIN_ROWS,
    Calibration,
    ConformalScores,
    candidates,
    fit_calibration,
)
from steps.evaluate import brier_score, expected_calibration_error


def probabilities(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    raw = rng.dirichlet(np.full(k, 0.7), n)
    return raw


@st.composite
def held_out(draw, max_classes: int = 4):
    """Probabilities of held-out rows and each row's true class, with ties and probabilities of 0 and 1."""
    k = draw(st.integers(2, max_classes))
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    proba = probabilities(rng, n, k)
    if draw(st.booleans()):  # a forest's votes: multiples of 1/10, many exactly 0 or 1
        proba = np.round(proba * 10) / 10
        proba[:, -1] = 1 - proba[:, :-1].sum(axis=1)
        proba = np.clip(proba, 0, 1)
        proba /= proba.sum(axis=1, keepdims=True)
    return proba, rng.integers(0, k, n)


@settings(deadline=None)
@given(held_out(), st.floats(0.01, 0.99), st.booleans())
def test_the_sets_cover_at_least_the_confidence_of_the_rows_they_were_fitted_on(data, confidence, per_class):
    """The ceil((n+1)c)-th smallest score: at least that many of the n scores are within it (or every class)."""
    proba, true = data
    scores = ConformalScores.fit(proba, true)
    sets = scores.sets(proba, confidence, per_class)
    covered = sets[np.arange(len(true)), true]
    groups = [true == k for k in range(proba.shape[1])] if per_class else [np.ones(len(true), bool)]
    for rows in groups:
        if rows.any():
            assert covered[rows].mean() >= confidence - 1e-12


@given(held_out(), st.floats(0.01, 0.98))
def test_a_higher_confidence_never_gives_a_smaller_set(data, confidence):
    proba, true = data
    scores = ConformalScores.fit(proba, true)
    assert (scores.sets(proba, confidence) <= scores.sets(proba, min(confidence + 0.01, 0.99))).all()


def test_the_quantile_is_the_ceil_n_plus_one_c_th_smallest_score():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    true = np.array([0, 0, 1, 1])  # scores 0.1, 0.2, 0.3, 0.6
    scores = ConformalScores.fit(proba, true)
    assert scores.overall.quantile(0.5) == pytest.approx(0.3)  # ceil(5 * 0.5) = 3rd
    assert scores.overall.quantile(0.6) == pytest.approx(0.3)  # ceil(3.0) = 3rd
    assert scores.overall.quantile(0.61) == pytest.approx(0.6)  # ceil(3.05) = 4th
    assert scores.overall.quantile(0.81) == float("inf")  # ceil(4.05) = 5th of 4: every class
    assert scores.sets(np.array([[0.75, 0.25]]), 0.5).tolist() == [[True, False]]  # 0.25 <= 0.3, 0.75 > 0.3


@given(held_out())
def test_the_scores_survive_their_artifact(data):
    proba, true = data
    scores = ConformalScores.fit(proba, true)
    again = ConformalScores.from_bytes(scores.to_bytes())
    for confidence in (0.1, 0.5, 0.9):
        assert (again.sets(proba, confidence, True) == scores.sets(proba, confidence, True)).all()
        assert (again.sets(proba, confidence) == scores.sets(proba, confidence)).all()


@settings(deadline=None)  # a fit takes tens of milliseconds, more on a busy machine
@given(held_out(), st.sampled_from(["isotonic", "sigmoid", "temperature"]))
def test_a_calibration_gives_probabilities_and_survives_its_artifact(data, method):
    proba, true = data
    if method != "temperature" and proba.shape[1] > 2:
        proba = np.column_stack([proba[:, 0], 1 - proba[:, 0]])
        true = np.minimum(true, 1)
    calibration = fit_calibration(method, proba, true, 1)
    assert calibration.method in (method, "none") and (len(set(true)) > 1 or calibration.method == "none")
    out = calibration.apply(proba)
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert Calibration.from_json(calibration.to_json()) == calibration
    if method != "temperature":  # monotone in the positive class's probability: the ranking is kept
        order = np.argsort(proba[:, 1], kind="stable")
        assert (np.diff(out[order, 1]) >= -1e-12).all()


@pytest.mark.parametrize("method", ["isotonic", "sigmoid", "temperature"])
def test_calibrating_over_confident_probabilities_lowers_ece_and_brier(method):
    rng = np.random.default_rng(0)
    truth = rng.random(20_000)
    true = (rng.random(20_000) < truth).astype(int)
    skewed = 1 / (1 + np.exp(-1.8 * np.log(truth / (1 - truth))))  # too sure of itself: log-odds stretched
    proba = np.column_stack([1 - skewed, skewed])
    fitted = fit_calibration(method, proba[:10_000], true[:10_000], 1)
    before, after = proba[10_000:], fitted.apply(proba[10_000:])
    classes = np.array([0, 1])
    assert expected_calibration_error(true[10_000:], after, classes, 1) < 0.02 < \
        expected_calibration_error(true[10_000:], before, classes, 1)
    assert brier_score(true[10_000:], after, classes) < brier_score(true[10_000:], before, classes)


@pytest.mark.parametrize("positive", [0, 1])
def test_a_sigmoid_scales_and_shifts_each_classs_log_odds_so_they_still_add_up(positive):
    calibration = Calibration("sigmoid", positive, slope=0.7, intercept=-0.4)
    rng = np.random.default_rng(positive)
    z = rng.normal(size=(5, 3)).sum(axis=1)  # class 1's log-odds as a sum of three contributions
    contributions = np.stack([-rng.normal(size=(5, 3)), rng.normal(size=(5, 3))], axis=2)
    contributions[:, :, 0] = -contributions[:, :, 1]
    base = np.array([-0.2, 0.2])
    z = base[1] + contributions[:, :, 1].sum(axis=1)
    proba = np.column_stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))])
    new_base, new_contributions = calibration.scale_explanation(base, contributions)
    served = calibration.apply(proba)
    for k in (0, 1):
        log_odds = new_base[k] + new_contributions[:, :, k].sum(axis=1)
        np.testing.assert_allclose(1 / (1 + np.exp(-log_odds)), served[:, k], atol=1e-12)


def test_auto_leaves_a_choice_by_classes_score_and_rows():
    assert candidates("auto", 10**6, 3, "probability") == ("none", "temperature")
    assert candidates("auto", 10**6, 2, "log_odds") == ("none", "sigmoid")
    assert candidates("auto", ISOTONIC_MIN_ROWS - 1, 2, "probability") == ("none", "sigmoid")
    assert candidates("auto", ISOTONIC_MIN_ROWS, 2, "probability") == ("none", "sigmoid", "isotonic")
    assert candidates("isotonic", 10, 2, "probability") == ("isotonic",)
    assert Calibration().keeps_additivity("probability")
    assert not Calibration("isotonic").keeps_additivity("log_odds")
    assert not Calibration("sigmoid").keeps_additivity("probability")
    assert Calibration("temperature").keeps_additivity("log_odds")
