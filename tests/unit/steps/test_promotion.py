"""The promotion rule (steps.promotion.decide) and its paired bootstrap, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from steps.promotion import Answers, Rule, Scores, decide, paired_bootstrap
from steps.splits import Labels

RULE = Rule("f1", min_delta=0.01, guards=("accuracy", "roc_auc"), guard_tolerance=0.01)
CHAMPION = {"f1": 0.50, "accuracy": 0.90, "roc_auc": 0.90, "precision": 0.5, "recall": 0.5}


def scores(interval=(0.01, 0.05), **new: float) -> Scores:
    return Scores({**CHAMPION, **new}, CHAMPION, interval)


def test_no_champion_means_promote():
    decision = decide(RULE, 0.3, None, None)
    assert decision.promoted and decision.decided_by == "no_champion"


def test_a_champion_that_cannot_be_compared_is_kept():
    decision = decide(RULE, 0.99, "4", None, "champion version 4 predicts other classes")
    assert not decision.promoted and decision.reason == "champion version 4 predicts other classes"


def test_a_clearly_better_version_is_promoted():
    decision = decide(RULE, 0.55, "4", scores(f1=0.55))
    assert decision.promoted and decision.decided_by == "every_condition"
    assert decision.difference == pytest.approx(0.05) and decision.champion_score == 0.5


def test_better_by_less_than_min_delta_is_kept():
    decision = decide(RULE, 0.509, "4", scores(f1=0.509))
    assert not decision.promoted and decision.decided_by == "min_delta"


def test_a_tie_is_not_a_win_even_with_no_minimum():
    decision = decide(Rule("f1", min_delta=0.0), 0.5, "4", scores(f1=0.5, interval=(0.0, 0.0)))
    assert not decision.promoted and decision.decided_by == "min_delta"


def test_better_but_not_significant_is_kept():
    decision = decide(RULE, 0.53, "4", scores(f1=0.53, interval=(-0.004, 0.06)))
    assert not decision.promoted and decision.decided_by == "significance" and "does not exclude 0" in decision.reason
    assert not decide(RULE, 0.53, "4", scores(f1=0.53, interval=(0.0, 0.06))).promoted  # 0 is not above 0


def test_better_on_the_metric_but_a_guard_drops_too_much_is_kept():
    # the case found by hand: F1 up, accuracy from 0.870 to 0.846
    decision = decide(RULE, 0.56, "4", scores(f1=0.56, accuracy=0.846))
    assert not decision.promoted and decision.decided_by == "guard:accuracy" and "0.9000 -> 0.8460" in decision.reason
    tolerated = decide(RULE, 0.56, "4", scores(f1=0.56, accuracy=0.891))
    assert tolerated.promoted  # a drop within guard_tolerance is allowed


def test_the_decision_is_recorded_as_prefixed_tags():
    tags = decide(RULE, 0.55, "4", scores(f1=0.55)).tags()
    assert tags["promotion_decision"] == "promoted" and tags["promotion_decided_by"] == "every_condition"
    assert tags["promotion_difference"] == "0.050000" and tags["promotion_interval"] == "[0.010000, 0.050000]"
    assert tags["promotion_champion_version"] == "4" and '"accuracy"' in tags["promotion_guards"]


def labels(y: np.ndarray) -> Labels:
    return Labels(y, y, np.array([0, 1]), 1)


def argmax(proba: np.ndarray) -> Answers:
    return Answers(proba, proba.argmax(axis=1))


def test_the_paired_bootstrap_interval_excludes_zero_only_for_a_real_gain():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(int)
    good = np.where(y[:, None] == 1, [0.2, 0.8], [0.8, 0.2]) * 1.0
    noisy = np.clip(good + rng.normal(0, 0.45, good.shape), 0, 1)
    noisy = noisy / noisy.sum(axis=1, keepdims=True)
    low, high = paired_bootstrap("f1", labels(y), argmax(good), argmax(noisy), seed=7, resamples=300)
    assert 0 < low < high
    same_low, same_high = paired_bootstrap("f1", labels(y), argmax(noisy), argmax(noisy), seed=7, resamples=300)
    assert same_low == same_high == 0.0
    assert paired_bootstrap("f1", labels(y), argmax(good), argmax(noisy), seed=7, resamples=300) == (low, high)
    # the labels each version returns are scored (its own threshold), not the argmax of its probabilities
    cut_low = Answers(noisy, (noisy[:, 1] >= 0.2).astype(int))
    assert paired_bootstrap("f1", labels(y), cut_low, argmax(noisy), seed=7, resamples=300) != (0.0, 0.0)
