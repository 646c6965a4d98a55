"""The gateway end to end, against real processes: train, promote, predict, switch, fail well.

The tests of this module share one stack and run in file order: the first
trains version 1, later ones build on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from playwright.sync_api import Route, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from contract.inference_log import logged_rows, open_log
from gateway.jobs import JobStore
from gateway.routes.predict import PASS_ON_BYTES
from runtime.processes import children, pid_alive
from stack.local import LocalStack
from tests.conftest import census_rows
from tests.integration.conftest import stack_settings
from tests.integration.helpers import answers, finished_job, served_version, start_training, wait_for

pytestmark = pytest.mark.integration

MODEL = "gw-test"
RAW = census_rows(1600).tail(40).drop(columns=["income"])
RAW.loc[RAW.index[0], "education"] = "Unheard-of degree"
RAW.loc[RAW.index[1], "age"] = " 41 "
RECORDS = RAW.to_dict(orient="records")


def train(api: httpx.Client, auth: dict, **params: Any) -> dict:
    body = {"data_path": "census-small.csv", "target": "income", "model_name": MODEL, "n_estimators": 15, **params}
    return {"job_id": start_training(api, auth, **body)}


def test_nothing_promoted_yet_means_503_with_the_reason(api):
    ready = api.get("/ready")
    assert ready.status_code == 503
    assert "no version of 'gw-test' holds alias 'champion'" in ready.json()["reason"]
    started = time.monotonic()
    answer = api.post("/predict", json={"records": RECORDS[:1]})
    assert answer.status_code == 503
    assert "no version of 'gw-test'" in answer.json()["detail"]
    assert time.monotonic() - started < 5
    assert api.get("/health").json() == {"status": "ok"}


@pytest.mark.any_server_mode
def test_training_needs_the_token(api, auth):
    body = {"data_path": "census-small.csv", "target": "income"}
    assert api.post("/train", json=body).status_code == 401
    assert api.post("/train", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/train").status_code == 200  # reads stay open


def test_train_job_runs_mlflow_run_and_registers_version_1(api, auth, stack):
    accepted = train(api, auth)
    job = finished_job(api, accepted["job_id"])
    assert job["status"] == "succeeded", job
    assert job["model_version"] == "1"
    assert {"accuracy", "f1", "roc_auc"} <= set(job["metrics"])
    assert job["parameters"]["data_path"].endswith("census-small.csv")
    # a real MLflow Project run: the job's run is the driver, with nested steps
    client = mlflow.MlflowClient(stack.tracking_uri)
    driver = client.get_run(job["run_id"])
    children = client.search_runs([driver.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{driver.info.run_id}'")
    assert sorted(c.data.tags["mlflow.project.entryPoint"] for c in children) == ["preprocess", "train"]
    assert driver.data.tags["model_version"] == "1"
    assert [j["job_id"] for j in api.get("/train").json()] == [accepted["job_id"]]

    model = api.get(f"/models/{MODEL}").json()
    (version,) = model["versions"]
    assert version["version"] == "1" and version["stage"] == "None" and version["aliases"] == []
    assert version["run_id"] == driver.data.tags["train_run_id"]
    assert version["metrics"]["f1"] == job["metrics"]["f1"]
    assert version["created_at"].startswith("20")
    assert [m["name"] for m in api.get("/models").json()] == [MODEL]


def test_production_transition_reaches_serving_and_predicts_raw_rows_in_order(api, auth, stack):
    answer = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Production"}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stage"] == "Production" and answer.json()["aliases"] == ["champion"]
    wait_for(lambda: served_version(api) == "1", 120, "version 1 served")

    answer = api.post("/predict", json={"records": RECORDS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": MODEL, "version": "1"}
    assert len(body["predictions"]) == len(RECORDS)
    client = mlflow.MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri)
    local = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(MODEL, "1"),
                                                tracking_uri=stack.tracking_uri)
    expected = mlflow.pyfunc.load_model(local).predict(RAW)
    got = np.array([p["probabilities"]["50000+."] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected["proba_50000+."].to_numpy())  # same rows, same order
    assert [p["label"] for p in body["predictions"]] == expected["label"].tolist()
    for p in body["predictions"]:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["probability"] == p["probabilities"][p["label"]]  # the label's (its threshold picks it)


def test_a_confidence_adds_the_versions_own_prediction_sets_in_json_csv_and_v2(api, stack):
    client = mlflow.MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri)
    local = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(MODEL, "1"),
                                                tracking_uri=stack.tracking_uri)
    expected = mlflow.pyfunc.load_model(local).predict(RAW, params={"confidence": 0.9, "set_coverage": "per_class"})
    as_json = api.post("/predict?confidence=0.9&set_coverage=per_class", json={"records": RECORDS})
    assert as_json.status_code == 200, as_json.text
    rows = as_json.json()["predictions"]
    assert [p["prediction_set"] for p in rows] == expected["prediction_set"].tolist()
    assert {p["confidence"] for p in rows} == {0.9}
    as_csv = api.post(f"/models/{MODEL}/predict?confidence=0.9&set_coverage=per_class",
                      content=RAW.to_csv(index=False), headers={"content-type": "text/csv"})
    assert [p["prediction_set"] for p in as_csv.json()["predictions"]] == expected["prediction_set"].tolist()
    tensors = [{"name": c, "datatype": "BYTES", "shape": [len(RAW)], "data": RAW[c].astype(str).tolist()}
               for c in RAW.columns]
    v2 = api.post(f"/v2/models/{MODEL}/infer", json={
        "inputs": tensors, "parameters": {"confidence": 0.9, "set_coverage": "per_class"}})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert [json.loads(s) for s in outputs["prediction_set"]["data"]] == expected["prediction_set"].tolist()
    assert outputs["prediction_set"]["datatype"] == "BYTES" and outputs["confidence"]["data"][0] == 0.9
    assert "prediction_set" not in api.post("/predict", json={"records": RECORDS}).json()["predictions"][0]
    for query, named in (("confidence=1", "confidence"), ("confidence=0.9&set_coverage=rows", "set_coverage")):
        refused = api.post(f"/predict?{query}", json={"records": RECORDS})
        assert refused.status_code == 422 and named in refused.text, refused.text
    refused = api.post(f"/v2/models/{MODEL}/infer", json={"inputs": tensors, "parameters": {"confidence": 2}})
    assert refused.status_code == 422 and "confidence" in refused.json()["error"], refused.text


def test_promoting_version_2_switches_serving_without_failed_requests(api, auth):
    job = finished_job(api, train(api, auth, n_estimators=10, max_depth=6)["job_id"])
    assert job["status"] == "succeeded" and job["model_version"] == "2", job

    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            while not stop.is_set():
                answer = client.post("/predict", json={"records": RECORDS[:3]})
                version = answer.json()["model"]["version"] if answer.status_code == 200 else None
                outcomes.append((answer.status_code, version))

    worker = threading.Thread(target=keep_predicting)
    worker.start()
    try:
        wait_for(lambda: len(outcomes) >= 5, 30, "client warmed up")
        promoted_at = time.monotonic()
        answer = api.put(f"/models/{MODEL}/aliases/champion", json={"version": 2}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert "champion" in answer.json()["aliases"] and answer.json()["stage"] == "Production"
        # mlflow mode starts a new `mlflow models serve` before the swap: slow on a loaded machine
        wait_for(lambda: any(v == "2" for _, v in outcomes[-3:]), 90, "predictions from version 2")
        print(f"version 2 answered {time.monotonic() - promoted_at:.1f}s after the promotion")
        count_at_switch = len(outcomes)
        wait_for(lambda: len(outcomes) >= count_at_switch + 5, 30, "requests after the switch")
    finally:
        stop.set()
        worker.join()
    assert all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    versions = [v for _, v in outcomes]
    first_two = versions.index("2")
    assert set(versions[:first_two]) == {"1"} and set(versions[first_two:]) == {"2"}
    assert served_version(api) == "2"
    assert production_and_serving_alias(api) == (["2"], "2")  # the alias move took Production with it
    assert api.get(f"/models/{MODEL}/versions/1").json()["stage"] == "Archived"


def production_and_serving_alias(api: httpx.Client) -> tuple[list[str], str | None]:
    model = api.get(f"/models/{MODEL}").json()
    return [v["version"] for v in model["versions"] if v["stage"] == "Production"], model["aliases"].get("champion")


def json_body(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def row(**changes: Any) -> dict[str, Any]:
    return {"json": {"records": [{**RECORDS[0], **changes}]}}


def training(**changes: Any) -> dict[str, Any]:
    return {"json": {"data_path": "census-small.csv", "target": "income", **changes}}


# One row a case: (method, path, request, status, words the answer must contain).
# Extra columns are ignored everywhere (as MLflow's scoring server does): see ODD_BUT_VALID.
BAD_REQUESTS = [
    # /predict: the body
    ("post", "/predict", json_body("{not json"), 422, "json"),
    ("post", "/predict", json_body("[1, 2]"), 422, "object"),
    ("post", "/predict", json_body('{"records": [{"age": NaN}]}'), 422, "json"),
    ("post", "/predict", json_body('{"records": [{"age": Infinity}]}'), 422, "json"),
    ("post", "/predict", json_body('{"records": [{"age": 1e400}]}'), 422, "infinity"),
    ("post", "/predict", json_body('{"records": [{"age": ' + "[" * 2000 + "]" * 2000 + "}]}"), 422, "depth"),
    ("post", "/predict", {"json": {"records": []}}, 422, "records"),
    ("post", "/predict", {"json": {"records": {"age": 1}}}, 422, "records"),
    ("post", "/predict", {"json": {"records": ["age"]}}, 422, "records[0]"),
    ("post", "/predict", {"json": {"rows": RECORDS[:1]}}, 422, "records"),
    ("post", "/predict", {"json": {"records": RECORDS[:1], "model": "x"}}, 422, "'model'"),
    ("post", "/predict", {"content": b'{"records": [{"age": 1}]}', "headers": {"content-type": "text/plain"}},
     415, "content-type"),
    ("post", "/predict", {"json": {"records": RECORDS[:1] * 10_001}}, 413, "records"),
    # the same refusals for a body big enough to go to the model server unread (above PASS_ON_BYTES)
    ("post", "/predict", {"json": {"records": RECORDS * 2 + ["age"]}}, 422, "records[80]"),
    ("post", "/predict", {"json": {"records": RECORDS * 2, "model": "x"}}, 422, "'model'"),
    ("post", "/predict", {"json": {"records": RECORDS * 2 + [dict(RECORDS[0], age=[1, 2])]}}, 422, "'age'"),
    ("post", "/predict", {"content": pd.DataFrame(RECORDS * 2).to_csv(index=False).encode() + b"1,2\n",
                          "headers": {"content-type": "text/csv"}}, 422, "line 82"),
    # /predict: the cells
    ("post", "/predict", row(age=[1, 2]), 422, "age"),
    ("post", "/predict", row(age={"a": {"b": {"c": [1]}}}), 422, "age"),
    ("post", "/predict", {"json": {"records": [{k: v for k, v in RECORDS[0].items() if k != "sex"}]}}, 422, "'sex'"),
    ("post", "/predict", row(age="forty"), 422, "'age'"),
    ("post", "/predict", row(age=1e300), 422, "'age'"),
    ("post", "/predict", row(age=True), 422, "'age'"),
    ("post", "/predict", row(age="4\x002"), 422, "'age'"),
    # /train: the body and the hyperparameters
    ("post", "/train", json_body("{not json"), 422, "json"),
    ("post", "/train", {"json": ["census-small.csv", "income"]}, 422, "body"),
    ("post", "/train", {"content": b"data_path=x", "headers": {"content-type": "text/plain"}}, 422, "body"),
    ("post", "/train", {"json": {"target": "income"}}, 422, "data_path"),
    ("post", "/train", training(n_trees=5), 422, "unknown parameter 'n_trees' (did you mean 'n_estimators'?)"),
    ("post", "/train", training(n_estimators=0), 422, "n_estimators"),
    ("post", "/train", training(n_estimators="many"), 422, "n_estimators"),
    ("post", "/train", training(test_size=1.5), 422, "test_size"),
    ("post", "/train", training(max_depth=-1), 422, "max_depth"),
    ("post", "/train", training(random_state=-1), 422, "random_state"),
    ("post", "/train", training(n_jobs=999), 422, "n_jobs"),
    ("post", "/train", training(max_features="cube"), 422, "max_features"),
    ("post", "/train", training(class_weight="heavy"), 422, "class_weight"),
    ("post", "/train", training(max_trials=5), 422, 'max_trials: parameters of mode \\"tune\\"; add \\"mode\\"'),
    ("post", "/train", training(mode="tune", n_estimators=5), 422, "n_estimators"),
    ("post", "/train", training(mode="search"), 422, "mode"),
    ("post", "/train", training(promote="always"), 422, "promote"),
    ("post", "/train", training(mode="tune", cv_folds=1), 422, "cv_folds"),
    # /train: paths, names and shell metacharacters (nothing is run, nothing is read outside the roots)
    ("post", "/train", training(data_path="../../../etc/passwd"), 422, "data_path"),
    ("post", "/train", training(data_path="/etc/passwd"), 422, "outside the data roots (GATEWAY_DATA_ROOTS: "),
    ("post", "/train", training(data_path="census-smal.csv"), 422, "did you mean 'census-small.csv'?"),
    ("post", "/train", training(data_path="file:///etc/passwd"), 422, "data_path"),
    ("post", "/train", training(data_path="census-small.csv; rm -rf /"), 422, "data_path"),
    ("post", "/train", training(data_path="$(touch /tmp/owned).csv"), 422, "data_path"),
    ("post", "/train", training(data_path="census-small.csv\x00.txt"), 422, "data_path"),
    ("post", "/train", training(target="income; rm -rf /"), 422, "is not a column"),
    ("post", "/train", training(target="`reboot`"), 422, "target"),
    ("post", "/train", training(target="inc\u202eome\x07"), 422, "target"),
    ("post", "/train", training(model_name="a b;rm"), 422, "model_name"),
    ("post", "/train", training(model_name="../../etc"), 422, "model_name"),
    ("get", "/train/does-not-exist", {}, 404, "does-not-exist"),
    ("delete", "/train/does-not-exist", {}, 404, "does-not-exist"),
    # the registry
    ("get", "/models/no-such-model", {}, 404, "no-such-model"),
    ("get", "/models/..%2F..%2Fetc", {}, 404, "no route"),
    ("get", "/models/x%00y", {}, 422, "name"),
    ("get", f"/models/{MODEL}/versions/99", {}, 404, "99"),
    ("get", f"/models/{MODEL}/versions/0", {}, 422, "version"),
    ("post", "/models/no-such-model/versions/1/stage", {"json": {"stage": "Staging"}}, 404, "no-such-model"),
    ("post", f"/models/{MODEL}/versions/99/stage", {"json": {"stage": "Staging"}}, 404, "99"),
    ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "Prod"}}, 422, "stage"),
    ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "production"}}, 422, "stage"),
    ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "Staging", "force": True}}, 422, "force"),
    ("post", f"/models/{MODEL}/versions/2/stage", {"json": {"stage": "Production"}}, 409, "already in stage Production"),
    ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "Production"}}, 409, "Staging before Production"),
    ("put", f"/models/{MODEL}/aliases/latest", {"json": {"version": "1"}}, 422, "reserved"),
    ("put", f"/models/{MODEL}/aliases/v2", {"json": {"version": "1"}}, 422, "reserved"),
    ("put", f"/models/{MODEL}/aliases/champion", {"json": {"version": "99"}}, 404, "99"),
    ("put", f"/models/{MODEL}/aliases/champion", {"json": {"version": "two"}}, 422, "version"),
    ("delete", f"/models/{MODEL}/aliases/nobody", {}, 404, "nobody"),
    ("patch", "/predict", {}, 405, "POST"),
]


# only /predict's answers depend on the model server's mode
BAD_REQUESTS = [case if case[1] == "/predict" else pytest.param(*case, marks=pytest.mark.any_server_mode)
                for case in BAD_REQUESTS]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (a job's ``mlflow run`` is one)."""
    found, todo = set(), [pid]
    while todo:
        kids = children(todo.pop())
        found |= set(kids)
        todo += kids
    return found


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "names"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_naming_the_problem(api, auth, stack, method, path, kwargs, status, names):
    before = api.get(f"/models/{MODEL}").json()
    jobs_before = len(api.get("/train").json())
    processes_before = descendants(stack.running_pid("gateway"))
    kwargs = dict(kwargs)  # the parameters are shared by both model-server modes: do not consume them
    answer = api.request(method.upper(), path, headers={**auth, **kwargs.pop("headers", {})}, **kwargs)
    assert answer.status_code == status, answer.text
    assert names.lower() in answer.text.lower()
    assert api.get(f"/models/{MODEL}").json() == before  # nothing changed in the registry
    assert len(api.get("/train").json()) == jobs_before  # no job was started
    assert descendants(stack.running_pid("gateway")) <= processes_before  # and no process


