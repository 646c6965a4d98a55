"""Explanations: ``/explain`` for ``MODEL_NAME``, ``/models/{name}/explain`` for any model.

The body is ``/predict``'s (JSON records or CSV). Each row comes back as its prediction plus the exact
TreeSHAP explanation the model computes (``pyfunc/explain.py``): the base value and one contribution a raw
input column, largest first, that add up to the probability.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from contract.model_output import BASE_VALUE_COLUMN, CONTRIB_PREFIX, EXPLAINS_COLUMN, EXPLANATIONS_COLUMN
from contract.settings import Settings
from gateway.deps import Reads, AdmissionDep, PredictorDep, SettingsDep
from gateway.model_client import Target
from gateway.observability import Admission
from gateway.predictor import Predictor
from gateway.routes.predict import BODY, JSON, RESPONSES, admitted, parse_predict_body, to_predictions
from gateway.schemas import (
    AliasQuery,
    ExplainClassesQuery,
    ExplainResponse,
    ModelName,
    VersionQuery,
    checked_alias,
    unprocessable,
)

router = APIRouter(tags=["explain"])
EXPLAIN_RESPONSES = {
    **RESPONSES,
    409: {"description": "the version was trained before models could explain their predictions"},
    413: {"description": "more rows than GATEWAY_MAX_EXPLAIN_ROWS, or a body above GATEWAY_MAX_BODY_BYTES"},
}


def largest_first(contributions: dict[str, float]) -> dict[str, float]:
    return dict(sorted(contributions.items(), key=lambda item: abs(item[1]), reverse=True))


def to_explanations(rows: list[dict[str, Any]], ids: list[str], every_class: bool) -> list[dict[str, Any]]:
    """Model-server rows (predictions plus base_value, contrib_<column>, explanations) as :class:`Explanation`s."""
    explained = []
    for prediction, row in zip(to_predictions(rows, ids), rows, strict=True):
        contributions = {k.removeprefix(CONTRIB_PREFIX): v for k, v in row.items() if k.startswith(CONTRIB_PREFIX)}
        prediction.update(explains=row.get(EXPLAINS_COLUMN) or "probability", base_value=row[BASE_VALUE_COLUMN],
                          contributions=largest_first(contributions))
        if every_class:
            prediction["by_class"] = {
                label: {"base_value": part["base_value"], "contributions": largest_first(part["contributions"])}
                for label, part in row[EXPLANATIONS_COLUMN].items()}
        explained.append(prediction)
    return explained


async def answer_explain(request: Request, target: Target, every_class: bool, settings: Settings,
                         predictor: Predictor, admission: Admission) -> Response:
    async def answer() -> Response:
        records = parse_predict_body(await request.body(), request.headers.get("content-type", ""),
                                     settings.max_explain_rows, "GATEWAY_MAX_EXPLAIN_ROWS")
        done = await predictor.explain(records, target, every_class)
        body = {"model": {"name": target.name, "version": done.version},
                "explanations": to_explanations(done.rows, done.ids, every_class)}
        return Response(orjson.dumps(body), media_type=JSON, headers={"X-Model-Version": done.version})

    return await admitted(request, target.name, admission, settings, answer)


@router.post("/explain", response_model=ExplainResponse, dependencies=[Reads], openapi_extra=BODY, responses=EXPLAIN_RESPONSES)
async def explain(request: Request, settings: SettingsDep, predictor: PredictorDep, admission: AdmissionDep,
                  classes: ExplainClassesQuery = "predicted") -> Response:
    """Predict and explain raw rows with the served version of the default model (``MODEL_NAME``).

    Per row: the prediction as ``/predict`` gives it, ``base_value`` and ``contributions`` (one a raw input
    column, largest |value| first) with ``base_value + sum(contributions)`` = the probability (forests) or the
    log-odds (gradient boosting), as ``explains`` says; ``?classes=all`` adds ``by_class``. Exact TreeSHAP
    (path-dependent), as ``shap.TreeExplainer`` computes it.
    """
    return await answer_explain(request, Target(settings.model_name), classes == "all", settings, predictor,
                                admission)


@router.post("/models/{name}/explain", response_model=ExplainResponse, dependencies=[Reads], openapi_extra=BODY,
             responses=EXPLAIN_RESPONSES)
async def explain_model(name: ModelName, request: Request, settings: SettingsDep, predictor: PredictorDep,
                        admission: AdmissionDep, version: VersionQuery = None, alias: AliasQuery = None,
                        classes: ExplainClassesQuery = "predicted") -> Response:
    """``/explain`` for any registered model: its served version, or ``?version=N``, or ``?alias=A``."""
    if version and alias:
        raise unprocessable(["query"], "give version or alias, not both")
    if alias:
        checked_alias(alias, "query")
    return await answer_explain(request, Target(name, alias, version), classes == "all", settings, predictor,
                                admission)
