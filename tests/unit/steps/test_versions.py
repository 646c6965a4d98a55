"""A version's parameters as its train run logged them (steps/versions.py: run_param)."""

from __future__ import annotations

import shlex

from hypothesis import given
from hypothesis import strategies as st

from contract.params import column_list, format_value
from steps.versions import run_param

NAMES = st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20).map(str.strip)
                 .filter(bool), max_size=4, unique=True).filter(lambda names: not "".join(names).startswith("'"))
# (one name that is itself a shell-quoted text, `'a b'`, would read back unquoted: the one ambiguity left)


@given(NAMES)
def test_sensitive_columns_read_back_whether_mlflow_run_quoted_them_or_a_driver_logged_them_as_they_are(names):
    logged = format_value(tuple(names))  # what a step given these names logs (run_child), and passes on
    for raw in (logged, shlex.quote(logged)):  # ... and what `mlflow run -P` logs: shell-quoted
        assert column_list(run_param({"sensitive_columns": raw}, "sensitive_columns")) == tuple(names)


def test_an_absent_or_empty_parameter_is_empty():
    assert run_param({}, "sensitive_columns") == ""
    assert run_param({"sensitive_columns": "''"}, "sensitive_columns") == ""
    assert run_param({"sensitive_columns": "it's"}, "sensitive_columns") == "it's"  # unbalanced: not quoted
