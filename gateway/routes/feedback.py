"""Ground truth: the true labels of predictions the gateway answered, sent back by their id."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from contract import inference_log as store
from contract.errors import first_line
from gateway.deps import EditsPerModel, InferenceLogDep, ModelInfoDep, SettingsDep
from gateway.errors import error_response
from gateway.model_info import NotOurModel
from gateway.schemas import FeedbackAccepted, FeedbackRequest

router = APIRouter(tags=["feedback"])


def unavailable(why: str, settings: SettingsDep) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the inference log is unavailable: {why}",
                         headers={"Retry-After": str(settings.retry_after_seconds)})


async def refusal(request: Request, model: str) -> str | None:
    """Why the caller may not label ``model``'s answers, or None."""
    try:
        await request.app.state.authorizer.check(request.headers.get("authorization"), model, "EDIT")
    except HTTPException as err:
        return str(err.detail)
    return None


@router.post("/feedback", response_model=FeedbackAccepted, dependencies=[EditsPerModel], responses={
    401: {"description": "token required"},
    422: {"description": "some items name an unknown prediction id or a label that is not a class of the model "
                         "that answered: listed one by one under detail; the other items are stored (accepted)"},
    503: {"description": "the inference log is off (INFERENCE_LOG_URI=off) or its store is down"}})
async def feedback(body: FeedbackRequest, inference_log: InferenceLogDep, info: ModelInfoDep,
                   settings: SettingsDep, request: Request) -> Any:
    """Store the true label of answered predictions. Sending an id again replaces its label (the last one
    wins). Items that cannot be stored are listed in a 422 beside how many were accepted."""
    if inference_log is None:
        raise unavailable("it is off (INFERENCE_LOG_URI=off)", settings)
    if not await inference_log.flush():  # so that the caller's latest predictions are in the store
        raise unavailable("its store does not answer", settings)
    try:
        engine = await inference_log.engine()
        found = await run_in_threadpool(store.answered, engine, [item.id for item in body.labels])
    except Exception as err:  # noqa: BLE001 (the store went down between the flush and here)
        raise unavailable(first_line(err, 200), settings) from None
    accepted: dict[str, str] = {}
    problems = []
    refusals: dict[str, str | None] = {}
    for i, item in enumerate(body.labels):
        if item.id not in found:
            problems.append({"loc": ["body", "labels", i, "id"], "msg": f"no answered prediction has id {item.id!r}",
                             "type": "unknown_id"})
            continue
        name, version = found[item.id]
        if name not in refusals:  # a label is EDIT on the model that answered
            refusals[name] = await refusal(request, name)
        if refusals[name]:
            problems.append({"loc": ["body", "labels", i, "id"], "type": "forbidden", "msg": refusals[name]})
            continue
        try:
            classes = (await run_in_threadpool(info.get, name, version)).classes
        except NotOurModel:
            classes = []
        match = [c for c in classes if str(c) == str(item.label)]
        if not match:
            problems.append({"loc": ["body", "labels", i, "label"], "type": "unknown_class",
                             "msg": f"{item.label!r} is not a class of '{name}' version {version} "
                                    f"(classes: {', '.join(map(str, classes))})"})
            continue
        accepted[item.id] = orjson.dumps(match[0]).decode()
    if accepted:
        try:
            await run_in_threadpool(store.store_feedback, engine, accepted)
        except Exception as err:  # noqa: BLE001
            raise unavailable(first_line(err, 200), settings) from None
    if problems:
        return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, problems, accepted=len(accepted))
    return FeedbackAccepted(accepted=len(accepted))
