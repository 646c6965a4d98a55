"""Request ids, access logs, Prometheus metrics and request admission for the gateway.

One pure-ASGI middleware (:class:`RequestContext`) does the per-request work,
so a request pays for it once and in microseconds:

- ``X-Request-ID``: kept from the request when it is a sane token, made up
  otherwise, set on every response and on every log line written meanwhile;
- the body size limit (``GATEWAY_MAX_BODY_BYTES``, 413), checked from
  ``Content-Length`` before the body is read and again while it streams in;
- one access-log line and the request metrics, labelled by route template
  (not the raw path, so random paths cannot blow up the label set);
- a JSON 500 naming the request id for anything unexpected, logged with its
  traceback on the same line.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import HTTPException
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract.names import (
    TAG_MONITORING_COVERAGE_ROWS,
    TAG_MONITORING_COVERAGE_TARGET,
    TAG_MONITORING_DEMOGRAPHIC_PARITY,
    TAG_MONITORING_DRIFT_SHARE,
    TAG_MONITORING_EQUALIZED_ODDS,
    TAG_MONITORING_ESTIMATED_ACCURACY,
    TAG_MONITORING_FEEDBACK_ROWS,
    TAG_MONITORING_LIVE_ACCURACY,
    TAG_MONITORING_LIVE_CALIBRATION_ERROR,
    TAG_MONITORING_REALISED_COVERAGE,
    TAG_TEST_ACCURACY,
    TAG_TEST_CALIBRATION_ERROR,
)
from gateway.errors import error_body
from runtime.logs import request_id_var

_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class _Ids:
    """Per process: a random prefix and a counter (set again in a forked child)."""

    pid = -1
    prefix = ""
    counter = itertools.count()


def unique_id() -> str:
    """32 hex digits, unique across processes and restarts: 64 random bits per process, then a counter
    (uuid4 read the OS's random source on every call: 2% of a single-row request, twice per request)."""
    if _Ids.pid != os.getpid():
        _Ids.pid, _Ids.prefix, _Ids.counter = os.getpid(), os.urandom(8).hex(), itertools.count()
    return f"{_Ids.prefix}{next(_Ids.counter):016x}"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- metrics ---------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10_000)

# The figures training and the monitor step leave on a version as tags, each a gauge by model and version of the
# served versions (read by gateway/routes/health.py: monitoring_gauges); the alert rules compare them.
VERSION_FIGURES: dict[str, tuple[str, str]] = {
    TAG_MONITORING_DRIFT_SHARE: (
        "gateway_model_drift_share", "Share of input columns the latest monitoring run found drifted"),
    TAG_MONITORING_LIVE_ACCURACY: (
        "gateway_model_live_accuracy", "Accuracy on the rows with a true label, from the latest monitoring run"),
    TAG_MONITORING_ESTIMATED_ACCURACY: (
        "gateway_model_estimated_accuracy",
        "Accuracy estimated from the calibrated probabilities alone (CBPE), from the latest monitoring run"),
    TAG_TEST_ACCURACY: ("gateway_model_test_accuracy", "Accuracy on the version's test split, from training"),
    TAG_TEST_CALIBRATION_ERROR: (
        "gateway_model_test_calibration_error", "Expected calibration error on the test split, from training"),
    TAG_MONITORING_REALISED_COVERAGE: (
        "gateway_model_realised_coverage",
        "Share of the true labels inside the prediction sets served, from the latest monitoring run"),
    TAG_MONITORING_COVERAGE_TARGET: (
        "gateway_model_coverage_target", "The confidence the prediction sets of that coverage were asked for"),
    TAG_MONITORING_COVERAGE_ROWS: (
        "gateway_model_coverage_rows", "Rows with a true label and a prediction set, behind that coverage"),
    TAG_MONITORING_LIVE_CALIBRATION_ERROR: (
        "gateway_model_live_calibration_error",
        "Expected calibration error on the rows with a true label, from the latest monitoring run"),
    TAG_MONITORING_FEEDBACK_ROWS: (
        "gateway_model_feedback_rows", "Rows with a true label behind the live accuracy and calibration error"),
    TAG_MONITORING_DEMOGRAPHIC_PARITY: (
        "gateway_model_demographic_parity_difference",
        "Largest difference between sensitive groups in the share predicted positive, latest monitoring run"),
    TAG_MONITORING_EQUALIZED_ODDS: (
        "gateway_model_equalized_odds_difference",
        "Largest difference between sensitive groups in true or false positive rate, latest monitoring run"),
}


def tag_figure(value: str) -> float | None:
    """A version tag's figure, or None when the tag holds no finite number (anyone with EDIT can set a tag)."""
    try:
        figure = float(value)
    except (TypeError, ValueError):
        return None
    return figure if math.isfinite(figure) else None


class Kept:
    """A labelled metric whose series are looked up once per set of label values: prometheus_client's
    ``labels()`` checks the values and takes a lock on every call, a few microseconds each, about ten times
    per prediction request. For the metrics a request touches, whose label values are bounded and which
    are never cleared (it has no ``clear()``, so that no kept series outlives its metric's)."""

    def __init__(self, metric: Counter | Gauge | Histogram):
        self._metric = metric
        self._series: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._metric.labels(*values)
        return series


