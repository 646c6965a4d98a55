"""Predictions, answered by the model server: ``/predict`` for ``MODEL_NAME``, ``/models/{name}/predict`` for any."""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status

from contract.model_output import (
    CONFIDENCE_COLUMN,
    CONFIDENCE_PARAM,
    PREDICTION_SET_COLUMN,
    PROBA_PREFIX,
    SET_COVERAGE_PARAM,
)
from contract.predict_body import MAX_ROWS_SETTING, BodyRefused, check_fields, check_has_rows, check_row_count
from contract.settings import Settings
from contract.tables import csv_records
from gateway.deps import AdmissionDep, LeanRoute, PredictorDep, Reads, SettingsDep
from gateway.model_client import CSV, JSON, Rows, Target
from gateway.observability import Admission
from gateway.predictor import Predictor, as_http_error
from gateway.schemas import (
    AliasQuery,
    ConfidenceQuery,
    ModelName,
    PredictRequest,
    PredictResponse,
    SetCoverageQuery,
    VersionQuery,
    checked_alias,
    unprocessable,
)

router = APIRouter(tags=["predict"], route_class=LeanRoute)  # the hot path: see LeanRoute
# A body above this size goes to the model server as the caller sent it, read there only: reading a
# 1,000-row body here and encoding it again cost more than the model's work. Smaller ones are read here
# and micro-batched with other callers' rows. Either way the same contract (contract/predict_body.py) is
# checked before any scoring: the model server is told it with the body.
PASS_ON_BYTES = 32 * 1024


def to_predictions(rows: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
    """Model-server rows as :class:`Prediction` objects (every row of one answer has the same classes)."""
    if not rows:
        return []
    keys = [k for k in rows[0] if k.startswith(PROBA_PREFIX)]
    classes = [k.removeprefix(PROBA_PREFIX) for k in keys]
    # Each row's probabilities made into their object in C (one itemgetter call, zip and dict), without
    # strict zips: a quarter less time on a 1,000-row answer than unpacking them in the comprehension (the
    # ids are made one a row, and the getter raises for a row without a class's column).
    cells = itemgetter(*keys) if len(keys) > 1 else lambda row: tuple(row[key] for key in keys)
    probabilities = map(dict, map(zip, repeat(classes), map(cells, rows)))
    predictions = [{"id": prediction_id, "label": row["label"], "probability": row["probability"],
                    "probabilities": these} for prediction_id, row, these in zip(ids, rows, probabilities)]
    if PREDICTION_SET_COLUMN in rows[0]:  # asked for with a confidence
        for prediction, row in zip(predictions, rows, strict=True):
            prediction[PREDICTION_SET_COLUMN], prediction[CONFIDENCE_COLUMN] = row[PREDICTION_SET_COLUMN], row[
                CONFIDENCE_COLUMN]
    return predictions


def set_params(confidence: float | None, coverage: str) -> dict[str, Any] | None:
    """The model's params asking for prediction sets; None when the caller asks for none."""
    return {CONFIDENCE_PARAM: confidence, SET_COVERAGE_PARAM: coverage} if confidence else None


def parse_predict_body(body: bytes, content_type: str, max_rows: int,
                       limit: str = MAX_ROWS_SETTING) -> list[dict[str, Any]]:
    """The rows of a prediction body: ``{"records": [...]}`` as :class:`PredictRequest` describes, or CSV.

    Done by hand with orjson rather than by pydantic: on a 1,000-row request the
    generic validation costs more than scoring the rows.
    """
    media = media_type(content_type)
    if media == CSV:
        try:
            records = csv_records(body)
        except ValueError as err:
            raise unprocessable(["body"], str(err), "csv_invalid") from None
        contracted(check_has_rows, len(records), csv=True)
        return check_rows(records, max_rows, limit)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise unprocessable(["body"], f"body is not valid JSON: {err}", "json_invalid") from None
    if not isinstance(payload, dict):
        raise unprocessable(["body"], "expected a JSON object with a 'records' list", "model_type")
    contracted(check_fields, payload)
    records = payload["records"]
    if not isinstance(records, list):
        raise unprocessable(["body", "records"], "records must be a list of row objects", "list_type")
    contracted(check_has_rows, len(records), csv=False)
    check_rows(records, max_rows, limit)
    # The cells are the model's to check: it refuses a list or an object in one of its columns naming
    # the column and the row (a 422 here), and ignores the columns it does not use, whatever they hold.
    for i, row in enumerate(records):
        if type(row) is not dict:
            raise unprocessable(["body", "records", i], f"records[{i}] must be an object of column: value", "dict_type")
    return records


def media_type(content_type: str) -> str:
    """JSON (also when unsaid) or CSV; a 415 for anything else."""
    media = content_type.split(";")[0].strip().lower()
    if media not in (JSON, CSV, ""):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail=f"Content-Type must be {JSON} or {CSV}, not {content_type!r}")
    return media or JSON


