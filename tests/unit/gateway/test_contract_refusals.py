"""A body the model server refused under the gateway's contract (contract/predict_body.py) is answered as the
gateway answers the same body read by itself, and counts as the caller's fault, never the version's (a canary is
not rolled back for a caller's bad bodies)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from contract.predict_body import BodyRefused, check_fields, check_row_count
from gateway.batching import Answer
from gateway.predictor import as_http_error, the_callers_fault
from gateway.routes.predict import parse_predict_body


def refusal(rule, *args) -> BodyRefused:  # noqa: ANN001
    with pytest.raises(BodyRefused) as refused:
        rule(*args)
    return refused.value


@pytest.mark.parametrize(("refused", "body"), [
    (refusal(check_fields, ["records", "params"]), b'{"records": [{"age": 1}], "params": {"explain": true}}'),
    (refusal(check_row_count, 3, 2), b'{"records": [{"age": 1}, {"age": 2}, {"age": 3}]}'),
], ids=["params", "rows"])
def test_the_model_servers_refusal_is_answered_as_the_gateways_own_reading_of_the_body(refused, body):
    answer = Answer(refused.status, refused.as_answer(), "1")
    with pytest.raises(HTTPException) as own:
        parse_predict_body(body, "application/json", 2)
    passed_on = as_http_error(BodyRefused.from_answer(answer.status, answer.body))
    assert (passed_on.status_code, passed_on.detail) == (own.value.status_code, own.value.detail)
    assert the_callers_fault(answer)


def test_other_refusals_keep_their_old_meaning():
    assert the_callers_fault(Answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "column 'age'"}))
    assert not the_callers_fault(Answer(422, {"error_code": "BAD_REQUEST", "message": "x"}))
    assert not the_callers_fault(Answer(500, {"message": "boom"}))


def test_a_body_passed_on_unread_that_the_gateway_cannot_read_is_the_callers_fault_not_the_versions():
    """The model server refuses a malformed body with MLflow's 400 BAD_REQUEST, the code of a model that
    raised too: the gateway's own reading tells them apart, so malformed bodies cannot roll a canary back."""
    from gateway.model_client import Rows
    from gateway.predictor import Predictor

    def unread(body: bytes) -> Rows:
        return Rows(body=body, parse=lambda: parse_predict_body(body, "application/json", 2))

    assert Predictor._unreadable(unread(b'{"records": [{"age": 1}'))
    assert Predictor._unreadable(unread(b'{"records": [{"age": 1}, {"age": 2}, {"age": 3}]}'))  # over the limit
    assert not Predictor._unreadable(unread(b'{"records": [{"age": 1}]}'))  # readable: the model's failure
    assert not Predictor._unreadable(Rows(records=[{"age": 1}]))  # read already, by the gateway


def test_a_body_passed_on_unread_is_read_once_however_often_its_refusal_is_asked_for():
    """Whether a canary failed and what the caller is told both need the gateway's reading of a refused body:
    one reading of a body that may be megabytes."""
    from gateway.model_client import Rows

    reads = []

    def parse() -> list:
        reads.append(1)
        return parse_predict_body(b'{"records": [', "application/json", 2)

    rows = Rows(body=b'{"records": [', parse=parse)
    for _ in range(3):
        with pytest.raises(HTTPException) as refused:
            rows.parsed()
        assert refused.value.status_code == 422
    assert len(reads) == 1
