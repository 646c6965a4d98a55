"""The gateway's request middleware on a small app of its own: ids, logs, metrics, limits, crashes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.observability import Admission, Metrics, RequestContext, unique_id
from runtime.logs import JsonFormatter, request_id_var


def app_with_middleware(metrics: Metrics, limit: int = 1024) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=limit)

    @app.post("/echo/{name}")
    async def echo(name: str, request: Request) -> dict:
        return {"name": name, "bytes": len(await request.body()), "request_id": request_id_var.get()}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("a bug of ours")

    return app


def call(app: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_request_id_is_kept_or_made_and_visible_to_the_handler():
    app = app_with_middleware(Metrics())
    kept = call(app, "POST", "/echo/a", headers={"X-Request-ID": "abc.123"})
    assert kept.headers["x-request-id"] == "abc.123" and kept.json()["request_id"] == "abc.123"
    made = call(app, "POST", "/echo/a", headers={"X-Request-ID": "bad\r\nInjected: yes"})
    assert made.headers["x-request-id"] == made.json()["request_id"] and len(made.json()["request_id"]) == 32


def test_metrics_are_labelled_by_route_template_not_raw_path():
    metrics = Metrics()
    app = app_with_middleware(metrics)
    for name in ("a", "b", "c"):
        call(app, "POST", f"/echo/{name}")
    call(app, "GET", "/random/path/1")
    assert sample(metrics, "gateway_requests_total", method="POST", route="/echo/{name}", status="200") == 3
    assert sample(metrics, "gateway_requests_total", method="GET", route="unmatched", status="404") == 1
    assert sample(metrics, "gateway_request_duration_seconds_count",
                  method="POST", route="/echo/{name}", status="200") == 3


@pytest.mark.parametrize("streamed", [False, True])
def test_bodies_above_the_limit_are_413_declared_or_streamed(streamed):
    app = app_with_middleware(Metrics(), limit=1024)
    body = b"x" * 5000

    async def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for i in range(0, 5000, 500):
            yield body[i:i + 500]

    answer = call(app, "POST", "/echo/a", content=chunks() if streamed else body)
    assert answer.status_code == 413 and "GATEWAY_MAX_BODY_BYTES" in answer.json()["detail"]
    assert call(app, "POST", "/echo/a", content=b"x" * 1000).json()["bytes"] == 1000


def test_an_unexpected_error_is_a_json_500_with_the_id_and_a_logged_traceback(caplog):
    metrics = Metrics()
    app = app_with_middleware(metrics)
    with caplog.at_level(logging.ERROR, logger="gateway.error"):
        answer = call(app, "GET", "/boom", headers={"X-Request-ID": "crash-1"})
    assert answer.status_code == 500 and answer.json()["request_id"] == "crash-1"
    assert answer.headers["x-request-id"] == "crash-1"
    assert "a bug of ours" not in answer.text  # details stay in the log
    (record,) = caplog.records
    line = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: a bug of ours" in line["exception"]
    assert sample(metrics, "gateway_requests_total", method="GET", route="/boom", status="500") == 1


def test_json_formatter_writes_one_object_per_line_with_the_request_id_and_extras():
    token = request_id_var.set("rid-7")
    try:
        record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s %d", ("/x\n", 200), None)
        record.status = 200
        text = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["request_id"] == "rid-7" and entry["status"] == 200 and entry["message"] == "GET /x\n 200"


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.3, 1_700_000_000.9994, 1_700_000_000.9999996,
                                     1_700_000_059.9999999, 1_700_000_001.5])
def test_json_formatter_times_each_line_as_datetime_would(created):
    formatter = JsonFormatter()
    formatter.timestamp(created - 1.7)  # a second kept from an earlier line is not reused for another one
    assert formatter.timestamp(created) == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def test_admission_refuses_beyond_the_limit_per_model_and_counts_it():
    metrics = Metrics()
    admission = Admission(2, metrics)
    assert admission.enter("a") and admission.enter("a") and not admission.enter("a")
    assert admission.enter("b")  # another model has its own limit
    assert sample(metrics, "gateway_predict_rejected_total", model="a") == 1
    assert sample(metrics, "gateway_predict_pending", model="a") == 2
    admission.leave("a")
    assert admission.enter("a")
    admission.leave("b")
    assert "b" not in admission.pending and sample(metrics, "gateway_predict_pending", model="b") == 0


def test_per_model_metric_labels_are_bounded():
    metrics = Metrics()
    metrics.labels.max_models, metrics.labels.max_versions = 2, 2
    for version in ("1", "2", "3"):
        metrics.observe_prediction("m", version, 200, rows=4, seconds=0.01)
    for model in ("n", "o"):
        metrics.observe_prediction(model, "1", 200, rows=1, seconds=0.01)
    assert sample(metrics, "gateway_model_rows_total", model="m", version="2") == 4
    assert sample(metrics, "gateway_model_rows_total", model="m", version="other") == 4  # a third version
    assert sample(metrics, "gateway_model_rows_total", model="other", version="other") == 1  # a third model
    assert sample(metrics, "gateway_model_requests_total", model="m", version="1", status="200") == 1



def test_unique_ids_differ_across_calls_and_between_a_process_and_its_forked_child():
    ids = {unique_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker must not go on from its parent's prefix
        os.write(write, unique_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode()[:16] != unique_id()[:16]
