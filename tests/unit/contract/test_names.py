"""contract.names.store_key: the one mapping from a user's name (a column) to a file name or MLflow metric key."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from mlflow.utils.validation import _validate_metric_name

from contract.names import store_key

# letters, digits, `_` and `-`: in every file system's names and in MLflow's metric keys
KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
# any text a CSV header can hold, surrogates aside (UTF-8 cannot carry them); the characters that broke the
# monitor step, and names as long as 200 characters, drawn often
NAMES = st.text(st.characters(exclude_categories=["Cs"]), max_size=250) | st.text(
    st.sampled_from(list("/.()\"':#\\ $é日本-_aA0")), min_size=0, max_size=200) | st.text(
    st.sampled_from(list("abcXYZ019/ ")), min_size=100, max_size=300)


@given(NAMES)
def test_a_key_is_deterministic_bounded_and_made_of_allowed_characters(name):
    key = store_key(name)
    assert key == store_key(name)
    assert KEY.fullmatch(key), key
    assert key not in (".", "..")
    _validate_metric_name(f"drift_score/{key}")  # MLflow's own rule for metric keys


@given(NAMES, NAMES)
def test_distinct_names_have_distinct_keys(first, second):
    if first != second:
        assert store_key(first) != store_key(second)
        assert store_key(first).lower() != store_key(second).lower()  # case-insensitive disks too


def test_names_that_slug_alike_stay_apart_and_a_key_stays_readable():
    alike = ["debt/income", "debt_income", "debt income", "debt:income", "Debt/income", "débt/income"]
    assert len({store_key(n) for n in alike}) == len(alike)
    assert store_key("debt/income").startswith("debt_income-")
    assert store_key("年齢").startswith("x-")  # nothing readable in ASCII: the hash alone tells them apart