# Raw input as it comes: all of it answered, one prediction a row.
ODD_BUT_VALID = {
    "question mark for missing": row(age="?", education="?"),
    "empty strings": row(age="", education=""),
    "null cells": row(age=None, education=None),
    "NaN as text (missing, as in pandas)": row(age="NaN"),
    "numbers as text with spaces": row(age=" 41 ", wage_per_hour="0"),
    "unicode and control characters in a category": row(education="Bachelors\u202e\x07\u2603\U0001F600"),
    "an extra column (ignored)": row(not_a_column="anything"),
    "10,000 rows in one request": {"json": {"records": RECORDS * 250}},
}


@pytest.mark.parametrize("kwargs", ODD_BUT_VALID.values(), ids=ODD_BUT_VALID.keys())
def test_odd_but_valid_input_is_answered(api, kwargs):
    answer = api.post("/predict", **kwargs)
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["predictions"]) == len(kwargs["json"]["records"])


def test_a_big_body_goes_to_the_model_server_unread_and_is_answered_and_logged_as_small_ones(api, stack):
    rows = RECORDS * 2
    assert len(orjson.dumps({"records": rows})) > PASS_ON_BYTES > len(orjson.dumps({"records": rows[:1]}))
    alone = [api.post("/predict", json={"records": [r]}).json()["predictions"][0] for r in RECORDS]  # read here
    together = api.post("/predict", json={"records": rows})
    as_csv = api.post("/predict", content=pd.DataFrame(rows).to_csv(index=False),
                      headers={"content-type": "text/csv"})
    for answer in (together, as_csv):
        assert answer.status_code == 200, answer.text[:500]
        assert answers(answer.json()["predictions"]) == answers(alone * 2)
    ids = {p["id"] for p in together.json()["predictions"]} | {p["id"] for p in as_csv.json()["predictions"]}
    log = open_log(f"sqlite:///{stack.settings.stack_dir / 'inference.db'}")
    logged = wait_for(lambda: len(found := [r for r in logged_rows(log, MODEL) if r.id in ids]) == 160 and found,
                      30, "both big requests in the inference log")
    by_id = {r.id: r for r in logged}
    for answer in (together, as_csv):  # the rows as sent, and what the answer said of each
        predictions = answer.json()["predictions"]
        assert [by_id[p["id"]].inputs for p in predictions] == rows
        assert [by_id[p["id"]].label for p in predictions] == [p["label"] for p in predictions]