def check_rows(records: list, max_rows: int, limit: str) -> list:
    contracted(check_row_count, len(records), max_rows, limit)
    return records


def contracted(rule: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """One of the contract's rules (contract/predict_body.py), its refusal as the gateway's HTTP error."""
    try:
        rule(*args, **kwargs)
    except BodyRefused as err:
        raise as_http_error(err) from None


async def admitted(request: Request, model: str, admission: Admission, settings: Settings,
                   answer: Callable[[], Any]) -> Any:
    """``answer()`` if fewer than GATEWAY_MAX_PENDING requests for ``model`` wait; a 503 otherwise."""
    if not admission.enter(model):
        # Drained, not parsed or kept: a client still sending gets a clean 503, not a reset.
        async for _ in request.stream():
            pass
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"gateway overloaded: {admission.limit} requests for '{model}' are already waiting "
                   "(GATEWAY_MAX_PENDING); retry later",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    try:
        return await answer()
    finally:
        admission.leave(model)


async def answer_predict(request: Request, target: Target, settings: Settings, predictor: Predictor,
                         admission: Admission, params: dict[str, Any] | None = None) -> Response:
    async def answer() -> Response:
        body, content_type = await request.body(), request.headers.get("content-type", "")
        rows = Rows(body=body, media=media_type(content_type),
                    parse=lambda: parse_predict_body(body, content_type, settings.max_predict_rows))
        if len(body) <= PASS_ON_BYTES or params:  # params go with records, never with a body passed on
            rows.parsed()
        done = await predictor.predict(rows, target, params)
        # Serialised here with orjson: the shape is PredictResponse's, without a
        # second validation pass over every prediction.
        answered = {"model": {"name": target.name, "version": done.version},
                    "predictions": to_predictions(done.rows, done.ids)}
        return Response(orjson.dumps(answered), media_type=JSON, headers={"X-Model-Version": done.version})

    return await admitted(request, target.name, admission, settings, answer)


BODY = {"requestBody": {"required": True, "content": {
    JSON: {"schema": PredictRequest.model_json_schema()},
    CSV: {"schema": {"type": "string", "description": "a header row, then raw rows as in the file"}}}}}
RESPONSES = {
    404: {"description": "no such registered model, version or alias"},
    413: {"description": "more rows than GATEWAY_MAX_PREDICT_ROWS, or a body above GATEWAY_MAX_BODY_BYTES"},
    415: {"description": "the body is neither application/json nor text/csv"},
    422: {"description": "a body, record or column the model cannot score; the message names it"},
    503: {"description": "no model server answers, no version is served yet, the version is loading (with "
                         "Retry-After), or GATEWAY_MAX_PENDING requests for the model are waiting (with Retry-After)"},
}


@router.post("/predict", response_model=PredictResponse, dependencies=[Reads], openapi_extra=BODY, responses=RESPONSES)
async def predict(request: Request, settings: SettingsDep, predictor: PredictorDep, admission: AdmissionDep,
                  confidence: ConfidenceQuery = None, set_coverage: SetCoverageQuery = "marginal") -> Response:
    """Score raw rows with the served version of the default model (``MODEL_NAME``); predictions come back
    in input order. With ``?confidence=0.9`` each also carries its ``prediction_set``.

    Body: ``{"records": [{column: value, ...}, ...]}`` (see PredictRequest), or ``text/csv`` with a header row.
    """
    return await answer_predict(request, Target(settings.model_name), settings, predictor, admission,
                                set_params(confidence, set_coverage))


@router.post("/models/{name}/predict", response_model=PredictResponse, dependencies=[Reads], openapi_extra=BODY, responses=RESPONSES)
async def predict_model(name: ModelName, request: Request, settings: SettingsDep, predictor: PredictorDep,
                        admission: AdmissionDep, version: VersionQuery = None, alias: AliasQuery = None,
                        confidence: ConfidenceQuery = None, set_coverage: SetCoverageQuery = "marginal") -> Response:
    """Score raw rows with any registered model: its served version (``SERVE_ALIAS``), or ``?version=N``,
    or ``?alias=A``. Loaded on its first request (503 with ``Retry-After`` meanwhile), then followed."""
    if version and alias:
        raise unprocessable(["query"], "give version or alias, not both")
    if alias:
        checked_alias(alias, "query")
    return await answer_predict(request, Target(name, alias, version), settings, predictor, admission,
                                set_params(confidence, set_coverage))
