"""The docker-compose topology as plain processes: PostgreSQL backend store, proxied artifacts.

Trains through /train, promotes, predicts; restarts the tracking server and the
gateway; shows that runs, registered versions, job records and artifacts are
all still there.
"""

from __future__ import annotations

import httpx
import mlflow
import psycopg
import pytest

from stack.local import LocalStack
from tests.conftest import census_rows
from tests.integration.conftest import TOKEN, stack_settings
from tests.integration.helpers import finished_job, served_version, start_training, wait_for

pytestmark = pytest.mark.integration

MODEL = "pg-model"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECORDS = census_rows(1560).tail(10).drop(columns=["income"]).to_dict(orient="records")


def snapshot(stack: LocalStack, api: httpx.Client) -> dict:
    """What must survive: runs, registry, jobs, artifacts."""
    client = mlflow.MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    model = api.get(f"/models/{MODEL}").json()
    version = model["versions"][0]
    artifacts = sorted(a.path for a in client.list_artifacts(version["run_id"]))
    model_files = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri(MODEL, version["version"]), tracking_uri=stack.tracking_uri
    )
    return {
        "runs": sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics.items()))) for r in runs),
        "model": model,
        "jobs": api.get("/train").json(),
        "artifacts": artifacts,
        "prediction": mlflow.pyfunc.load_model(model_files).predict(census_rows(3)).to_dict(orient="list"),
    }


def test_postgres_backed_stack_loses_nothing_across_restarts(tmp_path, data_root, postgres_uri):
    settings = stack_settings(tmp_path, data_root, model_name=MODEL, backend_store_uri=postgres_uri,
                              artifacts_destination=str(tmp_path / "mlartifacts"))
    stack = LocalStack(settings)
    try:
        stack.up_without_model()
        with httpx.Client(base_url=settings.gateway_url, timeout=30) as api:
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
            assert again.status_code == 200 and again.json() == first.json()

        # the registry really lives in PostgreSQL, the artifacts in the destination folder
        with psycopg.connect(postgres_uri) as db, db.cursor() as cursor:
            cursor.execute("SELECT name FROM registered_models")
            assert cursor.fetchall() == [(MODEL,)]
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone()[0] == 3
        assert any((tmp_path / "mlartifacts").rglob("pipeline.skops"))
    finally:
        stack.down()
