"""The model server's HTTP service: ``python -m model_server``.

It speaks MLflow's scoring protocol, so a client of ``mlflow models serve``
(``mlflow.pyfunc.scoring_server.client.ScoringServerClient``) works against it
as it is:

- ``POST /invocations``: the served version of ``MODEL_NAME`` (the one holding
  ``SERVE_ALIAS``, or newest in ``SERVE_STAGE``), followed as it changes;
- ``POST /models/{name}/invocations``: the served version of any registered
  model (``?alias=A`` for the version holding another alias), followed from its
  first request on;
- ``POST /models/{name}/versions/{version}/invocations``: a given version;
- ``GET /ping`` (200 while ``MODEL_NAME`` is served), ``GET /health``, ``GET /version``;
- ``GET /status``: what is served and loaded, or why nothing is;
- ``GET /metrics``: the same for Prometheus (versions loaded, calls in flight, the spare worker, the follower).

A version not loaded yet is loaded on its first request: 503 with
``Retry-After`` meanwhile, never a hang. Answers carry the version as
``X-Model-Name``/``X-Model-Version``; an unknown model or alias is a 404. The
bodies are passed to the version's backend untouched (a Zstandard-packed one,
``Content-Encoding: zstd``, as the gateway sends big bodies, is unpacked by the
worker): each loaded version runs in a process of its own
(:mod:`model_server.backends`), with its own logged code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import mlflow
from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from mlflow import MlflowClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from contract.errors import first_line
from contract.names import ALIAS_PATTERN, MODEL_NAME_PATTERN, VERSION_PATTERN, valid_alias
from contract.predict_body import MAX_ROWS_HEADER
from contract.registry import NotFound, Registry
from contract.settings import Settings, settings_or_exit
from model_server.backends import Backend, BackendUnavailable, ChildProcesses, Launcher
from model_server.follower import LOOP_NAME as FOLLOWER_LOOP
from model_server.follower import Pair, RegistryFollower
from model_server.pool import Failed, Loading, ModelPool
from model_server.protocol import ProtocolError, check_encoding, contract_rows, error_body
from runtime.docs import add_offline_docs
from runtime.logs import run_service
from runtime.metrics import LoadedVersionsCollector, SupervisionCollector
from runtime.processes import settle_heap
from runtime.supervision import Supervisor

log = logging.getLogger("model_server")

ModelName = Annotated[str, PathParam(pattern=MODEL_NAME_PATTERN)]
Version = Annotated[str, PathParam(pattern=VERSION_PATTERN)]
# checked by hand (valid_alias): pydantic's regex engine has no look-ahead, which the reserved names need
Alias = Annotated[str | None, Query(max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN},
                                    description="another alias than the serving one")]


def unavailable(message: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(error_body("MODEL_UNAVAILABLE", message), status_code=503, media_type="application/json",
                    headers=headers)


def not_found(message: str) -> Response:
    return Response(error_body("RESOURCE_DOES_NOT_EXIST", message), status_code=404, media_type="application/json")


class ModelServer:
    """The pool of loaded versions, the follower of the registry, and how a request reaches a backend."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.model_server_timeout, connect=2.0))
        self.socket_dir = Path(tempfile.mkdtemp(prefix="model-server-"))
        self.children = ChildProcesses(settings.stack_dir / "run" / f"backends-{settings.model_server_port}.pids")
        self.launcher = Launcher(settings, self.children, self.socket_dir, self.http)
        self.pool = ModelPool(self.launcher.start, settings.model_server_max_loaded, settings.drain_seconds,
                              settings.model_server_timeout)
        self.registry = Registry(MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri),
                                 settings.serve_alias)
        serving = (f"alias '{settings.serve_alias}'" if settings.serve_follows == "alias"
                   else f"stage '{settings.serve_stage}'")
        self.follows = (f"alias:{settings.serve_alias}" if settings.serve_follows == "alias"
                        else f"stage:{settings.serve_stage}")
        self.default: Pair = (settings.model_name, None)
        self.supervisor = Supervisor()
        self.follower = RegistryFollower(self.pool, self.desired_version, serving, settings.registry_poll_seconds,
                                         self.default, self.supervisor)
        self.follower.follow(self.default)

    def desired_version(self, name: str, alias: str | None) -> str | None:
        s = self.settings
        if alias is None:
            return self.registry.served_version(name, s.serve_follows, s.serve_alias, s.serve_stage)
        return self.registry.served_version(name, "alias", alias, s.serve_stage)

    async def run(self) -> None:
        try:  # once, not in the supervised loop: a restarted follower must keep this server's own backends
            await asyncio.to_thread(self.children.reap_orphans)
        except Exception as err:  # noqa: BLE001 (a leftover backend costs memory, not service)
            log.warning("could not stop the backends a previous model server left: %s", first_line(err, 300))
        self.launcher.keep_spare()
        self.pool.background(self.follow_rollouts())  # beside the follower: an unreachable registry holds up neither
        await self.supervisor.task(FOLLOWER_LOOP, self.follower.run)

    async def follow_rollouts(self) -> None:
        """The versions in a rollout are targets too: followed and loaded from the start, before their first
        request. Asked again each poll until the registry answers (meanwhile they load at their first request)."""
        while True:
            try:
                pairs = await asyncio.to_thread(self.registry.rollout_pairs)
                break
            except Exception as err:  # noqa: BLE001 (tried again next poll)
                log.warning("could not list the models in a rollout: %s", first_line(err, 300))
                await asyncio.sleep(self.settings.registry_poll_seconds)
        for name, alias in pairs:
            for pair in ((name, None), (name, alias)):
                self.follow(pair)

    async def close(self) -> None:
        try:
            await self.pool.close()
        finally:
            await asyncio.to_thread(self.launcher.close_spare)
        await self.http.aclose()
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()

    def loaded(self) -> list[dict[str, Any]]:
        return [{"name": name, **backend.describe()} for (name, _), backend in list(self.pool.loaded.items())]

    def status(self) -> dict[str, object]:
        served = self.follower.follow(self.default)
        return {
            **{k: v for k, v in served.describe().items() if k not in ("name", "alias")},
            "model_name": served.name,
            "follows": self.follows,
            "mode": self.settings.model_server_mode,
            "models": [f.describe() for f in self.follower.pairs.values()],
            "loaded": self.loaded(),
            "spare": self.launcher.spare_pid(),
            "background": self.supervisor.report(),  # the follower loop: state, restarts, last error
        }

    async def forward(self, backend: Backend, request: Request) -> Response:
        try:
            encoding = check_encoding(request.headers.get("content-encoding", ""))
            # the gateway's contract for a body it passed on unread, checked by the backend before scoring
            max_rows = contract_rows(request.headers.get(MAX_ROWS_HEADER))
        except ProtocolError as err:
            return Response(err.body(), status_code=err.status, media_type=err.content_type)
        backend.in_flight += 1
        try:
            reply = await backend.invoke(await request.body(), request.headers.get("content-type", "application/json"),
                                         encoding, max_rows)
        except BackendUnavailable as err:
            return unavailable(str(err))
        finally:
            backend.in_flight -= 1
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type,
                        headers={"X-Model-Name": backend.name, "X-Model-Version": backend.version})

    async def served(self, pair: Pair, request: Request) -> Response:
        """The request answered by the version ``pair`` names, following it from now on if it is new."""
        followed = self.follower.followed(pair)
        if followed is None:
            name, alias = pair
            try:
                version = await asyncio.to_thread(self.desired_version, name, alias)
            except NotFound as err:
                return not_found(str(err))
            except Exception as err:  # noqa: BLE001 (the registry is down: nothing new can be served)
                return unavailable(f"registry unreachable: {first_line(err, 200)}", self.settings.retry_after_seconds)
            if version is None and alias is not None:
                return not_found(f"model '{name}' has no alias '{alias}'")
            followed = self.follower.follow(pair)
            loaded = self.pool.loaded.get((name, version)) if version is not None else None
            if loaded is not None and loaded.alive:
                await self.follower.reconcile(pair)  # another alias of a loaded version: no wait
            else:
                self.pool.background(self.follower.reconcile(pair))
            if version is not None and not followed.serving:
                return unavailable(f"loading version {version} of '{name}'; retry shortly",
                                   self.settings.retry_after_seconds)
        if followed.missing and pair != self.default:
            return not_found(followed.reason)
        backend = followed.backend
        if backend is None or not backend.alive:
            loading = followed.reason.startswith("loading")
            reason = (followed.reason if backend is None
                      else f"the backend of version {backend.version} is down; restarting it")
            return unavailable(reason, self.settings.retry_after_seconds if loading or backend else None)
        backend.last_used = time.monotonic()
        return await self.forward(backend, request)

    def follow(self, pair: Pair) -> dict[str, object]:
        """Follow ``pair`` from now on and start serving what it names now, before any request for it."""
        followed = self.follower.follow(pair)
        self.pool.background(self.follower.reconcile(pair))
        return followed.describe()

    async def version(self, name: str, version: str, request: Request) -> Response:
        if (name, version) not in self.pool.loaded:  # before loading it: does it exist?
            try:
                await asyncio.to_thread(self.registry.version, name, version)
            except NotFound as err:
                return not_found(str(err))
            except Exception as err:  # noqa: BLE001
                return unavailable(f"registry unreachable: {first_line(err, 200)}", self.settings.retry_after_seconds)
        found = self.pool.lookup((name, version))
        if isinstance(found, Loading):
            return unavailable(f"loading version {version} of '{name}'; retry shortly",
                               self.settings.retry_after_seconds)
        if isinstance(found, Failed):
            return unavailable(found.reason)
        return await self.forward(found, request)


