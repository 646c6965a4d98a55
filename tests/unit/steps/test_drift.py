"""The drift rules (steps.drift): which method for which sample, and the decisions, on data made to drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from steps.drift import Rules, categorical_drift, numeric_drift

RULES = Rules()
rng = np.random.default_rng(11)


def test_small_numeric_samples_use_kolmogorov_smirnov():
    ref, same, shifted = rng.normal(40, 10, 800), rng.normal(40, 10, 500), rng.normal(46, 10, 500)
    kept = numeric_drift("age", ref, same, RULES)
    assert kept.method == "ks" and not kept.drifted and kept.score == pytest.approx(ks_2samp(ref, same).pvalue)
    moved = numeric_drift("age", ref, shifted, RULES)
    assert moved.method == "ks" and moved.drifted and moved.score < 0.05 and moved.threshold == 0.05


def test_large_numeric_samples_use_the_normalised_wasserstein_distance():
    ref, same, shifted = rng.normal(40, 10, 5000), rng.normal(40, 10, 4000), rng.normal(42.5, 10, 4000)
    kept = numeric_drift("age", ref, same, RULES)
    assert kept.method == "wasserstein" and not kept.drifted
    assert kept.score == pytest.approx(wasserstein_distance(ref, same) / np.std(ref))
    moved = numeric_drift("age", ref, shifted, RULES)
    assert moved.drifted and moved.score > 0.1  # a quarter of a standard deviation moved


def test_a_constant_reference_is_normalised_by_a_floor_not_by_zero():
    result = numeric_drift("flag", np.zeros(2000), np.full(2000, 0.01), RULES)
    assert result.score == pytest.approx(0.01 / 0.001) and result.drifted


def test_missing_values_take_no_part_in_the_test_and_their_share_is_reported():
    ref = np.r_[rng.normal(0, 1, 900), np.full(100, np.nan)]
    cur = np.r_[rng.normal(0, 1, 600), np.full(400, np.nan)]
    result = numeric_drift("x", ref, cur, RULES)
    assert (result.reference_values, result.current_values) == (900, 600)
    assert (result.reference_missing, result.current_missing) == (0.1, 0.4)
    assert math.isnan(numeric_drift("x", ref, np.full(5, np.nan), RULES).score)


def shares(mix: dict[str, float], n: int) -> list[str]:
    return [c for c, share in mix.items() for _ in range(round(share * n))]


def test_small_categorical_samples_use_chi_squared_and_large_ones_jensen_shannon():
    ref = shares({"a": 0.5, "b": 0.3, "c": 0.2}, 900)
    same, moved = shares({"a": 0.5, "b": 0.3, "c": 0.2}, 600), shares({"a": 0.3, "b": 0.3, "c": 0.4}, 600)
    kept = categorical_drift("city", ref, same, RULES)
    assert kept.method == "chi2" and not kept.drifted
    result = categorical_drift("city", ref, moved, RULES)
    counts = np.array([[450, 270, 180], [180, 180, 240]])
    assert result.drifted and result.score == pytest.approx(chi2_contingency(counts).pvalue)
    big_ref, big_moved = shares({"a": 0.5, "b": 0.5}, 5000), shares({"a": 0.3, "b": 0.7}, 5000)
    large = categorical_drift("city", big_ref, big_moved, RULES)
    assert large.method == "jensenshannon" and large.drifted
    assert large.score == pytest.approx(jensenshannon([0.5, 0.5], [0.3, 0.7]))


def test_categories_never_seen_in_training_are_counted_and_missing_ignored():
    result = categorical_drift("city", ["a", "b", None, None], ["a", "z", "z", None], RULES)
    assert result.unseen == pytest.approx(2 / 3) and result.reference_missing == 0.5
    assert result.current_missing == 0.25


def test_the_thresholds_are_parameters():
    ref, cur = rng.normal(0, 1, 800), rng.normal(0.15, 1, 800)
    strict, lax = Rules(p_value=0.5), Rules(p_value=1e-12)
    assert numeric_drift("x", ref, cur, strict).drifted and not numeric_drift("x", ref, cur, lax).drifted
