"""How a worker scores a request with the model it loaded (model_server.worker): a JSON records body goes
straight into the columns of a model that names them, through its table path; every other body as before.
Real MLflow models saved in a temporary folder, with small python models standing in for the project's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import orjson
import pandas as pd
import pytest

from model_server.worker import LoadedModel, Worker


class TableModel(mlflow.pyfunc.PythonModel):
    """Answers with what it was given: which path, and the cells."""

    input_columns = ["age", "home town"]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        return [{"path": "predict", "params": params, "columns": sorted(model_input.columns)}]

    def predict_records(self, records: list[dict]) -> list[dict]:
        return [{"path": "records", "rows": records}]

    def predict_table(self, names: list[str], columns: list) -> list[dict]:
        return [{"path": "table", "names": names, "cells": [list(c) for c in columns]}]


class UnnamedColumnsModel(TableModel):
    """A version logged before models named their columns: no reader, its records path."""

    input_columns = None


def loaded(tmp_path: Path, model: mlflow.pyfunc.PythonModel) -> LoadedModel:
    path = tmp_path / type(model).__name__
    mlflow.pyfunc.save_model(str(path), python_model=model, pip_requirements=[])
    return LoadedModel(str(path))


def answer(model: LoadedModel, payload: Any) -> tuple[int, Any]:
    status, _, body = asyncio.run(Worker(model).answer({"op": "invocations", "content_type": "application/json"},
                                                       orjson.dumps(payload)))
    return status, orjson.loads(body)


ROWS = [{"note": [1], "home town": "Oslo", "age": "39"}, {"age": 52, "home town": None, "note": "x"}]


@pytest.mark.parametrize("key", ["records", "dataframe_records"])
def test_a_records_body_goes_to_the_table_path_as_the_models_columns(tmp_path, key):
    assert answer(loaded(tmp_path, TableModel()), {key: ROWS}) == (200, {"predictions": [
        {"path": "table", "names": ["age", "home town"], "cells": [["39", 52], ["Oslo", None]]}]})


def test_rows_the_reader_leaves_and_a_model_without_named_columns_take_the_records_path(tmp_path):
    lacking = [{"age": "39"}]
    assert answer(loaded(tmp_path, TableModel()), {"records": lacking})[1]["predictions"] == [
        {"path": "records", "rows": lacking}]
    assert answer(loaded(tmp_path, UnnamedColumnsModel()), {"records": ROWS})[1]["predictions"] == [
        {"path": "records", "rows": ROWS}]


def test_params_still_go_to_predict(tmp_path):
    status, body = answer(loaded(tmp_path, TableModel()), {"dataframe_records": ROWS, "params": {"explain": True}})
    assert status == 200 and body["predictions"][0]["path"] == "predict"


# --- the gateway's contract (contract/predict_body.py): refused before any scoring (issue 33, symptom 9) -----------

class ScoringIsAFailure(TableModel):
    """Any scoring raises: a refusal that comes back as the contract's, not the model's error, was not scored."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        raise AssertionError("scored")

    def predict_records(self, records: list[dict]) -> list[dict]:
        raise AssertionError("scored")

    def predict_table(self, names: list[str], columns: list) -> list[dict]:
        raise AssertionError("scored")


def under_contract(model: LoadedModel, body: bytes, content_type: str, max_rows: int | None) -> tuple[int, Any]:
    header = {"op": "invocations", "content_type": content_type, "max_rows": max_rows}
    status, _, answer = asyncio.run(Worker(model).answer(header, body))
    return status, orjson.loads(answer)


def test_a_body_with_params_under_the_contract_is_refused_naming_them_before_scoring(tmp_path):
    model = loaded(tmp_path, ScoringIsAFailure())
    body = orjson.dumps({"dataframe_records": ROWS, "params": {"explain": True}})
    status, answer = under_contract(model, body, "application/json", 10_000)
    assert status == 422 and answer["error_code"] == "GATEWAY_CONTRACT", answer
    assert "'params'" in answer["message"]
    # the same body without the contract (a caller of MLflow's protocol) is scored, as before
    assert under_contract(model, body, "application/json", None)[1]["message"].endswith("scored)")


@pytest.mark.parametrize("content_type", ["application/json", "text/csv"])
def test_more_rows_than_the_contract_allows_is_a_413_naming_the_limit_before_scoring(tmp_path, content_type):
    model = loaded(tmp_path, ScoringIsAFailure())
    rows = [{"age": str(i), "home town": "Oslo"} for i in range(3)]
    body = (orjson.dumps({"records": rows}) if content_type == "application/json"
            else pd.DataFrame(rows).to_csv(index=False).encode())
    status, answer = under_contract(model, body, content_type, 2)
    assert (status, answer["error_code"]) == (413, "GATEWAY_CONTRACT"), answer
    assert "at most 2 per request (GATEWAY_MAX_PREDICT_ROWS)" in answer["message"]
    assert under_contract(loaded(tmp_path / "ok", TableModel()), body, content_type, 3)[0] == 200  # at the limit