def scored(api: httpx.Client) -> dict[str, float]:
    """What the model server answered with predictions for MODEL, from the gateway's counters: rows and calls."""
    counted = {"gateway_model_rows_total": 0.0, "gateway_model_requests_total": 0.0}
    for (name, labels), value in metric_samples(api).items():
        labels = dict(labels)
        if name in counted and labels.get("model") == MODEL and labels.get("status", "200") == "200":
            counted[name] += value
    return counted


def test_a_big_body_with_params_is_refused_naming_them_before_anything_is_explained(api):
    """Issue 33, symptom 9: a body above PASS_ON_BYTES went to the model server unread, which took MLflow's
    ``params`` and explained every row, then the gateway dropped the explanations and answered 200."""
    with_params = {"dataframe_records": RECORDS * 2, "params": {"explain": True}}
    assert len(orjson.dumps(with_params)) > PASS_ON_BYTES
    before = scored(api)
    for path in ("/predict", f"/models/{MODEL}/predict"):
        refused = api.post(path, json=with_params)
        assert refused.status_code == 422, refused.text[:500]
        assert "'params'" in refused.json()["detail"] and refused.json()["errors"][0]["loc"][0] == "body"
    assert scored(api) == before  # the model server scored (explained) nothing of them


def test_a_big_body_with_more_rows_than_the_limit_is_refused_naming_it_before_anything_is_scored(api, stack):
    """Issue 33, symptom 9: the row limit was checked on the model server's answer, after every row was scored."""
    limit = stack.settings.max_predict_rows
    too_many = {"records": RECORDS[:1] * (limit + 1)}
    too_many_csv = pd.DataFrame(RECORDS[:1] * (limit + 1)).to_csv(index=False).encode()
    assert len(too_many_csv) > PASS_ON_BYTES
    before = scored(api)
    for path in ("/predict", f"/models/{MODEL}/predict"):
        for kwargs in ({"json": too_many}, {"content": too_many_csv, "headers": {"content-type": "text/csv"}}):
            refused = api.post(path, **kwargs)
            assert refused.status_code == 413, refused.text[:500]
            assert refused.json()["detail"] == (f"records: {limit + 1} rows, at most {limit} per request "
                                                "(GATEWAY_MAX_PREDICT_ROWS)")
    assert scored(api) == before  # the model server scored nothing of them
    assert api.post("/predict", json={"records": RECORDS * 2}).status_code == 200  # (the counters do count)
    assert scored(api)["gateway_model_rows_total"] == before["gateway_model_rows_total"] + len(RECORDS) * 2


