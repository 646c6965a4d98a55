"""MLflow's scoring protocol as the fast worker parses it (model_server.protocol)."""

from __future__ import annotations

import io

import orjson
import pandas as pd
import pytest

from model_server.protocol import ProtocolError, parse_request, predictions_body

ROWS = [{"age": "39", "city": "Oslo"}, {"age": 52, "city": None}]


def parsed(payload: object, content_type: str = "application/json") -> list[dict]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parse_request(body, content_type).records


@pytest.mark.parametrize("payload", [
    {"dataframe_records": ROWS},
    {"dataframe_split": {"columns": ["age", "city"], "data": [["39", "Oslo"], [52, None]]}},
    {"dataframe_split": {"columns": ["age", "city"], "index": [7, 8], "data": [["39", "Oslo"], [52, None]]}},
    {"instances": ROWS},
    {"inputs": ROWS},
    {"inputs": {"age": ["39", 52], "city": ["Oslo", None]}},
    {"instances": {"age": ["39", 52], "city": ["Oslo", None]}},
], ids=["records", "split", "split with index", "instances rows", "inputs rows", "inputs columns",
        "instances columns"])
def test_every_json_format_gives_the_same_rows(payload):
    assert parsed(payload) == ROWS


def test_params_travel_beside_the_rows():
    request = parse_request(orjson.dumps({"dataframe_records": ROWS, "params": {"on_invalid": "report"}}),
                            "application/json; charset=utf-8")
    assert request.params == {"on_invalid": "report"} and request.records == ROWS


def test_csv_cells_stay_text_as_in_the_file():
    body = b'age,city,note\n39,Oslo,"a, quoted\nline"\n ?,,x\n\n'
    assert parsed(body, "text/csv") == [{"age": "39", "city": "Oslo", "note": "a, quoted\nline"},
                                         {"age": " ?", "city": "", "note": "x"}]


def test_parquet_is_read_as_a_table():
    buffer = io.BytesIO()
    pd.DataFrame({"age": ["39"], "city": ["Oslo"]}).to_parquet(buffer)
    request = parse_request(buffer.getvalue(), "application/vnd.apache.parquet")
    assert request.as_frame().to_dict(orient="records") == [{"age": "39", "city": "Oslo"}]


@pytest.mark.parametrize(("body", "content_type", "status", "words"), [
    (b"{not json", "application/json", 400, "valid JSON"),
    (b"[1, 2]", "application/json", 400, "Received a list"),
    (b'{"rows": []}', "application/json", 400, "exactly one of the input fields"),
    (b'{"dataframe_records": [], "inputs": []}', "application/json", 400, "exactly one"),
    (b'{"dataframe_records": {"age": 1}}', "application/json", 400, "must be a list of records"),
    (b'{"dataframe_records": [1, 2]}', "application/json", 400, "column: value"),
    (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', "application/json", 400, "row 0 has 2 values"),
    (b'{"dataframe_split": {"columns": ["a"]}}', "application/json", 400, "'data' field"),
    (b'{"dataframe_records": [], "params": [1]}', "application/json", 400, "params"),
    (b'{"inputs": {"a": [1, 2], "b": [1]}}', "application/json", 400, "not the same"),
    (b"a,b\n1,2,3\n", "text/csv", 400, "line 2 has 3 cells"),
    (b"\xff\xfe", "text/csv", 400, "UTF-8"),
    (b"not parquet", "application/vnd.apache.parquet", 400, "Parquet"),
    (b"{}", "text/plain", 415, "only supports the following content types"),
    (b"{}", "application/json; charset=latin-1", 415, "UTF-8"),
    (b"{}", "application/json; format=pandas-split", 415, "Unrecognized content type parameters: format"),
])
def test_refusals_have_mlflows_status_and_say_what_is_wrong(body, content_type, status, words):
    with pytest.raises(ProtocolError) as refused:
        parse_request(body, content_type)
    assert refused.value.status == status and words in refused.value.message
    answer = refused.value.body()
    if status == 400:
        assert orjson.loads(answer)["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
    else:
        assert answer.startswith(refused.value.message[:10].encode())  # MLflow answers 415 as plain text


def test_an_error_never_pastes_the_input_back():
    secret = "4111-1111-1111-1111"
    with pytest.raises(ProtocolError) as refused:
        parse_request(orjson.dumps({"dataframe_records": [{"card": secret}], "inputs": []}), "application/json")
    assert secret not in refused.value.message


def test_predictions_are_strict_json():
    body = predictions_body([{"label": None, "probability": float("nan"), "proba_x": float("inf")}])
    assert body == b'{"predictions":[{"label":null,"probability":null,"proba_x":null}]}'
