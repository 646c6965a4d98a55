"""How soon a version answers once it becomes a target: the time from the gateway's alias change until the
gateway answers a request from that version (the model server loads it on the gateway's word, in its warm spare
worker)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import mlflow

# The spare worker warms in a few seconds here after the previous load (docs/performance.md); a version
# becoming a target in ordinary use finds it long warm, and so does each round after this wait.
SPARE_WARM_SECONDS = 10.0
ALIAS = "challenger"


def first_answers(gateway: str, model_server: str, client: mlflow.MlflowClient, model: str, body: Path,
                  rounds: int = 3) -> dict[str, Any]:
    """``rounds`` new versions of ``model`` (version 1's artifacts registered again) made the challenger in turn
    through ``PUT /models/{model}/aliases/challenger``; each one's seconds until its first answer."""
    first = client.get_model_version(model, "1")
    seconds, spare_ready = [], []
    for _ in range(rounds):
        version = client.create_model_version(model, first.source,
                                              model_id=first.source.removeprefix("models:/")).version
        time.sleep(SPARE_WARM_SECONDS)
        spare_ready.append(httpx.get(f"{model_server}/status", timeout=10).json().get("spare") is not None)
        started = time.perf_counter()
        httpx.put(f"{gateway}/models/{model}/aliases/{ALIAS}", json={"version": version},
                  timeout=60).raise_for_status()
        while True:
            answer = httpx.post(f"{gateway}/models/{model}/predict", params={"alias": ALIAS},
                                content=body.read_bytes(), headers={"Content-Type": "application/json"}, timeout=60)
            if answer.status_code == 200 and answer.headers.get("x-model-version") == version:
                break
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"version {version} did not answer within 120 s: {answer.status_code} "
                                   f"{answer.text[:300]}")
            time.sleep(0.02)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "max_s": max(seconds), "median_s": sorted(seconds)[len(seconds) // 2],
            "spare_ready": spare_ready}