def test_an_extra_column_changes_nothing(api):
    plain = api.post("/predict", json={"records": RECORDS[:5]}).json()["predictions"]
    extra = api.post("/predict", json={"records": [{**r, "zz": "1"} for r in RECORDS[:5]]}).json()["predictions"]
    assert answers(extra) == answers(plain)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_above_the_size_limit_is_413_whether_declared_or_streamed(api, stack, chunked):
    limit = stack.settings.max_body_bytes
    body = b'{"records": [' + b" " * limit + b"]}"
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    answer = api.post("/predict", content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert "GATEWAY_MAX_BODY_BYTES" in answer.json()["detail"]


@pytest.mark.any_server_mode
def test_registry_changes_need_the_token(api):
    assert api.post(f"/models/{MODEL}/versions/2/stage", json={"stage": "Staging"}).status_code == 401
    assert api.put(f"/models/{MODEL}/aliases/x", json={"version": "1"}).status_code == 401
    assert api.delete(f"/models/{MODEL}/aliases/champion").status_code == 401
    assert api.delete("/train/anything").status_code == 401


@pytest.mark.any_server_mode
def test_stages_and_aliases_stay_in_step_whichever_route_is_taken(api, auth):
    """Version 2 serves (alias and Production); version 1 was Archived when it was replaced."""
    staged = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Staging"}, headers=auth).json()
    assert staged["stage"] == "Staging" and staged["aliases"] == ["challenger"]
    # archive_existing means nothing for Archived: ignored (MLflow's server would answer 500)
    answer = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Archived", "archive_existing": True},
                      headers=auth)
    assert answer.json()["stage"] == "Archived" and answer.json()["aliases"] == []  # challenger left with Staging
    # an alias move is a stage move: the challenger alias brings the archived version back to Staging
    moved = api.put(f"/models/{MODEL}/aliases/challenger", json={"version": "1"}, headers=auth)
    assert moved.status_code == 200 and moved.json()["stage"] == "Staging", moved.text
    assert production_and_serving_alias(api) == (["2"], "2")  # serving untouched
    # deleting a paired alias takes its version out of the stage
    assert api.delete(f"/models/{MODEL}/aliases/challenger", headers=auth).status_code == 204
    model = api.get(f"/models/{MODEL}").json()
    assert model["aliases"] == {"champion": "2"}
    assert {v["version"]: v["stage"] for v in model["versions"]} == {"2": "Production", "1": "None"}
    assert production_and_serving_alias(api) == (["2"], "2")


