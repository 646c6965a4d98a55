"""The gateway end to end, against real processes: train, promote, predict, switch, fail well.

The tests of this module share one stack and run in file order: the first
trains version 1, later ones build on it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest

from gateway.jobs import JobStore
from gateway.processes import pid_alive
from gateway.stack import LocalStack
from tests.conftest import census_rows
from tests.integration.conftest import stack_settings
from tests.integration.helpers import finished_job, served_version, start_training, wait_for

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
        assert p["probability"] == max(p["probabilities"].values())


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
        assert "champion" in answer.json()["aliases"]
        wait_for(lambda: any(v == "2" for _, v in outcomes[-3:]), 15, "predictions from version 2")
        switch_seconds = time.monotonic() - promoted_at
        count_at_switch = len(outcomes)
        wait_for(lambda: len(outcomes) >= count_at_switch + 5, 30, "requests after the switch")
    finally:
        stop.set()
        worker.join()
    assert switch_seconds <= 15
    assert all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    versions = [v for _, v in outcomes]
    first_two = versions.index("2")
    assert set(versions[:first_two]) == {"1"} and set(versions[first_two:]) == {"2"}
    assert served_version(api) == "2"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "names"),
    [
        ("post", "/predict", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "json"),
        ("post", "/predict", {"json": {"records": []}}, 422, "records"),
        ("post", "/predict", {"json": {"records": {"age": 1}}}, 422, "records"),
        ("post", "/predict", {"json": {"records": ["age"]}}, 422, "records[0]"),
        ("post", "/predict", {"content": b'{"records": [{"age": 1}]}', "headers": {"content-type": "text/plain"}},
         415, "content-type"),
        ("post", "/predict", {"json": {"rows": RECORDS[:1]}}, 422, "records"),
        ("post", "/predict", {"json": {"records": [{"age": [1, 2]}]}}, 422, "age"),
        ("post", "/predict", {"json": {"records": [{k: v for k, v in RECORDS[0].items() if k != "sex"}]}}, 422, "'sex'"),
        ("post", "/predict", {"json": {"records": [{**RECORDS[0], "age": "forty"}]}}, 422, "'age'"),
        ("post", "/predict", {"json": {"records": RECORDS[:1] * 10_001}}, 413, "records"),
        ("post", "/train", {"json": {"data_path": "census-small.csv", "target": "income", "n_trees": 5}}, 422, "n_trees"),
        ("post", "/train", {"json": {"data_path": "census-small.csv", "target": "income", "n_estimators": 0}}, 422, "n_estimators"),
        ("post", "/train", {"json": {"data_path": "census-small.csv", "target": "income", "max_features": "cube"}}, 422, "max_features"),
        ("post", "/train", {"json": {"data_path": "../../../etc/passwd", "target": "income"}}, 422, "data_path"),
        ("post", "/train", {"json": {"data_path": "/etc/passwd", "target": "income"}}, 422, "data_path"),
        ("post", "/train", {"json": {"data_path": "file:///etc/passwd", "target": "income"}}, 422, "data_path"),
        ("post", "/train", {"json": {"data_path": "census-small.csv", "target": "income", "model_name": "a b;rm"}}, 422, "model_name"),
        ("get", "/train/does-not-exist", {}, 404, "does-not-exist"),
        ("delete", "/train/does-not-exist", {}, 404, "does-not-exist"),
        ("get", "/models/no-such-model", {}, 404, "no-such-model"),
        ("get", f"/models/{MODEL}/versions/99", {}, 404, "99"),
        ("post", f"/models/{MODEL}/versions/99/stage", {"json": {"stage": "Staging"}}, 404, "99"),
        ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "Prod"}}, 422, "stage"),
        ("post", f"/models/{MODEL}/versions/1/stage", {"json": {"stage": "Production"}}, 409, "already in stage Production"),
        ("put", f"/models/{MODEL}/aliases/latest", {"json": {"version": "1"}}, 422, "reserved"),
        ("put", f"/models/{MODEL}/aliases/champion", {"json": {"version": "99"}}, 404, "99"),
        ("put", f"/models/{MODEL}/aliases/champion", {"json": {"version": "two"}}, 422, "version"),
        ("delete", f"/models/{MODEL}/aliases/nobody", {}, 404, "nobody"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(api, auth, method, path, kwargs, status, names):
    before = api.get(f"/models/{MODEL}").json()
    jobs_before = len(api.get("/train").json())
    kwargs = dict(kwargs)  # the parameters are shared by both model-server modes: do not consume them
    answer = api.request(method.upper(), path, headers={**auth, **kwargs.pop("headers", {})}, **kwargs)
    assert answer.status_code == status, answer.text
    assert names.lower() in answer.text.lower()
    assert api.get(f"/models/{MODEL}").json() == before  # nothing changed in the registry
    assert len(api.get("/train").json()) == jobs_before  # no job was started


def test_registry_changes_need_the_token(api):
    assert api.post(f"/models/{MODEL}/versions/2/stage", json={"stage": "Staging"}).status_code == 401
    assert api.put(f"/models/{MODEL}/aliases/x", json={"version": "1"}).status_code == 401
    assert api.delete(f"/models/{MODEL}/aliases/champion").status_code == 401
    assert api.delete("/train/anything").status_code == 401


def test_archiving_moves_the_alias_and_archived_cannot_jump_to_production(api, auth):
    staged = api.post(f"/models/{MODEL}/versions/2/stage", json={"stage": "Staging"}, headers=auth).json()
    assert staged["stage"] == "Staging" and set(staged["aliases"]) == {"champion", "challenger"}
    archived = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Archived"}, headers=auth).json()
    assert archived["stage"] == "Archived" and archived["aliases"] == []  # champion left with Production
    answer = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Production"}, headers=auth)
    assert answer.status_code == 409 and "Staging" in answer.json()["detail"]
    assert api.delete(f"/models/{MODEL}/aliases/challenger", headers=auth).status_code == 204
    assert api.get(f"/models/{MODEL}").json()["aliases"] == {"champion": "2"}


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


def test_job_records_survive_a_gateway_restart(api, stack):
    before = {j["job_id"]: j["status"] for j in api.get("/train").json()}
    stack.stop("gateway")
    stack.start_gateway()
    after = {j["job_id"]: j["status"] for j in api.get("/train").json()}
    assert after == before and len(after) == 4


def test_model_server_down_means_a_quick_503_and_recovery_without_gateway_restart(api, stack):
    stack.stop("model-server")
    started = time.monotonic()
    answer = api.post("/predict", json={"records": RECORDS[:1]})
    assert answer.status_code == 503 and "model server unreachable" in answer.json()["detail"]
    assert time.monotonic() - started < 5
    assert api.get("/ready").status_code == 503
    stack.start_model_server()
    answer = api.post("/predict", json={"records": RECORDS[:1]})
    assert answer.status_code == 200 and answer.json()["model"]["version"] == "2"


def test_openapi_lists_every_route_and_docs_render(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/predict", "/train", "/train/{job_id}", "/models", "/models/{name}",
        "/models/{name}/versions/{version}", "/models/{name}/versions/{version}/stage",
        "/models/{name}/aliases/{alias}", "/health", "/ready",
    }
    assert api.get("/docs").status_code == 200


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
