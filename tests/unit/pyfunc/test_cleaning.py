"""The one raw-input cleaning path: markers, whitespace, column kinds, typed output, errors."""

import math

import numpy as np
import pandas as pd
import pytest

from pyfunc.cleaning import (
    MISSING,
    FeatureSchema,
    InvalidInputError,
    category_codes,
    clean_category,
    clean_raw_frame,
    clean_values,
    infer_feature_schema,
    normalize_missing,
    record_columns,
)

SCHEMA = FeatureSchema(numeric=["age", "hours"], categorical=["colour"], na_values=["?", "n/a"])


def test_normalize_missing_strips_text_and_maps_markers_and_blanks_to_nan():
    raw = pd.DataFrame({"a": [" x ", "?", "", "   ", None, "n/a", "?x"], "b": [1, 2, 3, 4, 5, 6, 7]})
    out = normalize_missing(raw, ["?", "n/a"])
    assert out["a"].iloc[0] == "x"
    assert out["a"].iloc[1:6].isna().all()
    assert out["a"].iloc[6] == "?x"  # only whole-cell markers are missing
    assert list(out["b"]) == [1, 2, 3, 4, 5, 6, 7]


def test_infer_schema_numbers_as_text_are_numeric_and_any_word_makes_categorical():
    raw = pd.DataFrame(
        {
            "age": ["39", " 50 ", "?", "1e3"],
            "code": ["1", "2", "x", "3"],
            "colour": ["red", "blue", "?", "red"],
            "empty": ["?", "", " ", "?"],
        }
    )
    schema = infer_feature_schema(raw, ["?"])
    assert schema.numeric == ["age"]
    assert schema.categorical == ["code", "colour"]
    assert "empty" not in schema.columns  # an all-missing column carries nothing


def test_clean_raw_frame_types_values_like_the_csv_would():
    raw = pd.DataFrame(
        {
            "colour": [" red", 5, 5.0, "?", None, "n/a"],
            "age": ["39", 40, " 41.5 ", "?", "", np.nan],
            "hours": [1, "2", "NaN", None, "  ", "3"],
            "extra": ["ignored"] * 6,
        }
    )
    out = clean_raw_frame(raw, SCHEMA)
    assert list(out.columns) == ["age", "hours", "colour"]  # extras dropped, schema order
    assert out["age"].dtype == np.float64 and out["hours"].dtype == np.float64
    assert out["age"].tolist()[:3] == [39.0, 40.0, 41.5]
    assert out["age"].iloc[3:].isna().all()
    assert out["hours"].iloc[2:5].isna().all()
    assert out["colour"].tolist()[:3] == ["red", "5", "5"]  # JSON 5 and 5.0 match a CSV's "5"
    assert all(isinstance(v, float) and math.isnan(v) for v in out["colour"].iloc[3:])


def test_clean_raw_frame_is_idempotent_on_cleaned_input():
    raw = pd.DataFrame({"age": ["39", "?"], "hours": ["1", "2"], "colour": [" red ", "?"]})
    once = clean_raw_frame(raw, SCHEMA)
    twice = clean_raw_frame(once, SCHEMA)
    pd.testing.assert_frame_equal(once, twice)


def test_missing_columns_are_named():
    with pytest.raises(InvalidInputError) as err:
        clean_raw_frame(pd.DataFrame({"age": [1]}), SCHEMA)
    assert err.value.columns == ["hours", "colour"]
    assert "'hours'" in str(err.value) and "'colour'" in str(err.value)


@pytest.mark.parametrize(
    "bad", ["abc", "1,5", "inf", "-Infinity", "1e400", 10**400, float("inf"), 1e300, True, [1], {"a": 1}]
)
def test_a_value_that_is_not_a_finite_number_names_its_column(bad):
    raw = pd.DataFrame({"age": [30, bad], "hours": [1, 2], "colour": ["red", "red"]}, dtype=object)
    with pytest.raises(InvalidInputError) as err:
        clean_raw_frame(raw, SCHEMA)
    assert err.value.columns == ["age"]
    assert "'age'" in str(err.value) and "row 1" in str(err.value)


def test_invalid_input_is_a_400_for_the_mlflow_scoring_server():
    err = InvalidInputError("x", ["a"])
    assert err.get_http_status_code() == 400


def test_schema_round_trips_through_json():
    assert FeatureSchema.from_json(SCHEMA.to_json()) == SCHEMA


CELLS = [1, True, "1", " x ", "?", None, 1.0, 2.5, "y", False, 0, "True"]
CODES = {"1": 10, "True": 11, "x": 12, MISSING: 13, "2.5": 14, "False": 15, "0": 16}


def cell_by_cell(values: list, markers: frozenset) -> list[int]:
    return [CODES.get(clean_category(value, markers), -1) for value in values]


@pytest.mark.parametrize("order", [CELLS, CELLS[::-1]])  # a bool first or a number first in the column
def test_category_codes_never_code_a_bool_as_the_number_it_equals(order):
    values, markers = order * 3, frozenset(["?"])  # long enough to be cleaned one distinct value at a time
    coded = category_codes(values, markers, CODES)
    # cleaned by distinct value only when that gives what each cell would; else the caller goes cell by cell
    assert coded is None or list(coded) == cell_by_cell(values, markers)


@pytest.mark.parametrize("cells", [["a", " b", "?", None, "True", "1"], [1, 2.5, "1", " x", None, 0]])
def test_category_codes_clean_text_and_numbers_one_distinct_value_at_a_time(cells):
    values, markers = cells * 4, frozenset(["?"])
    coded = category_codes(values, markers, CODES)
    assert coded is not None and list(coded) == cell_by_cell(values, markers)


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}])
def test_a_list_or_an_object_in_a_long_column_is_refused_naming_its_row(bad):
    schema = FeatureSchema(numeric=["age"], categorical=["colour"], na_values=[])
    ages, colours = ["30"] * 20, ["red"] * 20
    assert category_codes(colours[:10] + [bad] + colours[10:], frozenset(), CODES) is None
    colours[7] = bad
    with pytest.raises(InvalidInputError) as err:
        clean_values([ages, colours], schema)
    assert "'colour' row 7" in str(err.value)


def test_a_bool_behind_an_equal_number_in_a_long_numeric_column_is_refused_naming_its_row():
    schema = FeatureSchema(numeric=["age"], categorical=[], na_values=[])
    values = [1.0] * 20 + [True] + [2] * 5
    with pytest.raises(InvalidInputError) as err:
        clean_values([values], schema)
    assert "'age' row 20" in str(err.value)


def test_record_columns_reads_every_row_by_name_whatever_key_objects_or_order_the_rows_use():
    schema = FeatureSchema(["age"], ["city"], [])
    # the first row's keys are other text objects than the schema's; later rows have their own objects
    # and their own key order (a parser that does not share key objects, or rows built by hand)
    first = {"".join(["ci", "ty"]): "Oslo", "".join(["a", "ge"]): "40", "extra": 1}
    rows = [first, {"age": 7, "city": "Rome"}, {"city": None, "age": "?"}] * 4  # enough rows for the own keys
    assert record_columns(rows, schema) == [("40", 7, "?") * 4, ("Oslo", "Rome", None) * 4]
    assert record_columns(rows[:3], schema) == [("40", 7, "?"), ("Oslo", "Rome", None)]
    assert record_columns([{"age": "1"}, {"age": 2}], FeatureSchema(["age"], [], [])) == [("1", 2)]
    with pytest.raises(InvalidInputError, match="city"):
        record_columns([{"age": 1, "city": "x"}, {"age": 2}], schema)
