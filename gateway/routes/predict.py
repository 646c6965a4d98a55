"""Predictions, answered by the model server."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status

from contract.settings import Settings
from gateway.deps import AdmissionDep, MetricsDep, ModelClientDep, SettingsDep
from gateway.model_client import ModelServerClient
from gateway.observability import Metrics
from gateway.schemas import PredictRequest, PredictResponse, unprocessable

router = APIRouter(tags=["predict"])
PROBA_PREFIX = "proba_"


def model_error_message(body: Any) -> str:
    """Our model's own message from an MLflow scoring-server error.

    MLflow wraps it as "Failed to predict data '<the whole input>'. \\nError: <message>";
    the input is the caller's own data, so only the message goes back.
    """
    message = str(body.get("message", "")) if isinstance(body, dict) else str(body)
    return message.rsplit("\nError: ", 1)[-1].strip()


def to_prediction(row: dict[str, Any]) -> dict[str, Any]:
    """One model-server row as a :class:`Prediction`."""
    probabilities = {k.removeprefix(PROBA_PREFIX): v for k, v in row.items() if k.startswith(PROBA_PREFIX)}
    return {"label": row["label"], "probability": row["probability"], "probabilities": probabilities}


def parse_predict_body(body: bytes, content_type: str, max_rows: int) -> list[dict[str, Any]]:
    """The ``records`` of a /predict body, checked as :class:`PredictRequest` describes.

    Done by hand with orjson rather than by pydantic: on a 1,000-row request the
    generic validation costs more than scoring the rows.
    """
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail=f"Content-Type must be application/json, not {content_type!r}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise unprocessable(["body"], f"body is not valid JSON: {err}", "json_invalid") from None
    if not isinstance(payload, dict):
        raise unprocessable(["body"], "expected a JSON object with a 'records' list", "model_type")
    extra = sorted(set(payload) - {"records"})
    if extra:
        raise unprocessable(["body", extra[0]], f"unknown field {extra[0]!r}; the body holds only 'records'", "extra_forbidden")
    if "records" not in payload:
        raise unprocessable(["body", "records"], "field required: a list of row objects", "missing")
    records = payload["records"]
    if not isinstance(records, list):
        raise unprocessable(["body", "records"], "records must be a list of row objects", "list_type")
    if not records:
        raise unprocessable(["body", "records"], "records must hold at least one row", "too_short")
    if len(records) > max_rows:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            detail=f"records: {len(records)} rows, at most {max_rows} per request")
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise unprocessable(["body", "records", i], f"records[{i}] must be an object of column: value", "dict_type")
        for column, value in row.items():
            if isinstance(value, (list, dict)):
                raise unprocessable(["body", "records", i, column],
                              f"column {column!r} of records[{i}]: expected one value (text, number, "
                              "boolean or null), got a list or object")
    return records


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()}}}},
    responses={
        413: {"description": "more rows than GATEWAY_MAX_PREDICT_ROWS, or a body above GATEWAY_MAX_BODY_BYTES"},
        415: {"description": "the body is not sent as application/json"},
        422: {"description": "a body, record or column the model cannot score; the message names it"},
        503: {"description": "no model server answers, no version is promoted, or GATEWAY_MAX_PENDING "
                     "requests are waiting already (with Retry-After)"},
    },
)
async def predict(request: Request, settings: SettingsDep, model: ModelClientDep,
                  admission: AdmissionDep, metrics: MetricsDep) -> Response:
    """Score raw rows with the promoted model version; predictions come back in input order.

    Body: ``{"records": [{column: value, ...}, ...]}`` (see PredictRequest).
    """
    if not admission.enter():
        # Drained, not parsed or kept: a client still sending gets a clean 503, not a reset.
        async for _ in request.stream():
            pass
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"gateway overloaded: {admission.limit} /predict requests are already waiting "
                   "(GATEWAY_MAX_PENDING); retry later",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    try:
        return await answer_predict(request, settings, model, metrics)
    finally:
        admission.leave()


async def answer_predict(request: Request, settings: Settings, model: ModelServerClient,
                         metrics: Metrics) -> Response:
    records = parse_predict_body(await request.body(), request.headers.get("content-type", ""),
                                 settings.max_predict_rows)
    try:
        status_code, payload, version = await model.predict(records)
    except httpx.HTTPError as err:
        metrics.model_server_errors.labels("unreachable").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"model server unreachable at {settings.model_server}: {type(err).__name__}",
        ) from None
    if status_code == 503:
        metrics.model_server_errors.labels("unavailable").inc()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=model_error_message(payload))
    if status_code == 400 and payload.get("error_code") == "INVALID_PARAMETER_VALUE":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=model_error_message(payload))
    if status_code != 200:
        metrics.model_server_errors.labels("bad_gateway").inc()
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"model server answered {status_code}: {model_error_message(payload)}")
    # Serialised here with orjson: the shape is PredictResponse's, without a
    # second validation pass over every prediction.
    answer = {
        "model": {"name": settings.model_name, "version": version or "unknown"},
        "predictions": [to_prediction(row) for row in payload["predictions"]],
    }
    return Response(orjson.dumps(answer), media_type="application/json")
