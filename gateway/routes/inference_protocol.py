"""The Open Inference Protocol (KServe V2) REST API, for KServe, MLServer and Triton clients.

Health, server and model metadata, model readiness and inference, under ``/v2``,
answering from the same model server, with the same limits, admission and
column-naming errors as ``/predict`` (in the protocol's ``{"error": ...}`` form).
The tensors are translated by :mod:`gateway.inference_protocol`.
"""

from __future__ import annotations

from typing import Any

import mlflow
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from contract.model_output import CONFIDENCE_PARAM
from contract.registry import NotFound
from gateway.deps import (
    AdmissionDep,
    LeanRoute,
    ModelClientDep,
    ModelInfoDep,
    PredictorDep,
    Reads,
    RegistryDep,
    SettingsDep,
)
from gateway.errors import protocol_error
from gateway.inference_protocol import (
    SET_OUTPUTS,
    ProtocolError,
    infer_response,
    metadata,
    parse_infer_request,
)
from gateway.model_client import Rows, Target, served
from gateway.model_info import NotOurModel
from gateway.routes.predict import admitted, check_rows
from gateway.schemas import ModelName, VersionNumber

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
ERRORS = {400: {"description": "{\"error\": ...}: a request the protocol refuses"},
          404: {"description": "{\"error\": ...}: no such model or version"},
          413: {"description": "{\"error\": ...}: more rows than GATEWAY_MAX_PREDICT_ROWS"},
          422: {"description": "{\"error\": ...}: tensors or columns the model cannot score; the message names them"},
          503: {"description": "{\"error\": ...}: nothing served yet, the version is loading (Retry-After), or "
                               "the model server is down"}}


def as_protocol_error(err: HTTPException) -> JSONResponse:
    """One of the gateway's HTTP errors in the protocol's form: same status, same words."""
    return protocol_error(err.status_code, err.detail, err.headers)


def health(ok: bool) -> Response:
    # The protocol: 200 means true, 4xx false, the body empty.
    return Response(status_code=status.HTTP_200_OK if ok else status.HTTP_400_BAD_REQUEST)