@pytest.mark.any_server_mode
def test_jobs_queue_one_at_a_time_and_cancel(api, auth, stack):
    first = train(api, auth)["job_id"]
    second = train(api, auth)["job_id"]
    assert api.get(f"/train/{second}").json()["status"] == "queued"
    wait_for(lambda: api.get(f"/train/{first}").json()["status"] == "running", 60, "first job running")
    assert api.get(f"/train/{second}").json()["status"] == "queued"  # one at a time

    cancelled = api.delete(f"/train/{second}", headers=auth).json()
    assert cancelled["status"] == "cancelled"
    answer = api.delete(f"/train/{first}", headers=auth)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    wait_for(lambda: not pid_alive(running_pid(stack, first)), 30, "job process gone")
    assert api.delete(f"/train/{first}", headers=auth).status_code == 409  # already ended
    assert api.get(f"/train/{second}").json()["started_at"] is None


def running_pid(stack: LocalStack, job_id: str) -> int:
    return JobStore(stack.settings.jobs_db).get(job_id).pid


@pytest.mark.any_server_mode
def test_job_records_survive_a_gateway_restart(api, stack):
    before = {j["job_id"]: j["status"] for j in api.get("/train").json()}
    stack.stop("gateway")
    stack.start_gateway()
    after = {j["job_id"]: j["status"] for j in api.get("/train").json()}
    assert after == before and len(after) == 4


