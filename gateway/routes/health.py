"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contract.errors import first_line
from contract.registry import Registry
from gateway.deps import MetricsDep, ModelClientDep, RegistryDep, app_state
from gateway.model_client import ModelServerClient, served
from gateway.observability import Metrics
from gateway.schemas import Health, ModelRef, Readiness
from runtime.supervision import RESTARTING, Supervisor

router = APIRouter(tags=["health"])
log = logging.getLogger("gateway.health")


@router.get("/health", response_model=Health)
def health() -> Health:
    """The gateway process answers."""
    return Health(status="ok")


async def served_models(model: ModelServerClient) -> list[str]:
    """The models the model server serves now (under the serving policy)."""
    body = await model.status()
    if not isinstance(body, dict):
        raise RuntimeError(body)
    return [m["name"] for m in served(body)]


SupervisorDep = Annotated[Supervisor, Depends(app_state("supervisor"))]


def troubled_loops(supervisor: Supervisor, model_server: dict[str, Any] | str) -> dict[str, Any] | None:
    """The background loops that have died, the gateway's and the model server's (from its /status), or None."""
    loops = supervisor.troubled()
    if isinstance(model_server, dict):
        loops |= {f"model-server/{name}": entry for name, entry in (model_server.get("background") or {}).items()
                  if entry.get("restarts") or entry.get("state") == RESTARTING}
    return loops or None


def readiness_body(readiness: Readiness) -> dict[str, Any]:
    """The body, with ``background`` only when a loop has died (the other fields as they always were)."""
    return readiness.model_dump(exclude={"background"} if readiness.background is None else None)


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(model: ModelClientDep, metrics: MetricsDep, supervisor: SupervisorDep) -> JSONResponse:
    """The model server answers, and which version it serves; 503 with the reason otherwise. A background loop
    that died is named under ``background`` (it is restarted; the status does not change)."""
    body = await model.status()
    background = troubled_loops(supervisor, body)
    if isinstance(body, str):
        metrics.set_served(None, None)
        readiness = Readiness(status="unavailable", reason=body, background=background)
        return JSONResponse(readiness_body(readiness), status_code=503)
    if body.get("status") != "serving":
        metrics.set_served(None, None)
        readiness = Readiness(status="unavailable", follows=body.get("follows"), reason=body.get("reason"),
                              background=background)
        return JSONResponse(readiness_body(readiness), status_code=503)
    metrics.set_served(body["model_name"], body["version"])
    readiness = Readiness(status="ready", follows=body.get("follows"),
                          model=ModelRef(name=body["model_name"], version=body["version"]), background=background)
    return JSONResponse(readiness_body(readiness))


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def prometheus_metrics(model: ModelClientDep, metrics: MetricsDep, registry: RegistryDep) -> Response:
    """Requests by route and status, latencies, model-server errors, batch sizes, jobs, the served and loaded
    versions, and predictions by model and version."""
    body = await model.status()
    serving = isinstance(body, dict) and body.get("status") == "serving"
    metrics.set_served(body["model_name"] if serving else None, body["version"] if serving else None)
    loaded = body.get("loaded", []) if isinstance(body, dict) else []
    metrics.set_loaded((entry["name"], entry["version"]) for entry in loaded)
    versions = [(m["name"], m["version"]) for m in served(body)] if isinstance(body, dict) else []
    await monitoring_gauges(metrics, registry, versions)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


_monitoring_cache: dict[str, Any] = {"at": 0.0, "served": []}
MONITORING_REFRESH_SECONDS = 30.0


async def monitoring_gauges(metrics: Metrics, registry: Registry, served: list[tuple[str, str]]) -> None:
    """The figures of each served version (gateway/observability.py: VERSION_FIGURES), from the tags training
    and the monitor step set; read from the registry at most every 30 s, whatever the scrape rate."""
    if served == _monitoring_cache["served"] and time.monotonic() - _monitoring_cache["at"] < MONITORING_REFRESH_SECONDS:
        return
    _monitoring_cache.update(at=time.monotonic(), served=served)

    def read() -> list[tuple[str, str, dict[str, str]]]:
        found = []
        for name, version in served:
            try:
                found.append((name, version, registry.version(name, version).tags))
            except Exception as err:  # noqa: BLE001 (a registry hiccup: this version's gauges wait for the next read)
                log.debug("monitoring gauges of %s version %s not read: %s", name, version, first_line(err, 300))
        return found

    metrics.set_version_figures(await run_in_threadpool(read))
