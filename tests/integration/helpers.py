"""Polling helpers for tests that drive real services: wait on a condition, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s")


def finished_job(api: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    def done() -> dict | None:
        job = api.get(f"/train/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"job {job_id} to finish")


def start_training(api: httpx.Client, headers: dict, **body: Any) -> str:
    answer = api.post("/train", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/train/{answer.json()['job_id']}"
    return answer.json()["job_id"]


def served_version(api: httpx.Client) -> str | None:
    answer = api.get("/ready")
    return answer.json()["model"]["version"] if answer.status_code == 200 else None