def predict_through(api: httpx.Client, kill: Callable[[], None], timeout: float) -> list[tuple[int, float, str]]:
    """Predict continuously from a second client while ``kill`` runs, until answers come back.

    Returns (status, seconds, detail) of every request from the kill on.
    """
    outcomes: list[tuple[int, float, str]] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                answer = client.post("/predict", json={"records": RECORDS[:3]})
                detail = answer.json().get("detail", "") if answer.status_code != 200 else ""
                outcomes.append((answer.status_code, time.monotonic() - started, str(detail)))

    worker = threading.Thread(target=keep_predicting)
    worker.start()
    try:
        wait_for(lambda: len(outcomes) >= 3, 30, "client warmed up")
        del outcomes[:]
        kill()
        wait_for(lambda: any(o[0] == 503 for o in outcomes), 30, "a 503 after the kill")
        reason = wait_for(lambda: api.get("/ready").json().get("reason"), 30, "/ready saying why")
        assert api.get("/ready").status_code in (200, 503)
        wait_for(lambda: outcomes[-1][0] == 200 and outcomes[-2][0] == 200, timeout, "answers again")
    finally:
        stop.set()
        worker.join()
    assert "model server" in reason.lower() or "version" in reason, reason
    return outcomes


def assert_quick_clear_outage(outcomes: list[tuple[int, float, str]], stack: LocalStack) -> None:
    assert {status for status, _, _ in outcomes} == {200, 503}, sorted({o[0] for o in outcomes})
    failures = [o for o in outcomes if o[0] == 503]
    # no request waited for the model server's whole timeout: each 503 came at once
    assert max(seconds for _, seconds, _ in failures) < min(5.0, stack.settings.model_server_timeout)
    assert all("model server" in detail or "version" in detail for _, _, detail in failures), failures[:3]


