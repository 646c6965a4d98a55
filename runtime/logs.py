"""JSON log lines for our services, and starting one of them on uvicorn."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from contract.settings import Settings

# The id of the request being answered, set by the gateway's middleware; every log line written
# meanwhile carries it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every record has, and uvicorn's ANSI-coloured copy of its message: not extra fields.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any ``extra=`` fields.

    Written with orjson, the second of the timestamp formatted once: the gateway writes an access line
    per request, and the standard library's encoder and datetime took half of a line's cost.
    """

    _second: float | None = None  # the whole second last formatted, and its text
    _second_text = ""

    def timestamp(self, created: float) -> str:
        """``created`` in ISO 8601, UTC, to the millisecond (2026-11-28T22:05:58.123+00:00)."""
        second, fraction = divmod(created, 1)
        micro = round(fraction * 1_000_000)  # as datetime rounds a timestamp, then cut to milliseconds
        if micro == 1_000_000:
            second, micro = second + 1, 0
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{micro // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # what orjson refuses (an int beyond 64 bits, a non-str key): any line is written
            return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for our loggers and uvicorn's (whose access log we replace)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call to the model server otherwise


# MLflow's REST client retries a failed call 7 times with backoff (minutes in
# all). A service that must answer quickly, and a training job whose tracking
# server is gone, should fail in seconds: these are the defaults of our
# processes unless the environment sets them.
MLFLOW_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def apply_mlflow_client_defaults() -> None:
    """Set :data:`MLFLOW_CLIENT_DEFAULTS` where the environment does not; MLflow reads them per call."""
    for name, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def run_service(create_app: Callable[[Settings], Any], settings: Settings, port: int) -> None:
    """Start one of our HTTP services: JSON logs, MLflow's client defaults, uvicorn without its
    own access log."""
    import uvicorn  # only the services need it

    configure_logging(settings.log_level)
    apply_mlflow_client_defaults()
    uvicorn.run(create_app(settings), host=settings.host, port=port, log_config=None, access_log=False)
