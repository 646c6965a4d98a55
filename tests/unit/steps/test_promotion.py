"""The promotion rule as a pure decision (steps.promotion.decide)."""

from __future__ import annotations

from steps.promotion import decide


def test_no_champion_means_promote():
    decision = decide("f1", 0.3, None, None)
    assert decision.promoted and decision.reason == "no champion yet"


def test_strictly_better_is_promoted():
    decision = decide("f1", 0.51, "4", 0.50)
    assert decision.promoted and "0.5100 > champion's 0.5000" in decision.reason


def test_a_tie_is_not_a_win():
    decision = decide("roc_auc", 0.9, "4", 0.9)
    assert not decision.promoted and "<=" in decision.reason


def test_worse_is_kept_out():
    assert not decide("accuracy", 0.8, "4", 0.81).promoted


def test_a_champion_that_cannot_be_compared_is_kept():
    decision = decide("f1", 0.99, "4", None, "champion version 4 predicts other classes")
    assert not decision.promoted and decision.reason == "champion version 4 predicts other classes"


def test_the_decision_is_recorded_as_prefixed_tags():
    tags = decide("f1", 0.51, "4", 0.5).tags()
    assert tags == {"promotion_decision": "promoted", "promotion_metric": "f1", "promotion_new_score": "0.510000",
                    "promotion_reason": "f1 0.5100 > champion's 0.5000", "promotion_champion_version": "4",
                    "promotion_champion_score": "0.500000"}