def test_killing_the_model_server_under_traffic_means_quick_503s_then_recovery(api, stack):
    """kill -9 of the model server process: its watchdog restarts it; the gateway is never restarted."""
    gateway = stack.service_pid("gateway")
    supervisor = stack.service_pid("model-server")
    outcomes = predict_through(api, lambda: os.kill(supervisor, signal.SIGKILL), timeout=120)
    assert_quick_clear_outage(outcomes, stack)
    assert stack.service_pid("model-server") not in (None, supervisor)  # a new process serves
    assert stack.service_pid("gateway") == gateway
    assert served_version(api) == "2"


def test_killing_the_backend_behind_the_model_server_is_survived_too(api, stack):
    # the version's own process: our worker (fast) or `mlflow models serve` (mlflow), leading its group
    backend, spare = serving_backend(stack)
    assert set(children(stack.service_pid("model-server"))) == {backend} | ({spare} if spare else set())
    outcomes = predict_through(api, lambda: os.killpg(backend, signal.SIGKILL), timeout=240)
    assert_quick_clear_outage(outcomes, stack)
    restarted, spare = wait_for(lambda: (found := serving_backend(stack))[0] not in (None, backend) and found, 60,
                                "the version served by a new process")
    assert pid_alive(restarted)
    # and the processes of a killed model server do not outlive it: the next one stops them
    supervisor = stack.service_pid("model-server")
    predict_through(api, lambda: os.kill(supervisor, signal.SIGKILL), timeout=240)
    wait_for(lambda: not pid_alive(restarted), 30, "orphaned scoring server stopped")
    wait_for(lambda: not spare or not pid_alive(spare), 30, "the orphaned spare worker stopped")


def serving_backend(stack: LocalStack) -> tuple[int | None, int | None]:
    """The process serving the default model (None while none does), and the spare worker the model server keeps
    warm (mode fast)."""
    status = httpx.get(f"{stack.settings.model_server}/status", timeout=10).json()
    pids = [m["pid"] for m in status["loaded"] if m["name"] == MODEL and m["version"] == status["version"]]
    return (pids[0] if pids else None), status.get("spare")


def test_every_response_carries_a_request_id_and_the_log_line_has_it(api, auth, stack):
    kept = api.post("/predict", json={"records": RECORDS[:1]}, headers={"X-Request-ID": "client-id-42"})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "client-id-42"
    for answer in (api.post("/predict", json={"records": []}), api.get("/nowhere"),
                   api.post("/train", json={}), api.get("/health"),
                   api.get("/health", headers={"X-Request-ID": "has spaces\tand tabs"})):
        assert len(answer.headers["x-request-id"]) == 32, answer.headers  # made up when absent or unsafe
    lines = wait_for(lambda: [json.loads(line) for line in stack.log_file("gateway").read_text().splitlines()
                              if "client-id-42" in line], 10, "the access-log line")
    (entry,) = lines
    assert entry["request_id"] == "client-id-42"
    assert entry["route"] == "/predict" and entry["status"] == 200 and entry["duration_ms"] > 0
    assert entry["logger"] == "gateway.access" and entry["level"] == "info"
    for line in stack.log_file("gateway").read_text().splitlines()[-50:]:
        if line.startswith("{"):  # every line the gateway writes (the watchdog's are not JSON)
            assert isinstance(json.loads(line), dict)


