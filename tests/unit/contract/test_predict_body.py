"""The gateway's prediction-body contract (contract/predict_body.py): the one rule both the gateway and the model
server check before any scoring (issue 33, symptom 9: a big body's params and row count were checked after)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.predict_body import (
    MAX_ROWS_SETTING,
    REFUSED_CODE,
    BodyRefused,
    check_fields,
    check_has_rows,
    check_row_count,
    max_rows_of,
)

field_names = st.text(min_size=0, max_size=30)  # any text a JSON key can hold


def test_the_gateways_body_holds_records_and_nothing_else():
    check_fields(["records"])
    with pytest.raises(BodyRefused) as refused:
        check_fields(["records", "params"])
    assert (refused.value.status, refused.value.loc, refused.value.kind) == (422, ("body", "params"), "extra_forbidden")
    with pytest.raises(BodyRefused) as refused:
        check_fields([])
    assert (refused.value.status, refused.value.loc, refused.value.kind) == (422, ("body", "records"), "missing")


def test_mlflows_formats_with_params_are_refused_naming_each_field():
    with pytest.raises(BodyRefused) as refused:
        check_fields(["dataframe_records", "params"])
    assert refused.value.status == 422
    assert "'params'" in refused.value.message and "'dataframe_records'" in refused.value.message


@given(st.sets(field_names, max_size=5))
def test_any_field_beside_records_is_refused_and_named_as_data(fields):
    if fields == {"records"}:
        check_fields(fields)
        return
    with pytest.raises(BodyRefused) as refused:
        check_fields(fields)
    assert refused.value.status == 422
    extra = sorted(fields - {"records"})
    if extra:
        assert refused.value.loc == ("body", extra[0])  # the name itself, whatever it holds
        assert all(repr(name) in refused.value.message for name in extra)


@given(st.integers(0, 10**7), st.integers(1, 10**7))
def test_at_most_the_limit_of_rows_is_accepted_and_more_is_a_413_naming_the_limit(rows, max_rows):
    if rows <= max_rows:
        check_row_count(rows, max_rows)
        return
    with pytest.raises(BodyRefused) as refused:
        check_row_count(rows, max_rows)
    assert refused.value.status == 413
    assert refused.value.message == f"records: {rows} rows, at most {max_rows} per request ({MAX_ROWS_SETTING})"


def test_the_limit_named_is_the_one_the_caller_gives():
    with pytest.raises(BodyRefused, match=r"\(GATEWAY_MAX_EXPLAIN_ROWS\)"):
        check_row_count(101, 100, "GATEWAY_MAX_EXPLAIN_ROWS")


@pytest.mark.parametrize(("csv", "loc"), [(False, ("body", "records")), (True, ("body",))])
def test_a_body_without_rows_is_refused(csv, loc):
    check_has_rows(1, csv)
    with pytest.raises(BodyRefused) as refused:
        check_has_rows(0, csv)
    assert (refused.value.status, refused.value.loc, refused.value.kind) == (422, loc, "too_short")


@given(st.integers(1, 10**9))
def test_the_header_gives_a_positive_row_limit(max_rows):
    assert max_rows_of(str(max_rows)) == max_rows
    assert max_rows_of(f" {max_rows} ") == max_rows


@given(st.text(max_size=20))
def test_a_header_that_is_not_a_positive_whole_number_is_refused_naming_it(header):
    if header.strip().isascii() and header.strip().isdigit() and int(header.strip()) >= 1:
        return
    with pytest.raises(ValueError, match="X-Gateway-Max-Rows"):
        max_rows_of(header)


def test_no_header_means_no_contract():
    assert max_rows_of(None) is None


@given(st.sampled_from([413, 422]), st.lists(st.one_of(field_names, st.integers(0, 99)), max_size=3),
       st.text(max_size=50), st.text(max_size=20))
def test_a_refusal_travels_as_the_model_servers_answer_and_back_unchanged(status, loc, message, kind):
    sent = BodyRefused(status, ("body", *loc), message, kind)
    back = BodyRefused.from_answer(status, sent.as_answer())
    assert back is not None
    assert (back.status, back.loc, back.message, back.kind) == (status, ("body", *loc), message, kind)


@pytest.mark.parametrize(("status", "body"), [
    (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "column 'age'"}),  # the model's refusal
    (422, {"error_code": "BAD_REQUEST", "message": "x"}),
    (400, {"error_code": REFUSED_CODE, "message": "x"}),  # not a status the contract answers
    (413, "not json"),
    (200, {"predictions": []}),
])
def test_other_answers_are_not_contract_refusals(status, body):
    assert BodyRefused.from_answer(status, body) is None
