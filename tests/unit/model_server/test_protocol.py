"""MLflow's scoring protocol as the fast worker parses it (model_server.protocol)."""

from __future__ import annotations

import csv
import io
import json

import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.packing import pack, unpack
from model_server.protocol import (
    ProtocolError,
    RecordsReader,
    as_mlflow_body,
    check_encoding,
    contract_rows,
    decoded,
    parse_request,
    predictions_body,
)

ROWS = [{"age": "39", "city": "Oslo"}, {"age": 52, "city": None}]


def parsed(payload: object, content_type: str = "application/json") -> list[dict]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parse_request(body, content_type).as_records()


@pytest.mark.parametrize("payload", [
    {"dataframe_records": ROWS},
    {"dataframe_split": {"columns": ["age", "city"], "data": [["39", "Oslo"], [52, None]]}},
    {"dataframe_split": {"columns": ["age", "city"], "index": [7, 8], "data": [["39", "Oslo"], [52, None]]}},
    {"instances": ROWS},
    {"inputs": ROWS},
    {"inputs": {"age": ["39", 52], "city": ["Oslo", None]}},
    {"instances": {"age": ["39", 52], "city": ["Oslo", None]}},
    {"records": ROWS},
], ids=["records", "split", "split with index", "instances rows", "inputs rows", "inputs columns",
        "instances columns", "the gateway's body"])
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


def test_a_csv_body_is_read_column_by_column_with_no_dict_a_row():
    request = parse_request(b'age,city\n39,Oslo\n\n52,"Lima, Peru"\n', "text/csv")
    assert request.records is None and request.rows == 2
    assert request.columns == (["age", "city"], [("39", "52"), ("Oslo", "Lima, Peru")])
    assert request.as_frame().to_dict(orient="records") == [{"age": "39", "city": "Oslo"},
                                                            {"age": "52", "city": "Lima, Peru"}]
    empty = parse_request(b"age,city\n", "text/csv")
    assert empty.rows == 0 and empty.columns == (["age", "city"], [(), ()]) and empty.as_records() == []


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["age", "city"], "data": [["39", "Oslo"], [52, None]]}},
    {"inputs": {"age": ["39", 52], "city": ["Oslo", None]}},
], ids=["split", "inputs columns"])
def test_bodies_sent_column_by_column_or_as_a_split_table_are_kept_as_columns(payload):
    request = parse_request(orjson.dumps(payload), "application/json")
    assert request.records is None and request.rows == 2
    names, cells = request.columns
    assert names == ["age", "city"] and [list(c) for c in cells] == [["39", 52], ["Oslo", None]]


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
    with pytest.raises(ProtocolError) as through_a_reader:  # a model's reader changes no refusal
        parse_request(body, content_type, RecordsReader(["a", "b"]))
    assert (through_a_reader.value.status, through_a_reader.value.message) == (status, refused.value.message)
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


@pytest.mark.parametrize("payload", [{"records": ROWS, "params": {}}, {"records": {"age": 1}}, {"records": [1]}])
def test_the_gateways_body_is_refused_with_anything_beside_or_inside_it_but_rows(payload):
    with pytest.raises(ProtocolError) as err:
        parsed(payload)
    assert err.value.status == 400


def test_the_gateways_body_and_csv_become_mlflows_for_mlflow_models_serve_and_nothing_else_changes():
    body = orjson.dumps({"records": ROWS})
    converted, content_type = as_mlflow_body(body, "application/json")
    assert orjson.loads(converted) == {"dataframe_records": ROWS} and content_type == "application/json"
    as_csv, content_type = as_mlflow_body(b"age,city\n39,Oslo\n", "text/csv; charset=utf-8")
    assert orjson.loads(as_csv) == {"dataframe_records": [{"age": "39", "city": "Oslo"}]}  # cells stay text
    assert content_type == "application/json"
    with pytest.raises(ProtocolError) as refused:  # as strict as the fast worker's reading
        as_mlflow_body(b"age,city\n39\n", "text/csv")
    assert refused.value.status == 400 and "line 2" in refused.value.message
    for other in (orjson.dumps({"dataframe_records": ROWS}), orjson.dumps({"records": ROWS, "x": 1})):
        assert as_mlflow_body(other, "application/json") == (other, "application/json")


def test_a_packed_body_is_unpacked_and_other_codings_are_refused():
    body = orjson.dumps({"records": ROWS})
    assert decoded(pack(body), check_encoding("zstd")) == body and decoded(body, check_encoding("")) == body
    with pytest.raises(ProtocolError) as refused:
        check_encoding("gzip")
    assert refused.value.status == 415 and "gzip" in refused.value.message
    with pytest.raises(ProtocolError) as broken:
        decoded(b"not zstd at all", "zstd")
    assert broken.value.status == 400 and "zstd" in broken.value.message