def test_metrics_count_requests_latency_errors_batches_jobs_and_the_served_version(api, stack):
    before = metric_samples(api)
    for _ in range(3):
        api.post("/predict", json={"records": RECORDS[:2]})
    api.post("/predict", json={"records": []})
    after = metric_samples(api)
    predict_ok = ("gateway_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    predict_bad = ("gateway_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "422")))
    assert after[predict_ok] - before.get(predict_ok, 0) == 3
    assert after[predict_bad] - before.get(predict_bad, 0) == 1
    bucket = ("gateway_request_duration_seconds_bucket",
              (("le", "+Inf"), ("method", "POST"), ("route", "/predict"), ("status", "200")))
    assert after[bucket] >= 3
    assert after[("gateway_batch_rows_count", ())] >= 3 and after[("gateway_batch_rows_sum", ())] >= 6
    assert after[("gateway_batch_requests_count", ())] >= 3
    version = served_version(api)
    assert after[("gateway_served_model_info", (("name", MODEL), ("version", version)))] == 1
    jobs = [j["status"] for j in api.get("/train").json()]
    for status in ("succeeded", "cancelled", "failed", "queued", "running"):
        assert after[("gateway_training_jobs", (("status", status),))] == jobs.count(status)
    # the previous test killed the model server under traffic: those calls are counted
    assert after[("gateway_model_server_errors_total", (("kind", "unreachable"),))] >= 1
    # the model server's own: the versions it holds, its follower loop, its spare worker (fast mode)
    scraped = httpx.get(f"{stack.settings.model_server}/metrics", timeout=30)
    assert scraped.status_code == 200, scraped.text
    mine = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    assert mine[("model_server_loaded_model_info", (("name", MODEL), ("version", version)))] == 1
    assert mine[("model_server_background_loop_up", (("loop", "registry-follower"),))] == 1
    assert ("model_server_spare_worker", ()) in mine


def metric_samples(api: httpx.Client) -> dict[tuple[str, tuple], float]:
    answer = api.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


@pytest.mark.any_server_mode
def test_openapi_lists_every_route_and_docs_render(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/predict", "/train", "/train/{job_id}", "/models", "/models/{name}",
        "/models/{name}/versions/{version}", "/models/{name}/versions/{version}/stage",
        "/models/{name}/aliases/{alias}", "/health", "/ready", "/metrics",
        "/models/{name}/predict", "/models/{name}/schema",
        "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/feedback", "/monitor", "/monitor/{job_id}",
        "/models/{name}/traffic", "/models/{name}/promote", "/models/{name}/rollback",
        "/explain", "/models/{name}/explain", "/models/{name}/versions/{version}/importance",
    }


@pytest.mark.any_server_mode
def test_the_api_pages_render_in_a_browser_with_no_internet(stack):
    """/docs and /redoc of the gateway and the model server, in headless Chromium, every request that leaves
    127.0.0.1 refused: the operations render (FastAPI's own pages would stay blank: their scripts are on a CDN)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (.ci/run installs it)"
    local, outside = ("http://127.0.0.1:", "http://localhost:"), []

    def offline(route: Route) -> None:
        if route.request.url.startswith(local):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page()
            page.route("**/*", offline)
            rendered = {}
            for base in (stack.settings.gateway_url, stack.settings.model_server):
                page.goto(f"{base}/docs")
                page.wait_for_selector(".opblock-summary-path", timeout=60_000)
                rendered[f"{base}/docs"] = set(page.locator(".opblock-summary-path").all_inner_texts())
                page.goto(f"{base}/redoc")
                page.wait_for_selector("[data-section-id^='operation/']", timeout=60_000)
                rendered[f"{base}/redoc"] = page.locator("[data-section-id^='operation/']").count()
        finally:
            browser.close()
    assert {"/predict", "/train", "/models/{name}/predict"} <= rendered[f"{stack.settings.gateway_url}/docs"]
    assert "/invocations" in rendered[f"{stack.settings.model_server}/docs"]
    assert rendered[f"{stack.settings.gateway_url}/redoc"] >= 20 and rendered[f"{stack.settings.model_server}/redoc"]
    # nothing the pages need comes from outside (ReDoc's footer asks for its maker's logo: an image, refused)
    assert not [url for kind, url in outside if kind in ("script", "stylesheet", "font", "fetch", "xhr")], outside


@pytest.mark.any_server_mode
def test_a_second_stack_with_its_own_dir_and_ports_is_independent(tmp_path, data_root, stack):
    other = LocalStack(stack_settings(tmp_path, data_root, model_name="other-model"))
    try:
        other.up_without_model()
        with httpx.Client(base_url=other.settings.gateway_url) as client:
            assert client.get("/health").json() == {"status": "ok"}
            assert client.get("/models").json() == []
            assert client.get("/ready").status_code == 503
        with httpx.Client(base_url=stack.settings.gateway_url) as client:
            assert [m["name"] for m in client.get("/models").json()] == [MODEL]
    finally:
        other.down()
    assert other.running_pid("gateway") is None and stack.running_pid("gateway") is not None
