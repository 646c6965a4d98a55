"""The line ``tune`` prints after each trial: the time left, estimated from the trials so far."""

from __future__ import annotations

from steps.tune import progress_line


def test_the_time_left_is_the_trials_left_at_the_pace_so_far():
    assert progress_line(2, 20, 60.0, 0.912345, "roc_auc") == \
        "tune: trial 2/20 done in 60 s, best cv roc_auc 0.9123; about 9 min left"  # 18 trials at 30 s
    assert progress_line(3, 4, 30.0, 0.5, "f1").endswith("about 10 s left")


def test_the_estimate_never_exceeds_the_time_budget():
    assert progress_line(1, 20, 100.0, 0.5, "f1", timeout=160).endswith("about 60 s left")
    assert progress_line(5, 20, 200.0, 0.5, "f1", timeout=150).endswith("about 0 s left")


def test_the_last_line_says_how_long_it_took():
    assert progress_line(6, 6, 330.0, 0.93, "roc_auc") == "tune: 6 trials done in 6 min, best cv roc_auc 0.9300"