def test_a_packed_frame_that_would_unpack_beyond_the_limit_is_refused_before_unpacking():
    big = pack(b"x" * 10_000)
    assert unpack(big) == b"x" * 10_000
    with pytest.raises(ValueError, match="more than 1000"):
        unpack(big, limit=1000)


def outcome(body: bytes, reader: RecordsReader | None) -> tuple:
    """What parse_request makes of a JSON body: its rows (as dicts) and params, or its refusal."""
    try:
        request = parse_request(body, "application/json", reader)
    except ProtocolError as err:
        return "refused", err.status, err.message
    return "read", request.as_records(), request.params


CELLS = [{"age": "39", "home town": "Oslo", "note": [1, {"x": 2}]},
         {"note": None, "home town": None, "age": 52.5},
         {"age": 12345678901234567890, "home town": True, "note": "x"},
         {"age": -0.0, "home town": "", "note": "y"}]


@pytest.mark.parametrize("key", ["records", "dataframe_records"])
def test_a_records_body_is_read_straight_into_the_models_columns_with_the_cells_json_gives(key):
    """In the reader's column order, whatever the rows' key order; a column the model does not read is left
    unread (the lists and objects in 'note' included); every cell as the generic reading gives it."""
    reader = RecordsReader(["home town", "age"])
    body = orjson.dumps({key: CELLS})
    request = parse_request(body, "application/json", reader)
    assert request.records is None and request.rows == 4
    names, cells = request.columns
    assert names == ["home town", "age"]
    generic = parse_request(body, "application/json").as_records()
    assert [list(column) for column in cells] == [[row[name] for row in generic] for name in names]
    assert [type(v) for v in cells[1]] == [str, float, type(generic[2]["age"]), float]


def test_a_reader_of_one_column_reads_it():
    request = parse_request(orjson.dumps({"records": [{"age": 1, "x": 2}, {"age": "3"}]}), "application/json",
                            RecordsReader(["age"]))
    assert request.columns == (["age"], [(1, "3")])


@pytest.mark.parametrize("payload", [
    {"records": [{"age": 1, "city": "Oslo"}, {"age": 2}]},
    {"records": [{" age": 1, "city": "Oslo"}]},
    {"records": [{"age": 1, "city": "Oslo"}, ["2", "Lima"]]},
    {"records": {"age": 1, "city": "Oslo"}},
    {"dataframe_records": [{"age": 1, "city": "Oslo"}], "params": {"explain": True}},
    {"records": [{"age": 1, "city": "Oslo"}], "params": {}},
    {"records": [{"age": 1, "city": "Oslo"}], "dataframe_records": [{"age": 1, "city": "Oslo"}]},
    {"records": []},
    {"dataframe_records": None},
    {"dataframe_split": {"columns": ["age", "city"], "data": [[1, "Oslo"]]}},
    {"inputs": [{"age": 1, "city": "Oslo"}]},
    [{"age": 1, "city": "Oslo"}],
], ids=["a row lacks a column", "a key that matches once stripped", "a row that is not an object",
        "records not a list", "params beside", "params beside the gateway's body", "both keys", "no row",
        "null rows", "split", "inputs", "a list"])
def test_any_other_body_is_left_to_the_generic_reading_which_answers_as_without_a_reader(payload):
    reader = RecordsReader(["age", "city"])
    body = orjson.dumps(payload)
    assert reader.read(body) is None
    assert outcome(body, reader) == outcome(body, None)


# Column names are data (issue 33): any name a CSV header holds, NUL aside (training refuses it).
NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=200)
TRICKY_NAME = st.text(st.sampled_from(list("/.()\"':#\\` \t\n,é城") + ["\u2028", "\x01", "\x1f"]), min_size=1,
                      max_size=10)
JSON_CELL = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.one_of(NAME, TRICKY_NAME), min_size=1, max_size=5, unique=True),
       cells=st.lists(st.lists(JSON_CELL, min_size=5, max_size=5), min_size=1, max_size=4),
       key=st.sampled_from(["records", "dataframe_records"]), ascii_only=st.booleans())
