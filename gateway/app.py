"""The gateway: the one public entry point (FastAPI on uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from contract.errors import first_line
from contract.registry import Registry
from contract.exposure import refusals
from contract.settings import Settings, settings_or_exit
from gateway.auth import Authorizer, MlflowPermissions, acting_as_caller, acting_user, document_auth
from gateway.errors import document_error_body, error_for
from gateway.inference_log import InferenceLog
from gateway.jobs import STATUSES, JobStore, MonitorSchedule, TrainingJobRunner
from gateway.model_client import ModelServerClient
from gateway.model_info import ModelInfoCache
from gateway.observability import Admission, JobsCollector, Metrics, RequestContext
from gateway.predictor import Predictor
from gateway.rollouts import Rollouts
from gateway.routes import (
    explain,
    feedback,
    health,
    inference_protocol,
    models,
    monitor,
    predict,
    train,
)
from gateway.routes.health import served_models
from gateway.schemas import unprocessable
from runtime.docs import add_offline_docs
from runtime.logs import run_service
from runtime.metrics import SupervisionCollector
from runtime.processes import settle_heap
from runtime.supervision import Supervisor
from runtime.tasks import cancel

log = logging.getLogger("gateway")


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route answers at this path (Starlette's 405 lists only the first route's)."""
    return [method for method in METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in app.router.routes)]


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_errors(request: Request, exc: StarletteHTTPException) -> Response:
        error_response = error_for(request.url.path)
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request))
            return error_response(405, f"method {request.method} not allowed here; allowed: {allow}",
                                  {"Allow": allow})
        if exc.status_code == 404 and exc.detail == "Not Found":  # no route at all, not a missing resource
            return error_response(404, f"no route {request.method} {request.url.path}; the API is listed at /docs")
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body it cannot decode at all: the same 422 as for bad JSON
            exc = unprocessable(["body"], "body is not valid UTF-8 JSON", "json_invalid")
        if exc.status_code in (204, 304):  # no body allowed
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_errors(request: Request, exc: RequestValidationError) -> Response:
        errors = [{**e, "loc": ["body"], "msg": f"body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])} "
                                                f"(at character {e['loc'][-1]})"}
                  if e.get("type") == "json_invalid" else e for e in exc.errors()]
        return error_for(request.url.path)(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)

    @app.exception_handler(MlflowException)
    async def tracking_errors(request: Request, exc: MlflowException) -> Response:
        error_response = error_for(request.url.path)
        if exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            # GATEWAY_AUTH=mlflow: MLflow's own check of the caller refused what the gateway's (cached) one let by
            return error_response(exc.get_http_status_code(), f"the tracking server refused user "
                                  f"{acting_user()!r}: {first_line(exc, 200)}")
        # The routes turn the caller's mistakes (unknown model, illegal move) into 404/409
        # first; what reaches here is the tracking server failing or gone.
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE,
                              f"tracking server at {settings.tracking_uri} failed: {first_line(exc, 300)}",
                              {"Retry-After": str(settings.retry_after_seconds)})


async def canary_versions(registry: Registry, name: str, alias: str | None) -> tuple[str | None, str | None]:
    """(served version, the version ``alias`` holds) of a model, for the canary watch."""
    def read() -> tuple[str | None, str | None]:
        aliases = {a: str(v) for a, v in registry.model(name).aliases.items()}
        return aliases.get(registry.pairs.serving_alias), aliases.get(alias) if alias else None
    return await asyncio.to_thread(read)


async def bootstrap_model(jobs: TrainingJobRunner, settings: Settings) -> None:
    """GATEWAY_BOOTSTRAP_MODEL: the first start trains and promotes the default model (once the tracking
    server answers), so that a new stack serves, as `make up` does."""
    while True:
        try:
            job = await asyncio.to_thread(jobs.bootstrap, settings.model_name)
        except Exception as err:  # noqa: BLE001 (the tracking server not ready yet, or the job store busy: again)
            # a tracking server still starting is expected; anything else is worth a warning
            level = logging.INFO if isinstance(err, MlflowException) else logging.WARNING
            log.log(level, "bootstrap: waiting for the tracking server: %s", first_line(err, 200))
            await asyncio.sleep(settings.retry_after_seconds)
            continue
        if job:
            log.warning("bootstrap: no version of '%s' yet: training it on the default data (job %s)",
                        settings.model_name, job.id)
        else:
            log.info("bootstrap: '%s' has a version or a job training one: nothing to train", settings.model_name)
        return


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    # the background loops (job runner, inference-log writer, rollback watcher, monitor schedule): restarted
    # if they die, counted on /metrics, named on /ready
    supervisor = Supervisor()
    metrics.add_collector(SupervisionCollector(supervisor.report))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        permissions = None
        if settings.auth_mode == "mlflow":
            acting_as_caller(client, settings)
            permissions = MlflowPermissions(settings.tracking_uri, settings.auth_cache_seconds)
        app.state.authorizer = Authorizer(settings, permissions)
        app.state.registry = Registry(client, settings.serve_alias)
        app.state.model_info = ModelInfoCache(app.state.registry, settings.tracking_uri)
        app.state.jobs = TrainingJobRunner(JobStore(settings.jobs_db), settings, client, supervisor)
        metrics.add_collector(JobsCollector(app.state.jobs.store.count_by_status, STATUSES))
        # One pooled client for every call to the model server: connections are reused.
        app.state.model_client = ModelServerClient(settings, metrics, supervisor)
        app.state.inference_log = InferenceLog(settings, metrics, supervisor) if settings.inference_log else None
        if app.state.inference_log:
            app.state.inference_log.start()
        app.state.rollouts = Rollouts(app.state.registry, settings, metrics, supervisor)
        app.state.predictor = Predictor(settings, app.state.model_client, metrics, app.state.inference_log,
                                        app.state.rollouts)
        watcher = app.state.rollouts.start_watch(lambda name, alias: canary_versions(app.state.registry, name, alias))
        schedule = bootstrap = None
        if settings.training_enabled:
            app.state.jobs.start()
            if settings.bootstrap_model:
                bootstrap = asyncio.create_task(bootstrap_model(app.state.jobs, settings))
            if settings.monitor_every_minutes:
                schedule = MonitorSchedule(app.state.jobs, settings.monitor_every_minutes,
                                           lambda: served_models(app.state.model_client))
                schedule.start()
        settle_heap()
        try:
            yield
        finally:
            if schedule:
                await schedule.stop()
            await cancel(bootstrap)
            if settings.training_enabled:
                app.state.jobs.stop()
            await cancel(watcher)
            await app.state.rollouts.close()
            await app.state.model_client.close()
            if permissions:
                await permissions.http.aclose()
            if app.state.inference_log:
                await app.state.inference_log.stop()

    app = FastAPI(
        title="tabular-classifier gateway",
        description="Predict with the promoted model, train new versions with `mlflow run`, "
        "and move versions through stages and aliases.",
        lifespan=lifespan, docs_url=None, redoc_url=None,
    )
    add_offline_docs(app)
    document_error_body(app)
    document_auth(app, settings)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.supervisor = supervisor
    app.state.admission = Admission(settings.max_pending, metrics)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log)
    install_error_handlers(app, settings)
    for module in (predict, explain, feedback, train, monitor, models, inference_protocol, health):
        app.include_router(module.router)
    return app


def main() -> None:
    settings = settings_or_exit("gateway")
    problems = refusals(settings)
    if problems:
        for problem in problems:
            print(f"gateway: refusing to start: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run_service(create_app, settings, settings.gateway_port)

