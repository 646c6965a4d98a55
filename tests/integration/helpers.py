"""Helpers for tests that drive real processes: wait on a condition (never a fixed sleep), run steps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PROJECT_DIR, Tracking


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s")


def finished_job(api: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    last: dict = {}

    def done() -> dict | None:
        last.update(api.get(f"/train/{job_id}").json())
        return dict(last) if last["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        return wait_for(done, timeout, f"job {job_id} to finish")
    except AssertionError as err:  # where it stood: which step was slow, or stuck
        raise AssertionError(f"{err}; it was {last.get('status')}, its log ending:\n{last.get('log_tail')}") from None


def start_training(api: httpx.Client, headers: dict, **body: Any) -> str:
    answer = api.post("/train", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/train/{answer.json()['job_id']}"
    return answer.json()["job_id"]


def served_version(api: httpx.Client) -> str | None:
    answer = api.get("/ready")
    return answer.json()["model"]["version"] if answer.status_code == 200 else None


VENV_BIN = Path(sys.executable).parent


def child_env(tracking: Tracking) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.uri}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def mlflow_run(tracking: Tracking, *params: str, entry_point: str = "main") -> subprocess.CompletedProcess:
    args = [str(VENV_BIN / "mlflow"), "run", str(PROJECT_DIR), "-e", entry_point,
            "--env-manager", "local", "--experiment-id", tracking.experiment_id]
    for param in params:
        args += ["-P", param]
    return subprocess.run(args, env=child_env(tracking), capture_output=True, text=True, timeout=600)


def run_step(tracking: Tracking, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_DIR,
                          env=child_env(tracking), capture_output=True, text=True, timeout=300)


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def answers(predictions: list[dict]) -> list[dict]:
    """Predictions without their ids (every answer has new ones)."""
    return [{k: v for k, v in p.items() if k != "id"} for p in predictions]


def own_probabilities(tracking_uri: str, name: str, version: str, rows: list[dict]) -> tuple[list[dict[str, float]],
                                                                                        str]:
    """Each row's probabilities before calibration, from the version's model in this process: what a forest's
    explanations add up to; and what they say they explain ("probability" when training kept the forest's own
    probabilities, calibration "none"; "uncalibrated_probability" otherwise)."""
    import mlflow
    import pandas as pd

    uri = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    inner = mlflow.pyfunc.load_model(local).unwrap_python_model()
    proba = inner._compiled.predict_proba(pd.DataFrame(rows, dtype=object))
    classes = [str(c) for c in inner._compiled.classes]
    explains = "probability" if inner._calibration.method == "none" else "uncalibrated_probability"
    return [dict(zip(classes, row.tolist(), strict=True)) for row in proba], explains
