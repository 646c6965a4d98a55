"""The gateway: the one public entry point (FastAPI on uvicorn)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from mlflow import MlflowClient

from gateway.jobs import JobStore, TrainingJobRunner
from gateway.model_client import ModelServerClient
from gateway.registry import Registry
from gateway.routes import health, models, predict, train
from gateway.settings import Settings, get_settings


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        app.state.settings = settings
        app.state.registry = Registry(client)
        app.state.jobs = TrainingJobRunner(JobStore(settings.jobs_db), settings, client)
        # One pooled client for every call to the model server: connections are reused.
        app.state.model_client = ModelServerClient(settings)
        app.state.model_client.start()
        app.state.jobs.start()
        # MLflow and pandas leave ~10^6 long-lived objects; a full GC pass over
        # them stalls every request for tens of ms. Park them out of the GC's way.
        gc.freeze()
        try:
            yield
        finally:
            app.state.jobs.stop()
            await app.state.model_client.close()

    app = FastAPI(
        title="tabular-classifier gateway",
        description="Predict with the promoted model, train new versions with `mlflow run`, "
        "and move versions through stages and aliases.",
        lifespan=lifespan,
    )
    for module in (predict, train, models, health):
        app.include_router(module.router)
    return app


def main() -> None:
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.gateway_port, log_level="info")


if __name__ == "__main__":
    main()
