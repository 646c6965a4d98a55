"""The docker-compose topology as plain processes: PostgreSQL for the registry and the inference log.

One stack for the module, on a durable PostgreSQL (fsync on): trains through
/train, promotes, predicts; restarts the tracking server and the gateway; stops
PostgreSQL under traffic (the inference log drops what it cannot keep, counts it,
and resumes); kills it with ``kill -9`` under traffic (nothing acknowledged is
lost, and everything recovers by itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.local import LocalStack
from tests.conftest import census_rows
from tests.integration.conftest import TOKEN, PostgresServer, stack_settings
from tests.integration.helpers import finished_job, served_version, start_training, wait_for

pytestmark = pytest.mark.integration

MODEL = "pg-model"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECORDS = census_rows(1560).tail(10).drop(columns=["income"]).to_dict(orient="records")
LOG_BUFFER = 300  # rows the gateway keeps while the log's store is down; small, so that a short outage drops some


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_root: Path, postgres: PostgresServer) -> Iterator[LocalStack]:
    """Configured as docker-compose.yaml does: URIs without credentials, the user and password (with every
    character a URI reserves) in libpq's PGUSER and PGPASSWORD, which the services' processes inherit."""
    root = tmp_path_factory.mktemp("pg-stack")
    settings = stack_settings(root, data_root, model_name=MODEL, backend_store_uri=postgres.bare_uri("mlflow"),
                              artifacts_destination=str(root / "mlartifacts"),
                              inference_log_uri=postgres.bare_uri("inference"), inference_log_buffer_rows=LOG_BUFFER)
    local = LocalStack(settings)
    with pytest.MonkeyPatch.context() as environment:
        for name, value in postgres.credentials().items():
            environment.setenv(name, value)
        try:
            local.up_without_model()
            yield local
        finally:
            local.down()


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=60, headers={"Connection": "close"}) as client:
        yield client


def snapshot(stack: LocalStack, api: httpx.Client) -> dict:
    """What must survive: runs, registry (versions, stages, aliases), jobs, artifacts."""
    client = mlflow.MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    model = api.get(f"/models/{MODEL}").json()
    version = model["versions"][-1]
    artifacts = sorted(a.path for a in client.list_artifacts(version["run_id"]))
    model_files = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri(MODEL, version["version"]), tracking_uri=stack.tracking_uri
    )
    return {
        "runs": sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics.items()))) for r in runs),
        "model": {k: v for k, v in model.items() if k not in ("serving", "loaded_versions")},
        "jobs": api.get("/train").json(),
        "artifacts": artifacts,
        "prediction": mlflow.pyfunc.load_model(model_files).predict(census_rows(3)).to_dict(orient="list"),
    }


def logged_ids(postgres: PostgresServer) -> set[str]:
    with psycopg.connect(postgres.uri("inference")) as db, db.cursor() as cursor:
        cursor.execute("SELECT id, rows FROM inference_requests WHERE role = 'answer'")
        return {f"{key}-{i}" for key, rows in cursor.fetchall() for i in range(rows)}


def metric(api: httpx.Client, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(api.get("/metrics").text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


class Traffic:
    """Single-row /predict from a thread, every outcome kept."""

    def __init__(self, api: httpx.Client):
        self.url = str(api.base_url)
        self.outcomes: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                answer = client.post("/predict", json={"records": RECORDS[:1]})
                self.outcomes.append((answer.status_code,
                                      answer.json()["predictions"][0]["id"] if answer.status_code == 200 else None))

    def __enter__(self) -> Traffic:
        self._thread.start()
        wait_for(lambda: len(self.outcomes) >= 20, 60, "traffic flowing")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_postgres_backed_stack_loses_nothing_across_restarts(api, stack, postgres, tmp_path):
    job = finished_job(api, start_training(api, AUTH, data_path="census-small.csv", target="income",
                                           model_name=MODEL, n_estimators=10))
    assert job["status"] == "succeeded", job
    promoted = api.post(f"/models/{MODEL}/versions/1/stage", json={"stage": "Production"}, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    wait_for(lambda: served_version(api) == "1", 120, "version 1 served")
    first = api.post("/predict", json={"records": RECORDS})
    assert first.status_code == 200 and first.json()["model"]["version"] == "1"

    before = snapshot(stack, api)
    assert len(before["runs"]) == 3  # driver, preprocess, train
    assert {"confusion_matrix.png", "feature_importance.csv"} <= set(before["artifacts"])

    stack.stop("mlflow")
    stack.stop("gateway")
    stack.start_tracking()
    stack.start_gateway()

    assert snapshot(stack, api) == before
    again = api.post("/predict", json={"records": RECORDS})
    assert again.status_code == 200
    assert [p["label"] for p in again.json()["predictions"]] == [p["label"] for p in first.json()["predictions"]]

    # the registry really lives in PostgreSQL, the artifacts in the destination folder, the log in its database
    with psycopg.connect(postgres.uri("mlflow")) as db, db.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models")
        assert cursor.fetchall() == [(MODEL,)]
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 3
    assert any(Path(stack.settings.artifacts_destination).rglob("pipeline.skops"))
    ids = {p["id"] for p in first.json()["predictions"]}
    wait_for(lambda: ids <= logged_ids(postgres), 30, "the predictions in the log's database")


def test_the_log_store_stopped_mid_traffic_costs_no_request_counts_the_loss_and_resumes(api, postgres):
    dropped_before = metric(api, "gateway_inference_log_dropped_rows_total")
    with Traffic(api) as traffic:
        postgres.stop()
        wait_for(lambda: metric(api, "gateway_inference_log_dropped_rows_total") > dropped_before, 120,
                 "rows dropped while the store is down")
        written_before = metric(api, "gateway_inference_log_written_rows_total")
        postgres.start()
        # the writer retries with a backoff of up to 5 s: rows answered before it writes again may still be
        # dropped (the buffer is full); the rows answered once it has written again must all be kept
        wait_for(lambda: metric(api, "gateway_inference_log_written_rows_total") > written_before, 60,
                 "the writer writing again")
        after_resume = len(traffic.outcomes)
        wait_for(lambda: len(traffic.outcomes) > after_resume + 50, 60, "traffic after the writer resumed")
    assert {status for status, _ in traffic.outcomes} == {200}, "a prediction failed"
    late = [i for _, i in traffic.outcomes[after_resume:]]
    wait_for(lambda: set(late) <= logged_ids(postgres), 60, "logging resumed by itself")
    assert metric(api, "gateway_inference_log_pending_rows") < LOG_BUFFER


def test_postgres_killed_under_traffic_loses_nothing_acknowledged_and_everything_recovers(api, stack, postgres):
    with Traffic(api) as traffic:
        wait_for(lambda: len(logged_ids(postgres)) > 100, 60, "rows logged")
        acknowledged = logged_ids(postgres)  # committed: every one must outlive the crash
        before = snapshot(stack, api)
        postgres.kill()
        killed_at = len(traffic.outcomes)
        outage = wait_for(lambda: (r := api.get(f"/models/{MODEL}")).status_code == 503 and r, 60,
                          "registry routes answer 503 while PostgreSQL is down")
        assert outage.headers["Retry-After"] and "tracking server" in outage.json()["detail"]
        wait_for(lambda: len(traffic.outcomes) > killed_at + 50, 60, "predictions while PostgreSQL is down")
        postgres.start()  # crash recovery from the WAL; nobody restarts anything else
        wait_for(lambda: api.get(f"/models/{MODEL}").status_code == 200, 120, "registry routes recovered")
    assert {status for status, _ in traffic.outcomes} == {200}, "a prediction failed"
    assert acknowledged <= logged_ids(postgres)
    after = snapshot(stack, api)
    assert after["runs"] == before["runs"] and after["model"] == before["model"]
    assert after["jobs"] == before["jobs"] and after["artifacts"] == before["artifacts"]
    job = finished_job(api, start_training(api, AUTH, data_path="census-small.csv", target="income",
                                           model_name=MODEL, n_estimators=5))
    assert job["status"] == "succeeded" and job["model_version"] == "2", job  # training works again too
