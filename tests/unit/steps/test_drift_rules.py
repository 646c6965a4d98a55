"""The drift rules with small and large samples mixed: which test judges which column, and the thresholds' edges.

tests/unit/steps/test_drift.py checks each method on data made to drift; here the choice between them:
the sample size that decides is the smaller sample's count of values (missing cells do not count), column by
column, so a column the log barely holds is judged by a test while its well-filled neighbour is judged by a
distance, in the same monitoring run (steps.monitor.column_drift).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfunc.cleaning import FeatureSchema
from steps.drift import Rules, categorical_drift, numeric_drift
from steps.monitor import cleaned, column_drift

RULES = Rules(p_value=0.05, distance=0.1, small_sample=1000)
rng = np.random.default_rng(23)
# which method judges a column, by (kind, either sample at most small_sample values)
METHODS = {("number", True): "ks", ("number", False): "wasserstein",
           ("category", True): "chi2", ("category", False): "jensenshannon"}


def categories(n: int, shares: dict[str, float]) -> list[str]:
    return list(rng.choice(list(shares), n, p=list(shares.values())))


def test_the_smaller_sample_decides_and_small_sample_itself_counts_as_small():
    big = rng.normal(0, 1, 5000)
    for n_current, method in ((1000, "ks"), (1001, "wasserstein"), (5, "ks")):
        assert numeric_drift("x", big, rng.normal(0, 1, n_current), RULES).method == method
        assert numeric_drift("x", rng.normal(0, 1, n_current), big, RULES).method == method  # either side
    big_categories = categories(5000, {"a": 0.5, "b": 0.5})
    for n_current, method in ((1000, "chi2"), (1001, "jensenshannon"), (5, "chi2")):
        assert categorical_drift("c", big_categories, categories(n_current, {"a": 0.5, "b": 0.5}),
                                 RULES).method == method


def test_missing_cells_do_not_make_a_sample_large():
    big = rng.normal(0, 1, 5000)
    mostly_missing = np.r_[rng.normal(0, 1, 30), np.full(4970, np.nan)]
    result = numeric_drift("x", big, mostly_missing, RULES)
    assert (result.method, result.current_values, result.current_missing) == ("ks", 30, 0.994)
    labels = categories(30, {"a": 0.5, "b": 0.5}) + [None] * 4970
    assert categorical_drift("c", categories(5000, {"a": 0.5, "b": 0.5}), labels, RULES).method == "chi2"


def test_a_tiny_current_sample_beside_a_large_reference_needs_a_clear_shift():
    """Five values: a distance would call noise drift; the test asks for evidence."""
    reference = rng.normal(0, 1, 5000)
    noise = np.array([0.9, -0.4, 1.3, 0.2, 1.1])  # a mean of 0.6 sd, well within what five draws do
    judged = numeric_drift("x", reference, noise, RULES)
    assert judged.method == "ks" and not judged.drifted
    moved = numeric_drift("x", reference, noise + 4, RULES)
    assert moved.method == "ks" and moved.drifted


def test_one_category_in_both_samples_is_no_drift_and_a_new_one_is():
    assert categorical_drift("c", ["a"] * 50, ["a"] * 5, RULES).score == 1.0
    assert not categorical_drift("c", ["a"] * 50, ["a"] * 5, RULES).drifted
    switched = categorical_drift("c", ["a"] * 50, ["b"] * 20, RULES)
    assert switched.method == "chi2" and switched.drifted and switched.unseen == 1.0


def test_a_score_exactly_at_a_threshold_is_no_drift():
    ref, cur = rng.normal(0, 1, 800), rng.normal(0.2, 1, 800)
    p = numeric_drift("x", ref, cur, RULES).score
    assert not numeric_drift("x", ref, cur, Rules(p_value=p)).drifted  # drift is p below the threshold
    assert numeric_drift("x", ref, cur, Rules(p_value=math.nextafter(p, 1))).drifted
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.2, 1, 3000)
    distance = numeric_drift("x", ref, cur, RULES).score
    assert not numeric_drift("x", ref, cur, Rules(distance=distance)).drifted  # drift is a distance above it
    assert numeric_drift("x", ref, cur, Rules(distance=math.nextafter(distance, 0))).drifted
    big_ref, big_cur = categories(3000, {"a": 0.5, "b": 0.5}), categories(3000, {"a": 0.4, "b": 0.6})
    js = categorical_drift("c", big_ref, big_cur, RULES).score
    assert not categorical_drift("c", big_ref, big_cur, Rules(distance=js)).drifted
    assert categorical_drift("c", big_ref, big_cur, Rules(distance=math.nextafter(js, 0))).drifted


@settings(max_examples=40, deadline=None)
@given(n_reference=st.integers(1, 60), n_current=st.integers(1, 60), small=st.integers(1, 60),
       missing=st.integers(0, 20), kind=st.sampled_from(["number", "category"]))
def test_the_method_follows_the_smaller_count_of_values(n_reference, n_current, small, missing, kind):
    rules = Rules(small_sample=small)
    if kind == "number":
        result = numeric_drift("x", rng.normal(0, 1, n_reference), np.r_[rng.normal(0, 1, n_current),
                                                                          np.full(missing, np.nan)], rules)
    else:
        result = categorical_drift("c", categories(n_reference, {"a": 0.5, "b": 0.5}),
                                   categories(n_current, {"a": 0.5, "b": 0.5}) + [None] * missing, rules)
    assert result.kind == kind and (result.reference_values, result.current_values) == (n_reference, n_current)
    assert result.method == METHODS[kind, min(n_reference, n_current) <= small]


def test_one_monitoring_run_judges_each_column_by_its_own_sample():
    """A numeric and a categorical column the log holds in full, each beside one it barely holds, and a
    column it does not hold at all: each gets its own method, and the tiny ones do not drift on noise."""
    schema = FeatureSchema(["age", "rare_number", "never_sent"], ["city", "rare_category"], ["?"])
    n = 3000
    reference = pd.DataFrame({
        "age": rng.normal(40, 10, n).round(1).astype(str), "rare_number": rng.normal(5, 1, n).round(2).astype(str),
        "never_sent": rng.normal(0, 1, n).round(2).astype(str),
        "city": categories(n, {"Oslo": 0.5, "Lima": 0.3, "Pune": 0.2}),
        "rare_category": categories(n, {"x": 0.5, "y": 0.5})}, dtype=object)
    current = pd.DataFrame({
        "age": rng.normal(48, 10, n).round(1).astype(str),  # moved by 0.8 sd
        "rare_number": ["5.1", "4.2", "5.9", "?"] + [""] * (n - 4),
        "never_sent": [None] * n,
        "city": categories(n, {"Oslo": 0.2, "Lima": 0.3, "Pune": 0.5}),
        "rare_category": ["x", "y", "x"] + ["?"] * (n - 3)}, dtype=object)
    drifts, absent = column_drift(schema, cleaned(reference, schema), cleaned(current, schema), RULES)
    judged = {d.column: (d.kind, d.method, d.current_values, d.drifted) for d in drifts}
    assert judged == {"age": ("number", "wasserstein", n, True), "rare_number": ("number", "ks", 3, False),
                      "city": ("category", "jensenshannon", n, True),
                      "rare_category": ("category", "chi2", 3, False)}
    assert absent == ["never_sent"]  # no value at all: not a test, a column the log does not hold
