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
