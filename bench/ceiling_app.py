"""The apps `bench/ceiling.py` serves: the ceiling (a do-nothing JSON endpoint on the gateway's own stack), and
the real gateway built for an ASGI server other than uvicorn.

`python -m bench.ceiling_app` serves the ceiling exactly as `python -m gateway` serves the gateway
(:func:`runtime.logs.run_service`: uvicorn with its defaults, uvloop and httptools; JSON logs; no uvicorn access
log), on GATEWAY_PORT. :func:`ceiling_app` and :func:`gateway_app` are `granian --factory` targets.
A separate app rather than a route of the gateway: the product gets no route that only a benchmark calls.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Request, Response

from contract.settings import Settings, settings_or_exit
from gateway.app import create_app, install_error_handlers
from gateway.deps import LeanRoute
from gateway.observability import Metrics, RequestContext
from runtime.logs import apply_mlflow_client_defaults, configure_logging, run_service

CEILING_PATH = "/ceiling"
# small, like a one-row answer's envelope; made once, as the gateway makes nothing per request it need not
CEILING_ANSWER = b'{"ok":true}'


def create_ceiling_app(settings: Settings) -> FastAPI:
    """The gateway's request path without its work: the same middleware (request id, body limit, metrics, access
    log), error handlers and lean route class as `/predict`, whose one POST route reads the body and answers a
    constant. What a single-row `/predict` pays before the model, on the same server: its ceiling."""
    metrics = Metrics()
    app = FastAPI(title="gateway ceiling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log)
    install_error_handlers(app, settings)
    router = APIRouter(route_class=LeanRoute)

    @router.post(CEILING_PATH)
    async def ceiling(request: Request) -> Response:
        await request.body()  # read, as /predict reads it: receiving the body is part of the server's work
        return Response(CEILING_ANSWER, media_type="application/json")

    app.include_router(router)
    return app


def served(create: Callable[[Settings], FastAPI], program: str) -> FastAPI:
    """What :func:`runtime.logs.run_service` does before it starts uvicorn, for a server that imports the app:
    the environment's settings (read in the server's worker, when it builds the app), JSON logs, MLflow's
    client defaults."""
    settings = settings_or_exit(program)
    configure_logging(settings.log_level)
    apply_mlflow_client_defaults()
    return create(settings)


def ceiling_app() -> FastAPI:
    """`granian --factory bench.ceiling_app:ceiling_app`."""
    return served(create_ceiling_app, "ceiling")


def gateway_app() -> FastAPI:
    """`granian --factory bench.ceiling_app:gateway_app`: the real gateway, as `python -m gateway` builds it
    (without its refusal to start on a non-loopback host unauthenticated: the benchmark binds 127.0.0.1)."""
    return served(create_app, "gateway")


def main() -> None:
    settings = settings_or_exit("ceiling")
    run_service(create_ceiling_app, settings, settings.gateway_port)


if __name__ == "__main__":
    main()