def create_app(settings: Settings) -> FastAPI:
    server = ModelServer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(server.run())
        settle_heap()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await server.close()

    app = FastAPI(title="tabular-classifier model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="MLflow's scoring protocol for the registered versions; see model_server/app.py.")
    add_offline_docs(app)

    @app.get("/status")
    def status() -> dict[str, object]:
        return server.status()

    registry = CollectorRegistry(auto_describe=True)
    registry.register(SupervisionCollector(server.supervisor.report, prefix="model_server"))
    registry.register(LoadedVersionsCollector(server.loaded, server.launcher.spare_pid))

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics: the versions loaded, calls in flight, the spare worker, the follower loop."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ping")
    def ping() -> Response:
        body = server.status()
        return JSONResponse(body, status_code=200 if body["status"] == "serving" else 503)

    @app.get("/health")
    def health() -> Response:
        return ping()

    @app.get("/version")
    def version() -> Response:
        return Response(mlflow.__version__, media_type="text/plain")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        return await server.served(server.default, request)

    @app.post("/models/{name}/invocations")
    async def model_invocations(name: ModelName, request: Request, alias: Alias = None) -> Response:
        if alias is not None and not valid_alias(alias):
            return Response(error_body("INVALID_PARAMETER_VALUE", f"alias {alias!r} is not a valid alias name"),
                            status_code=400, media_type="application/json")
        return await server.served((name, alias), request)

    @app.post("/models/{name}/follow", status_code=202)
    async def follow(name: ModelName, alias: Alias = None) -> Response:
        """Load what ``name``'s serving policy (or ``alias``) names now, and follow it: the gateway says so as
        a version becomes a target (an alias or stage moved, a promotion, a rollback, a canary or a shadow),
        so its first request finds it loaded instead of waiting for the next registry poll and a load."""
        if alias is not None and not valid_alias(alias):
            return Response(error_body("INVALID_PARAMETER_VALUE", f"alias {alias!r} is not a valid alias name"),
                            status_code=400, media_type="application/json")
        return JSONResponse(server.follow((name, alias)), status_code=202)

    @app.post("/models/{name}/versions/{version}/invocations")
    async def version_invocations(name: ModelName, version: Version, request: Request) -> Response:
        return await server.version(name, version, request)

    return app


def main() -> None:
    settings = settings_or_exit("model server")
    run_service(create_app, settings, settings.model_server_port)
