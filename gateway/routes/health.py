"""Liveness and readiness."""

from __future__ import annotations

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import ModelHttpDep, SettingsDep
from gateway.schemas import Health, ModelRef, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """The gateway process answers."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(settings: SettingsDep, http: ModelHttpDep) -> JSONResponse:
    """The model server answers, and which version it serves; 503 with the reason otherwise."""
    try:
        answer = await http.get(f"{settings.model_server}/status", timeout=settings.model_server_connect_timeout)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as err:
        reason = f"model server unreachable at {settings.model_server}: {type(err).__name__}"
        return JSONResponse(Readiness(status="unavailable", reason=reason).model_dump(), status_code=503)
    if body.get("status") != "serving":
        readiness = Readiness(status="unavailable", follows=body.get("follows"), reason=body.get("reason"))
        return JSONResponse(readiness.model_dump(), status_code=503)
    readiness = Readiness(status="ready", follows=body.get("follows"),
                          model=ModelRef(name=body["model_name"], version=body["version"]))
    return JSONResponse(readiness.model_dump())
