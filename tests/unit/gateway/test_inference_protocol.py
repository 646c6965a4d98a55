"""The Open Inference Protocol codec (gateway.inference_protocol): tensors to rows and back."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from gateway.inference_protocol import InferRequest, ProtocolError, infer_response, metadata, parse_infer_request


def tensor(name: str, data: list, datatype: str = "BYTES", shape: list | None = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def test_one_tensor_per_column_becomes_one_row_per_element():
    body = orjson.dumps({"id": "7", "inputs": [tensor("age", ["39", "?"]), tensor("hours", [40.5, 12], "FP64"),
                                                tensor("city", [["Oslo"], ["Lima"]], shape=[2, 1])]})
    request = parse_infer_request(body, None)
    assert request.records == [{"age": "39", "hours": 40.5, "city": "Oslo"}, {"age": "?", "hours": 12, "city": "Lima"}]
    assert request.id == "7" and request.outputs is None


def bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_binary_tensor_data_as_tritonclient_sends_it():
    text, numbers = bytes_tensor(["39", "Bachelors degree", ""]), np.array([1.5, 2.0, 3.25]).astype("<f8").tobytes()
    header = orjson.dumps({"inputs": [
        {"name": "education", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(text)}},
        {"name": "hours", "datatype": "FP64", "shape": [3], "parameters": {"binary_data_size": len(numbers)}}],
        "outputs": [{"name": "label"}]})
    request = parse_infer_request(header + text + numbers, str(len(header)))
    assert request.records == [{"education": "39", "hours": 1.5}, {"education": "Bachelors degree", "hours": 2.0},
                               {"education": "", "hours": 3.25}]
    assert request.outputs == ["label"]


ODD_HEADER = orjson.dumps({"inputs": [{"name": "a", "datatype": "FP64", "shape": [2],
                                       "parameters": {"binary_data_size": 12}}]})


@pytest.mark.parametrize(("body", "header", "words"), [
    (b"{not json", None, "not valid JSON"),
    (orjson.dumps({"inputs": []}), None, "non-empty 'inputs'"),
    (orjson.dumps({"inputs": [tensor("a", ["1"], "STRING")]}), None, "datatype 'STRING'"),
    (orjson.dumps({"inputs": [tensor("a", ["1", "2"], shape=[3])]}), None, "shape says 3 rows"),
    (orjson.dumps({"inputs": [tensor("a", ["1"], shape=[1, 2])]}), None, "shape must be"),
    (orjson.dumps({"inputs": [tensor("a", ["1", "2"]), tensor("b", ["1"])]}), None, "lengths differ"),
    (orjson.dumps({"inputs": [tensor("a", ["1"]), tensor("a", ["2"])]}), None, "given twice"),
    (orjson.dumps({"inputs": [tensor("a", [[1, 2]], shape=[1])]}), None, "one value per row"),
    (ODD_HEADER + b"x" * 12, str(len(ODD_HEADER)), "whole number"),
    (b"{}", "999", "does not fit"),
])
def test_refusals_name_what_is_wrong(body, header, words):
    with pytest.raises(ProtocolError, match=words):
        parse_infer_request(body, header)


OUTPUTS = [("label", "string"), ("probability", "double"), ("proba_no", "double"), ("proba_yes", "double")]
PREDICTIONS = [{"label": "yes", "probability": 0.75, "proba_no": 0.25, "proba_yes": 0.75},
               {"label": "no", "probability": 0.5, "proba_no": 0.5, "proba_yes": 0.5}]


def test_the_response_has_one_tensor_per_output_in_the_models_order():
    body = orjson.loads(infer_response("m", "3", InferRequest([{}, {}], "42", None), PREDICTIONS, OUTPUTS))
    assert body["model_name"] == "m" and body["model_version"] == "3" and body["id"] == "42"
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]] == [
        ("label", "BYTES", [2]), ("probability", "FP64", [2]), ("proba_no", "FP64", [2]), ("proba_yes", "FP64", [2])]
    assert body["outputs"][0]["data"] == ["yes", "no"] and body["outputs"][3]["data"] == [0.75, 0.5]


def test_asked_outputs_only_and_unknown_ones_refused():
    body = orjson.loads(infer_response("m", "3", InferRequest([{}], None, ["proba_yes"]), PREDICTIONS[:1], OUTPUTS))
    assert [t["name"] for t in body["outputs"]] == ["proba_yes"] and "id" not in body
    with pytest.raises(ProtocolError, match="unknown output.*'score'"):
        infer_response("m", "3", InferRequest([{}], None, ["score"]), PREDICTIONS[:1], OUTPUTS)


def test_integer_labels_are_int64_tensors_and_metadata_lists_columns_as_bytes():
    body = orjson.loads(infer_response("m", "1", InferRequest([{}], None, ["label"]), [{"label": 3}],
                                       [("label", "long")]))
    assert body["outputs"][0]["datatype"] == "INT64"
    described = metadata("m", ["2", "1"], [("age", "number"), ("city", "category")], OUTPUTS)
    assert described["inputs"] == [{"name": "age", "datatype": "BYTES", "shape": [-1]},
                                   {"name": "city", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in described["outputs"]] == [name for name, _ in OUTPUTS]
