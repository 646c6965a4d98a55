"""LeanRoute: the routes that predict answer as FastAPI would, without its per-request dependency solving."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response

from contract.settings import Settings
from gateway.app import install_error_handlers
from gateway.auth import Authorizer
from gateway.deps import LeanRoute, SettingsDep, app_state, requires
from gateway.observability import Metrics, RequestContext
from gateway.schemas import ModelName, VersionQuery
from tests.unit.gateway.test_observability import call

TOKEN = "t" * 32
Edits = Depends(requires("EDIT", "path"))
ThingDep = Annotated[str, Depends(app_state("thing"))]


async def endpoint(name: ModelName, request: Request, settings: SettingsDep, thing: ThingDep,
                   version: VersionQuery = None) -> Response:
    return Response(f"{name} {version} {thing} {settings.model_name} {request.method}".encode())


def app_with(route_class: type, tmp_path) -> FastAPI:
    """The same endpoint and dependencies behind a LeanRoute or FastAPI's own APIRoute."""
    settings = Settings(_env_file=None, stack_dir=tmp_path, api_token=TOKEN, model_name="default")
    app = FastAPI()
    app.add_middleware(RequestContext, metrics=Metrics(), max_body_bytes=1000)
    install_error_handlers(app, settings)
    app.state.settings, app.state.thing = settings, "the thing"
    app.state.authorizer = Authorizer(settings, None)
    router = APIRouter(route_class=route_class)
    router.add_api_route("/models/{name}/act", endpoint, methods=["POST"], dependencies=[Edits])
    app.include_router(router)
    return app


BEARER = {"Authorization": f"Bearer {TOKEN}"}
CALLS = {
    "answered": ("/models/census/act?version=3", BEARER),
    "no version": ("/models/census/act", BEARER),
    "bad version": ("/models/census/act?version=x", BEARER),
    "bad name": ("/models/-no/act", BEARER),
    "bad name and version": ("/models/-no/act?version=x", BEARER),
    "no token": ("/models/census/act", {}),
    "no token, bad version": ("/models/census/act?version=x", {}),
}


@pytest.mark.parametrize("case", CALLS)
def test_a_lean_route_answers_what_fastapis_own_route_answers(case, tmp_path):
    path, headers = CALLS[case]
    lean = call(app_with(LeanRoute, tmp_path), "POST", path, headers=headers)
    own = call(app_with(APIRouter().route_class, tmp_path), "POST", path, headers=headers)
    assert (lean.status_code, lean.content) == (own.status_code, own.content)
    assert lean.status_code == {"answered": 200, "no version": 200, "no token": 401,
                                "no token, bad version": 401}.get(case, 422)
    if case == "answered":  # the state, the parameters and the request reached the endpoint
        assert lean.text == "census 3 the thing default POST"


def test_a_lean_route_is_documented_as_fastapis_own_route_is(tmp_path):
    lean = app_with(LeanRoute, tmp_path).openapi()
    own = app_with(APIRouter().route_class, tmp_path).openapi()
    assert lean == own and lean["paths"]["/models/{name}/act"]["post"]["parameters"]


async def other() -> int:
    return 1


async def with_header(x_thing: Annotated[str, Header()]) -> Response:
    return Response()


async def with_other(value: Annotated[int, Depends(other)]) -> Response:
    return Response()


def test_a_dependency_a_lean_route_cannot_resolve_is_refused_when_the_route_is_made():
    for made, words in ((with_header, "path and query parameters"), (with_other, "neither app_state nor requires")):
        router = APIRouter(route_class=LeanRoute)
        with pytest.raises(TypeError, match=words):
            router.add_api_route("/x", made, methods=["POST"])
