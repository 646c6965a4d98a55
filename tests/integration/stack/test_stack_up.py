"""The README's stack-up path: `make up` trains, promotes and serves the default model; `make down` stops it.

Run with ``SERVE_ALIAS=prod``: the serving alias is a setting, and a stage transition to
Production through the gateway moves it (the one registry policy), so it reaches /predict.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from runtime.processes import free_port
from stack.local import port_in_use
from tests.conftest import PROJECT_DIR, census_rows
from tests.integration.helpers import finished_job, served_version, start_training, wait_for

pytestmark = pytest.mark.integration


def test_make_up_serves_the_default_model_and_make_down_stops_everything(tmp_path):
    ports = {name: free_port("127.0.0.1") for name in ("GATEWAY_PORT", "MLFLOW_PORT", "MODEL_SERVER_PORT")}
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "SERVE_ALIAS": "prod", "REGISTRY_POLL_SECONDS": "0.5",
           **{k: str(v) for k, v in ports.items()}}
    env.pop("MLFLOW_TRACKING_URI", None)
    gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    try:
        up = subprocess.run(["make", "up"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert f"{gateway}/docs" in up.stdout
        assert "promoted census-income-classifier version 1" in up.stdout

        records = census_rows(5).drop(columns=["income"]).to_dict(orient="records")
        answer = httpx.post(f"{gateway}/predict", json={"records": records}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == {"name": "census-income-classifier", "version": "1"}
        assert len(answer.json()["predictions"]) == 5
        assert httpx.get(f"{gateway}/docs").status_code == 200

        again = subprocess.run(["make", "up"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0 and "training" not in again.stdout  # idempotent: nothing retrained

        with httpx.Client(base_url=gateway, timeout=30) as api:
            assert api.get("/models/census-income-classifier").json()["aliases"] == {"prod": "1"}
            job = finished_job(api, start_training(api, {}, data_path="census-income-sample.csv.gz", target="income",
                                                   n_estimators=5))
            assert job["status"] == "succeeded" and job["model_version"] == "2", job
            moved = api.post("/models/census-income-classifier/versions/2/stage", json={"stage": "Production"})
            assert moved.status_code == 200 and moved.json()["aliases"] == ["prod"], moved.text
            wait_for(lambda: served_version(api) == "2", 60, "version 2 served")
            answer = api.post("/predict", json={"records": records})
            assert answer.status_code == 200 and answer.json()["model"]["version"] == "2"
            stages = {v["version"]: v["stage"] for v in api.get("/models/census-income-classifier").json()["versions"]}
            assert stages == {"2": "Production", "1": "Archived"}
    finally:
        down = subprocess.run(["make", "down"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=120)
    assert "stopped: gateway, model-server, mlflow" in down.stdout
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())
