"""The README's stack-up path: `make up` trains, promotes and serves the default model; `make down` stops it."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from gateway.model_server import free_port
from gateway.stack import port_in_use
from tests.conftest import PROJECT_DIR, census_rows

pytestmark = pytest.mark.integration


def test_make_up_serves_the_default_model_and_make_down_stops_everything(tmp_path):
    ports = {name: free_port("127.0.0.1") for name in ("GATEWAY_PORT", "MLFLOW_PORT", "MODEL_SERVER_PORT")}
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), **{k: str(v) for k, v in ports.items()}}
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
    finally:
        down = subprocess.run(["make", "down"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=120)
    assert "stopped: gateway, model-server, mlflow" in down.stdout
    assert not any(port_in_use("127.0.0.1", port) for port in ports.values())