def test_a_records_body_reads_the_same_whatever_the_column_names_hold(names, cells, key, ascii_only):
    """A model whose columns hold ``"``, ``\\`` or control characters gets a reader all the same (symptom 3: the
    worker died building it), and every body reads as the generic reading reads it, keys escaped or not."""
    rows = [dict(zip(names, row)) for row in cells]
    payload = {key: rows}
    body = json.dumps(payload, ensure_ascii=True).encode() if ascii_only else orjson.dumps(payload)
    reader = RecordsReader(names)
    request = parse_request(body, "application/json", reader)
    assert request.as_records() == rows
    assert outcome(body, reader)[1] == outcome(body, None)[1] == rows


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "tab\there", "new\nline", "bell\x07"])
def test_a_name_msgspec_cannot_match_leaves_every_body_to_the_generic_reading(name):
    reader = RecordsReader(["age", name])
    assert not reader.fast
    body = orjson.dumps({"records": [{"age": 1, name: "x"}]})
    assert reader.read(body) is None
    assert parse_request(body, "application/json", reader).as_records() == [{"age": 1, name: "x"}]


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.one_of(NAME, TRICKY_NAME).map(str.strip).filter(bool), min_size=1, max_size=5,
                      unique=True),
       cells=st.lists(st.lists(st.text(max_size=6), min_size=5, max_size=5), min_size=1, max_size=4))
def test_a_csv_body_reads_any_header_as_the_csv_module_writes_it(names, cells):
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # its \r\n line ends: a lone \r or \n in a cell is quoted
    writer.writerow(names)
    writer.writerows([row[:len(names)] for row in cells])
    request = parse_request(buffer.getvalue().encode(), "text/csv")
    assert request.as_records() == [dict(zip(names, row)) for row in cells]


# --- the gateway's contract (contract/predict_body.py), checked as the body is read (issue 33, symptom 9) ----------

def contract_refusal(body: bytes, content_type: str, max_rows: int) -> tuple[int, dict]:
    with pytest.raises(ProtocolError) as refused:
        parse_request(body, content_type, RecordsReader(["age", "city"]), max_rows)
    return refused.value.status, orjson.loads(refused.value.body())


def parquet_of(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(rows, columns=["age", "city"]).to_parquet(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("payload", [
    {"dataframe_records": ROWS, "params": {"explain": True}},
    {"records": ROWS, "params": {"explain": True}},
    {"params": {"explain": True}, "inputs": ROWS},
])
def test_under_the_gateways_contract_params_are_refused_naming_them_and_without_it_read_as_mlflow_does(payload):
    status, answer = contract_refusal(orjson.dumps(payload), "application/json", 10)
    assert status == 422 and answer["error_code"] == "GATEWAY_CONTRACT" and answer["type"] == "extra_forbidden"
    assert "'params'" in answer["message"] and answer["loc"][0] == "body"
    if "records" not in payload:  # a caller of `mlflow models serve`'s protocol, without the header
        assert parse_request(orjson.dumps(payload), "application/json").params == {"explain": True}


@pytest.mark.parametrize("payload", [{"dataframe_records": ROWS}, {"instances": ROWS},
                                     {"dataframe_split": {"columns": ["age", "city"], "data": [["39", "Oslo"]]}}])
def test_under_the_gateways_contract_mlflows_formats_are_refused_naming_the_field(payload):
    status, answer = contract_refusal(orjson.dumps(payload), "application/json", 10)
    assert (status, answer["loc"]) == (422, ["body", next(iter(payload))])


BODIES = {
    "records": lambda rows: (orjson.dumps({"records": rows}), "application/json"),
    "csv": lambda rows: (pd.DataFrame(rows, columns=["age", "city"]).to_csv(index=False).encode(), "text/csv"),
    "parquet": lambda rows: (parquet_of(rows), "application/vnd.apache.parquet"),
}


@settings(max_examples=60, deadline=None)
# no bare carriage return: pandas writes one unquoted, and then every CSV reader takes it for a line break
@given(kind=st.sampled_from(sorted(BODIES)), count=st.integers(0, 6), max_rows=st.integers(1, 5),
       cell=st.text(st.characters(exclude_characters="\r"), max_size=8))
def test_under_the_gateways_contract_more_rows_than_the_limit_is_a_413_in_every_format(kind, count, max_rows, cell):
    rows = [{"age": str(i), "city": cell} for i in range(count)]
    body, content_type = BODIES[kind](rows)
    if count > max_rows:
        status, answer = contract_refusal(body, content_type, max_rows)
        assert status == 413 and answer["error_code"] == "GATEWAY_CONTRACT"
        assert answer["message"] == f"records: {count} rows, at most {max_rows} per request (GATEWAY_MAX_PREDICT_ROWS)"
    elif count == 0 and kind != "parquet":
        assert contract_refusal(body, content_type, max_rows)[0] == 422
    else:
        assert parse_request(body, content_type, RecordsReader(["age", "city"]), max_rows).rows == count
    # without the contract, any number of rows is read as MLflow reads it
    assert parse_request(body, content_type, None).rows == count


def test_the_contracts_header_must_be_a_positive_number_of_rows():
    assert contract_rows(None) is None and contract_rows("250") == 250
    with pytest.raises(ProtocolError) as refused:
        contract_rows("lots")
    assert refused.value.status == 400 and "X-Gateway-Max-Rows" in refused.value.message