class Metrics:
    """The gateway's metrics, in a registry of their own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the output and nobody reads them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Kept(Counter("gateway_requests", "HTTP requests answered, by route and status",
                                     ["method", "route", "status"], registry=r))
        self.latency = Kept(Histogram("gateway_request_duration_seconds", "Time to answer a request",
                                      ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r))
        self.model_server_errors = Counter(
            "gateway_model_server_errors", "Calls to the model server that did not give an answer, by kind "
            "(unreachable: no connection or no reply; unavailable: it answered 503; bad_gateway: other 5xx)",
            ["kind"], registry=r)
        self.batch_rows = Histogram("gateway_batch_rows", "Rows per call to the model server",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("gateway_batch_requests", "/predict requests sharing one call",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.predict_pending = Kept(Gauge("gateway_predict_pending", "Prediction requests admitted and not "
                                          "answered, by model", ["model"], registry=r))
        self.predict_rejected = Counter("gateway_predict_rejected", "Prediction requests refused because "
                                        "GATEWAY_MAX_PENDING of the model were waiting", ["model"], registry=r)
        self.served_model = Gauge("gateway_served_model_info",
                                  "1 for the model version the model server said it serves (last /status)",
                                  ["name", "version"], registry=r)
        self.loaded_models = Gauge("gateway_loaded_model_info", "1 for each version the model server has loaded "
                                   "(last /status)", ["name", "version"], registry=r)
        # Per model and version; the label values are bounded by MODEL_LABELS (see ModelLabels).
        self.model_requests = Kept(Counter("gateway_model_requests", "Prediction requests by model, version and "
                                           "status", ["model", "version", "status"], registry=r))
        self.model_rows = Kept(Counter("gateway_model_rows", "Rows predicted, by model and version",
                                       ["model", "version"], registry=r))
        self.model_latency = Kept(Histogram("gateway_model_request_duration_seconds",
                                            "Time to answer a prediction request, by model and version",
                                            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r))
        self.labels = ModelLabels()
        self.predicted_labels = Kept(Counter("gateway_model_predicted_labels", "Rows answered by model, version "
                                             "and predicted label", ["model", "version", "label"], registry=r))
        self.rollbacks = Counter("gateway_rollouts_rolled_back", "Canaries rolled back automatically, by model",
                                 ["model"], registry=r)
        self.version_figures = {tag: Gauge(name, f"{doc}, by served model and version", ["model", "version"],
                                           registry=r) for tag, (name, doc) in VERSION_FIGURES.items()}
        self.log_written = Counter("gateway_inference_log_written_rows", "Predictions written to the inference log",
                                   registry=r)
        self.log_dropped = Counter("gateway_inference_log_dropped_rows", "Predictions the inference log could not "
                                   "keep, by reason (buffer_full: the store was slow or down too long; "
                                   "unreadable: a request whose body could not be stored, left out)", ["reason"],
                                   registry=r)
        self.log_pending = Gauge("gateway_inference_log_pending_rows", "Predictions waiting to be written to the "
                                 "inference log", registry=r)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def observe_prediction(self, model: str, version: str | None, status: int, rows: int, seconds: float,
                           labels: Iterable[Any] = ()) -> None:
        model, version = self.labels(model, version or "none")
        self.model_requests.labels(model, version, str(status)).inc()
        if status == 200:
            self.model_rows.labels(model, version).inc(rows)
            self.model_latency.labels(model, version).observe(seconds)
            for label, count in collections.Counter(map(str, labels)).items():
                # a model's classes; a model with hundreds of them counts the rest as "other"
                self.predicted_labels.labels(model, version, self.labels.value(model, label)).inc(count)

    def set_version_figures(self, tags_by_version: Iterable[tuple[str, str, dict[str, str]]]) -> None:
        """The gauges of :data:`VERSION_FIGURES` from each served version's tags, and none of other versions; a
        tag that holds no number is logged and skipped, its version's other gauges set."""
        for gauge in self.version_figures.values():
            gauge.clear()
        for name, version, tags in tags_by_version:
            model, version_label = self.labels(name, version)
            for tag, gauge in self.version_figures.items():
                if tag not in tags:
                    continue
                figure = tag_figure(tags[tag])
                if figure is None:
                    logging.getLogger("gateway.metrics").warning(
                        "tag %s of %s version %s is not a number (%.80r): no %s", tag, name, version, tags[tag],
                        VERSION_FIGURES[tag][0])
                    continue
                gauge.labels(model, version_label).set(figure)

    def set_loaded(self, loaded: Iterable[tuple[str, str]]) -> None:
        self.loaded_models.clear()
        for name, version in loaded:
            self.loaded_models.labels(name=name, version=version).set(1)

    def set_served(self, name: str | None, version: str | None) -> None:
        self.served_model.clear()
        if name and version:
            self.served_model.labels(name=name, version=version).set(1)


