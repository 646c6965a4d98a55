"""The train step's choice of calibration map (steps/train.py: calibrate), on forest-like held-out probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.params import ForestParams
from steps.evaluate import brier_score
from steps.train import HeldOut, calibrate


def forest_votes(rng: np.random.Generator, n: int, k: int, trees: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Votes of ``trees`` trees (multiples of 1/trees, many exactly 0 or 1) and labels flipped with ``noise``."""
    true = rng.integers(0, k, n)
    sure = rng.random(n) < 0.7
    votes = np.zeros((n, k))
    votes[np.arange(n), true] = np.where(sure, 1.0, rng.integers(trees // 2, trees, n) / trees)
    rest = 1 - votes[np.arange(n), true]
    other = (true + 1 + rng.integers(0, k - 1, n)) % k
    votes[np.arange(n), other] += rest
    flipped = rng.random(n) < noise
    true = np.where(flipped, (true + 1) % k, true)
    return votes, true


@pytest.mark.parametrize(("k", "n"), [(2, 600), (2, 3000), (3, 3000)])
def test_the_chosen_map_never_serves_worse_probabilities_than_the_models_own(k, n):
    """Exact 0s and 1s with confidently wrong rows (label noise): the fit must not let them ruin the map, and a map
    that does not beat the model's own probabilities on rows it was not fitted on is not served."""
    rng = np.random.default_rng(k * n)
    proba, true = forest_votes(rng, 2 * n, k, 100, 0.06)
    fit, check = slice(0, n), slice(n, 2 * n)
    held_out = HeldOut(proba[fit], true[fit], 1 if k == 2 else None)
    chosen = calibrate("auto", held_out, ForestParams(n_estimators=100), 0)
    classes = np.arange(k)
    assert brier_score(true[check], chosen.apply(proba[check]), classes) <= \
        brier_score(true[check], proba[check], classes) + 0.002


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 4), st.integers(4, 200), st.integers(0, 2**32 - 1), st.sampled_from(["auto", "none", "temperature"]))
def test_any_held_out_rows_give_a_map_of_probabilities(k, n, seed, requested):
    rng = np.random.default_rng(seed)
    proba, true = forest_votes(rng, n, k, 10, 0.2)
    chosen = calibrate(requested, HeldOut(proba, true, 1 if k == 2 else None), ForestParams(n_estimators=10), seed)
    out = chosen.apply(proba)
    assert np.isfinite(out).all() and np.allclose(out.sum(axis=1), 1.0)
