"""Predictions, answered by the model server."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from fastapi import APIRouter, HTTPException, Response, status

from gateway.deps import ModelClientDep, SettingsDep
from gateway.schemas import PredictRequest, PredictResponse

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


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={
        413: {"description": "more rows than GATEWAY_MAX_PREDICT_ROWS"},
        422: {"description": "a body, record or column the model cannot score; the message names it"},
        503: {"description": "no model server answers, or no version is promoted"},
    },
)
async def predict(body: PredictRequest, settings: SettingsDep, model: ModelClientDep) -> Response:
    """Score raw rows with the promoted model version; predictions come back in input order."""
    if len(body.records) > settings.max_predict_rows:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"records: {len(body.records)} rows, at most {settings.max_predict_rows} per request",
        )
    try:
        status_code, payload, version = await model.predict(body.records)
    except httpx.HTTPError as err:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"model server unreachable at {settings.model_server}: {type(err).__name__}",
        ) from None
    if status_code == 503:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=model_error_message(payload))
    if status_code == 400 and payload.get("error_code") == "INVALID_PARAMETER_VALUE":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=model_error_message(payload))
    if status_code != 200:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"model server answered {status_code}: {model_error_message(payload)}")
    # Serialised here with orjson: the shape is PredictResponse's, without a
    # second validation pass over every prediction.
    answer = {
        "model": {"name": settings.model_name, "version": version or "unknown"},
        "predictions": [to_prediction(row) for row in payload["predictions"]],
    }
    return Response(orjson.dumps(answer), media_type="application/json")
