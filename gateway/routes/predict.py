"""Predictions, answered by the model server."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, status

from gateway.deps import ModelHttpDep, SettingsDep
from gateway.schemas import ModelRef, Prediction, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])
PROBA_PREFIX = "proba_"


def model_error_message(body: Any) -> str:
    """Our model's own message from an MLflow scoring-server error.

    MLflow wraps it as "Failed to predict data '<the whole input>'. \\nError: <message>";
    the input is the caller's own data, so only the message goes back.
    """
    message = str(body.get("message", "")) if isinstance(body, dict) else str(body)
    return message.rsplit("\nError: ", 1)[-1].strip()


def to_prediction(row: dict[str, Any]) -> Prediction:
    probabilities = {k.removeprefix(PROBA_PREFIX): v for k, v in row.items() if k.startswith(PROBA_PREFIX)}
    return Prediction(label=row["label"], probability=row["probability"], probabilities=probabilities)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={
        413: {"description": "more rows than GATEWAY_MAX_PREDICT_ROWS"},
        422: {"description": "a body, record or column the model cannot score; the message names it"},
        503: {"description": "no model server answers, or no version is promoted"},
    },
)
async def predict(body: PredictRequest, settings: SettingsDep, http: ModelHttpDep) -> PredictResponse:
    """Score raw rows with the promoted model version; predictions come back in input order."""
    if len(body.records) > settings.max_predict_rows:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"records: {len(body.records)} rows, at most {settings.max_predict_rows} per request",
        )
    try:
        answer = await http.post(f"{settings.model_server}/invocations",
                                 json={"dataframe_records": body.records})
    except httpx.HTTPError as err:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"model server unreachable at {settings.model_server}: {type(err).__name__}",
        ) from None
    try:
        payload = answer.json()
    except ValueError:
        payload = {"message": answer.text[:500]}
    if answer.status_code == 503:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=model_error_message(payload))
    if answer.status_code == 400 and payload.get("error_code") == "INVALID_PARAMETER_VALUE":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=model_error_message(payload))
    if answer.status_code != 200:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY,
                            detail=f"model server answered {answer.status_code}: {model_error_message(payload)}")
    model = ModelRef(name=answer.headers.get("X-Model-Name", settings.model_name),
                     version=answer.headers.get("X-Model-Version", "unknown"))
    return PredictResponse(model=model, predictions=[to_prediction(r) for r in payload["predictions"]])