class ModelLabels:
    """Bounded label values for per-model metrics, so that a client naming random models, or a
    registry with thousands of versions, cannot make the gateway keep unbounded series: the first
    ``max_models`` models seen get their own label and the first ``max_versions`` versions of each;
    later ones are counted under "other"."""

    def __init__(self, max_models: int = 100, max_versions: int = 20):
        self.max_models = max_models
        self.max_versions = max_versions
        self._versions: dict[str, set[str]] = {}
        self._values: dict[str, set[str]] = {}

    def value(self, model: str, value: str, most: int = 50) -> str:
        """A bounded label value of one model (its classes): the first ``most`` seen, then "other"."""
        values = self._values.setdefault(model, set())
        if value in values or len(values) < most:
            values.add(value)
            return value
        return "other"

    def model(self, name: str) -> str:
        if name in self._versions:
            return name
        if len(self._versions) < self.max_models:
            self._versions[name] = set()
            return name
        return "other"

    def __call__(self, model: str, version: str) -> tuple[str, str]:
        label = self.model(model)
        if label == "other":
            return label, "other"
        versions = self._versions[label]
        if version in versions or len(versions) < self.max_versions:
            versions.add(version)
            return label, version
        return label, "other"


class JobsCollector(Collector):
    """Training jobs by status, read from the job store at scrape time (it outlives the process)."""

    def __init__(self, count_by_status: Callable[[], dict[str, int]], statuses: Iterable[str]):
        self._count = count_by_status
        self._statuses = tuple(statuses)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_training_jobs", "Training jobs in the job store, by status",
                                   labels=["status"])
        try:
            counts = self._count()
        except Exception as err:  # noqa: BLE001 (the job store unreadable: every other metric is still scraped)
            logging.getLogger("gateway.jobs").warning("training jobs not counted for /metrics: %s", err)
            return
        for status in self._statuses:
            family.add_metric([status], counts.get(status, 0))
        yield family


# --- admission -------------------------------------------------------------------------


class Admission:
    """At most ``limit`` prediction requests waiting at once per model; the rest are told to come back.

    The limit bounds the gateway's memory and latency under overload: beyond it
    a request costs a 503 with ``Retry-After`` instead of a place in a queue
    that only grows. Counted per model, so one slow or flooded model does not
    turn the others away.
    """

    def __init__(self, limit: int, metrics: Metrics):
        self.limit = limit
        self.pending: dict[str, int] = {}
        self._metrics = metrics

    def enter(self, model: str) -> bool:
        waiting = self.pending.get(model, 0)
        label = self._metrics.labels.model(model)
        if waiting >= self.limit:
            self._metrics.predict_rejected.labels(label).inc()
            return False
        self.pending[model] = waiting + 1
        self._metrics.predict_pending.labels(label).set(waiting + 1)
        return True

    def leave(self, model: str) -> None:
        waiting = self.pending[model] - 1
        if waiting:
            self.pending[model] = waiting
        else:
            del self.pending[model]  # no entry kept for a model nobody is waiting on
        self._metrics.predict_pending.labels(self._metrics.labels.model(model)).set(waiting)


# --- the middleware --------------------------------------------------------------------


def too_large(limit: int) -> HTTPException:
    # An HTTPException, so FastAPI's own body parsing passes it on as it is.
    return HTTPException(413, detail=f"request body larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES)")


def _json_response(status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> list[Message]:
    content = json.dumps(body).encode()
    return [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                     *headers]},
        {"type": "http.response.body", "body": content},
    ]


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, access_log: bool = True):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.log = logging.getLogger("gateway.access")
        self.audit = logging.getLogger("gateway.audit")
        self.errors = logging.getLogger("gateway.error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        declared_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _SANE_ID.fullmatch(candidate) else None
            elif name == b"content-length":
                declared_length = value
        request_id = request_id or unique_id()
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large(self.max_body_bytes)
            return message

        try:
            if declared_length is not None and declared_length.isdigit() and int(declared_length) > self.max_body_bytes:
                # refused before reading a byte of it
                status = 413
                for message in _json_response(413, error_body(too_large(self.max_body_bytes).detail), [id_header]):
                    await send(message)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception:
            self.errors.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not response_started:
                status = 500
                for message in _json_response(500, error_body("internal error; the gateway's log has it under this "
                                                                "request id", request_id=request_id), [id_header]):
                    await send(message)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            labels = (scope["method"], template, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            if self.access_log:
                self.log.info("%s %s %d", scope["method"], scope["path"], status,
                              extra={"method": scope["method"], "path": scope["path"], "route": template,
                                     "status": status, "duration_ms": round(elapsed * 1000, 3)})
            audited = scope.get("state", {}).get("audit")
            if audited and scope["method"] != "GET":  # every call that changes something, whatever came of it
                path = scope.get("path_params", {})
                self.audit.info("%s %s by %s: %d", scope["method"], scope["path"], audited["user"], status, extra={
                    "user": audited["user"], "method": scope["method"], "route": template, "model": audited["model"],
                    "version": path.get("version") or path.get("alias"), "status": status,
                    "outcome": "done" if status < 400 else "refused" if status < 500 else "failed"})
            request_id_var.reset(token)