@router.get("", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return {"name": "tabular-classifier", "version": mlflow.__version__, "extensions": ["binary_tensor_data"]}


# The health routes answer with an empty body: no JSON media type in the schema.
EMPTY = {"response_class": Response}


@router.get("/health/live", summary="Server live", responses={200: {"description": "live (empty body)"}}, **EMPTY)
def live() -> Response:
    return health(True)


@router.get("/health/ready", summary="Server ready", responses={200: {"description": "ready (empty body)"},
            400: {"description": "not ready (empty body)"}}, **EMPTY)
async def ready(model: ModelClientDep) -> Response:
    """Ready when the model server serves ``MODEL_NAME``."""
    body = await model.status()
    return health(isinstance(body, dict) and body.get("status") == "serving")


async def model_ready(target: Target, model: ModelClientDep) -> Response:
    """Ready when the model server serves the model (or has the version loaded). Asking about a model it
    does not serve yet starts loading it, so a client polling readiness sees it become ready."""
    body = await model.status()
    if not isinstance(body, dict):
        return health(False)
    if target.version:
        ready = any(b["name"] == target.name and b["version"] == target.version and b["alive"]
                    for b in body.get("loaded", []))
    else:
        ready = any(m["name"] == target.name for m in served(body))
    if ready:
        return health(True)
    try:
        answer = await model.invoke([], target)  # not served yet: this starts loading it
    except Exception:  # noqa: BLE001 (the model server is down: not ready)
        return health(False)
    if answer.status == 404:
        return protocol_error(404, str(answer.body.get("message", "not found")))
    return health(False)


@router.get("/models/{name}/ready", dependencies=[Reads], summary="Model ready", responses={
    200: {"description": "ready (empty body)"}, 400: {"description": "not ready (empty body)"}, **ERRORS}, **EMPTY)
async def ready_model(name: ModelName, model: ModelClientDep) -> Response:
    return await model_ready(Target(name), model)


@router.get("/models/{name}/versions/{version}/ready", dependencies=[Reads], summary="Model version ready", responses={
    200: {"description": "ready (empty body)"}, 400: {"description": "not ready (empty body)"}, **ERRORS}, **EMPTY)
async def ready_version(name: ModelName, version: VersionNumber, model: ModelClientDep) -> Response:
    return await model_ready(Target(name, version=version), model)


def model_metadata(name: str, version: str | None, registry: RegistryDep, info: ModelInfoDep,
                   settings: SettingsDep) -> JSONResponse:
    try:
        found = version or registry.served_version(name, settings.serve_follows, settings.serve_alias,
                                                   settings.serve_stage)
        if found is None:
            raise NotFound(f"no version of '{name}' is served yet")
        registry.version(name, found)
        described = info.get(name, found)
        versions = [v.version for v in registry.versions(name)]
    except NotFound as err:
        return protocol_error(404, str(err))
    except NotOurModel as err:
        return protocol_error(400, str(err))
    return JSONResponse(metadata(name, versions, described.columns, [*described.outputs, ("prediction_id", "string")]))


@router.get("/models/{name}", dependencies=[Reads], summary="Model metadata", responses=ERRORS)
def model_metadata_served(name: ModelName, registry: RegistryDep, info: ModelInfoDep,
                          settings: SettingsDep) -> JSONResponse:
    """The served version's inputs (one ``BYTES`` tensor per column) and outputs."""
    return model_metadata(name, None, registry, info, settings)


@router.get("/models/{name}/versions/{version}", dependencies=[Reads], summary="Model version metadata", responses=ERRORS)
def model_metadata_version(name: ModelName, version: VersionNumber, registry: RegistryDep, info: ModelInfoDep,
                           settings: SettingsDep) -> JSONResponse:
    return model_metadata(name, version, registry, info, settings)


async def infer(request: Request, target: Target, settings: SettingsDep, predictor: PredictorDep,
                admission: AdmissionDep, info: ModelInfoDep) -> Response:
    async def answer() -> Response:
        parsed = parse_infer_request(await request.body(), request.headers.get("inference-header-content-length"))
        check_rows(parsed.records, settings.max_predict_rows, "GATEWAY_MAX_PREDICT_ROWS")
        done = await predictor.predict(Rows(parsed.records), target, parsed.params)
        version, predictions = done.version, [{**row, "prediction_id": i} for row, i in zip(done.rows, done.ids,
                                                                                        strict=True)]
        try:
            outputs = (await run_in_threadpool(info.get, target.name, version)).outputs
        except NotOurModel:  # a model from elsewhere (mode mlflow): its columns as they come
            outputs = [(key, "double" if isinstance(value, float) else "string")
                       for key, value in (done.rows[0] if done.rows else {}).items()]
        if parsed.params and parsed.params.get(CONFIDENCE_PARAM):
            outputs = [*outputs, *SET_OUTPUTS]
        outputs = [*outputs, ("prediction_id", "string")]  # for POST /feedback
        return Response(infer_response(target.name, version, parsed, predictions, outputs),
                        media_type="application/json", headers={"X-Model-Version": version})

    try:
        return await admitted(request, target.name, admission, settings, answer)
    except ProtocolError as err:
        return protocol_error(err.status, str(err))
    except HTTPException as err:
        return as_protocol_error(err)


INFER = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                   "inputs": {"type": "array", "items": {"type": "object"}},
                   "outputs": {"type": "array", "items": {"type": "object"}}}}}}}}


async def infer_served(name: ModelName, request: Request, settings: SettingsDep, predictor: PredictorDep,
                       admission: AdmissionDep, info: ModelInfoDep) -> Response:
    """One input tensor per column (``BYTES`` for raw cells, numbers accepted, shape ``[n]``); outputs
    ``label``, ``probability``, ``proba_<class>`` and ``prediction_id``. The served version answers."""
    return await infer(request, Target(name), settings, predictor, admission, info)


async def infer_version(name: ModelName, version: VersionNumber, request: Request, settings: SettingsDep,
                        predictor: PredictorDep, admission: AdmissionDep, info: ModelInfoDep) -> Response:
    return await infer(request, Target(name, version=version), settings, predictor, admission, info)


# The hot path, answered as /predict is (see LeanRoute); FastAPI's decorators cannot choose a route class.
for path, endpoint, summary in (("/models/{name}/infer", infer_served, "Inference"),
                                ("/models/{name}/versions/{version}/infer", infer_version, "Inference with a version")):
    router.add_api_route(path, endpoint, methods=["POST"], dependencies=[Reads], summary=summary, openapi_extra=INFER,
                         responses=ERRORS, route_class_override=LeanRoute)
