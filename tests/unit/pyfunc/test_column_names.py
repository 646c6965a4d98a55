"""Column names are data (issue 33): any name a CSV header holds reaches the model's columns on every path
(DataFrame, JSON records, a table of columns, explanations) exactly as a plain name does."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfunc.cleaning import FeatureSchema, InvalidInputError
from pyfunc.model import TabularClassifier
from tests.conftest import MIXED_FEATURES, ODD_NAMES, fitted_mixed_pipeline

# Any text but NUL (training refuses it: contract/tables.py), as training keeps it: without the spaces around.
NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=200) \
    .map(str.strip).filter(bool)
# The characters real headers hold and any JSON, CSV or SQL reader could trip on, often.
TRICKY = st.text(st.sampled_from(list("/.()\"':#\\` \t\n,;{}=[]é城$%") + ["\u2028", "\x01"]), min_size=1,
                 max_size=12).map(str.strip).filter(bool)
NAMES = st.lists(st.one_of(NAME, TRICKY), min_size=4, max_size=4, unique=True)
CELL = st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=False),
                 st.text(max_size=8), st.sampled_from(["?", "", " 42 ", "red", "Oslo"]))
ROWS = st.lists(st.fixed_dictionaries({c: CELL for c in MIXED_FEATURES}), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def plain() -> tuple[TabularClassifier, object, FeatureSchema]:
    pipeline, schema, _ = fitted_mixed_pipeline()
    return TabularClassifier(pipeline, schema), pipeline, schema


def renamed(model: tuple, names: list[str]) -> tuple[TabularClassifier, dict[str, str]]:
    """The same fitted model with its columns called ``names`` (the compiled path reads columns by position)."""
    _, pipeline, schema = model
    mapping = dict(zip(MIXED_FEATURES, names, strict=True))
    odd = FeatureSchema([mapping[c] for c in schema.numeric], [mapping[c] for c in schema.categorical],
                        schema.na_values)
    return TabularClassifier(pipeline, odd), mapping


def outcome(call):
    try:
        return "scored", call()
    except InvalidInputError as err:
        return "refused", err.message, err.columns


def as_plain(result, mapping: dict[str, str]):
    """An outcome of the renamed model told with the plain names, to compare with the plain model's."""
    if result[0] == "refused":
        message = result[1]
        for plain_name, odd in mapping.items():
            message = message.replace(repr(odd), repr(plain_name))
        back = {odd: plain_name for plain_name, odd in mapping.items()}
        return "refused", message, [back[c] for c in result[2]]
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=NAMES, rows=ROWS)
def test_any_column_names_score_every_path_as_plain_names_do(plain, names, rows):
    """Same predictions, or the same refusal naming the column by its own name, whatever the names hold."""
    model, mapping = renamed(plain, names)
    odd_rows = [{mapping[k]: v for k, v in row.items()} for row in rows]
    frame = pd.DataFrame(rows, dtype=object)
    odd_frame = pd.DataFrame(odd_rows, dtype=object)
    expected = outcome(lambda: plain[0].predict(None, frame).to_dict(orient="records"))
    assert as_plain(outcome(lambda: model.predict(None, odd_frame).to_dict(orient="records")), mapping) == expected
    assert as_plain(outcome(lambda: model.predict_records(odd_rows)), mapping) == expected
    columns = [tuple(row[mapping[c]] for row in odd_rows) for c in MIXED_FEATURES]
    assert as_plain(outcome(lambda: model.predict_table(names, columns)), mapping) == expected
    assert model.input_columns == [mapping[c] for c in plain[0].input_columns]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=NAMES)
def test_explanations_name_each_column_by_its_own_name(plain, names):
    model, mapping = renamed(plain, names)
    rows = [{"age": "39", "hours": "40", "colour": "red", "city": "Oslo"}]
    expected = plain[0].predict(None, pd.DataFrame(rows), params={"explain": True, "explain_classes": "all"})
    got = model.predict(None, pd.DataFrame([{mapping[k]: v for k, v in r.items()} for r in rows]),
                        params={"explain": True, "explain_classes": "all"})
    assert list(got.columns) == [re.sub(r"^contrib_(.*)$", lambda m: f"contrib_{mapping.get(m[1], m[1])}", c)
                                 for c in expected.columns]
    np.testing.assert_array_equal(got.drop(columns="explanations").to_numpy(),
                                  expected.drop(columns="explanations").to_numpy())
    for label, part in got.loc[0, "explanations"].items():
        assert part["contributions"] == {mapping[k]: v for k, v in
                                         expected.loc[0, "explanations"][label]["contributions"].items()}


def test_the_issues_names_score_like_plain_ones(plain):
    """The names of the issue's own example: ``/ . ( " : # é``, a backtick, a backslash, 200 characters."""
    assert len(ODD_NAMES["city"]) == 200
    model, mapping = renamed(plain, list(ODD_NAMES.values()))
    rows = [{"age": "39", "hours": "?", "colour": "red", "city": " Oslo "}, {"age": 52, "hours": 38.5,
                                                                             "colour": "", "city": "Atlantis"}]
    expected = plain[0].predict_records(rows)
    assert model.predict_records([{mapping[k]: v for k, v in r.items()} for r in rows]) == expected
