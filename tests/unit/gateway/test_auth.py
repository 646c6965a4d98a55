"""The gateway's authentication modes, in process: the rule per mode, credentials, the permission cache.

The tracking server's side (MLflow's basic-auth app, its permissions) is exercised for real in
tests/integration/gateway/test_mlflow_auth.py; here an ASGI app stands in for its one endpoint.
"""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from contract.settings import Settings
from gateway.auth import Authorizer, Caller, MlflowPermissions, basic_credentials

GRANTS = {("reader", "guarded"): "READ", ("editor", "guarded"): "EDIT", ("boss", "guarded"): "MANAGE"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ADMINS = {"root"}  # granted nothing: MLflow's own checks let an admin do anything


def fake_tracking_server(calls: list[tuple[str, str]]) -> FastAPI:
    app = FastAPI()

    def authenticated(request: Request, username: str) -> str | None:
        user, _, password = base64.b64decode(request.headers["authorization"].split()[1]).decode().partition(":")
        return user if password == f"{user}-pw" and user == username else None

    @app.get("/api/3.0/mlflow/users/permissions/get")
    def permission(request: Request, username: str, resource_type: str, resource_id: str):  # noqa: ANN202
        if not (user := authenticated(request, username)):
            return PlainTextResponse("You are not authenticated.", status_code=401)
        calls.append((user, resource_id))
        return JSONResponse({"permission": GRANTS.get((user, resource_id), "NO_PERMISSIONS")})

    @app.get("/api/2.0/mlflow/users/get")
    def user(request: Request, username: str):  # noqa: ANN202
        if not (user := authenticated(request, username)):
            return PlainTextResponse("You are not authenticated.", status_code=401)
        calls.append((user, "is admin?"))
        return JSONResponse({"user": {"username": user, "is_admin": user in ADMINS}})

    return app


def authorizer(ttl: float = 60.0) -> tuple[Authorizer, list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake_tracking_server(calls)), base_url="http://t")
    settings = Settings(_env_file=None, auth="mlflow", mlflow_admin_password="x" * 20, mlflow_tracking_uri="http://t")
    return Authorizer(settings, MlflowPermissions("http://t", ttl, http)), calls


def status_of(check) -> int:  # noqa: ANN001
    try:
        asyncio.run(check)
    except HTTPException as err:
        return err.status_code
    return 200


def test_each_level_needs_that_mlflow_permission_or_more_and_a_refusal_names_it():
    auth, _ = authorizer()
    table = {}
    for user in ("reader", "editor", "boss", "stranger"):
        for level in ("READ", "EDIT", "MANAGE"):
            table[user, level] = status_of(auth.check(basic(user, f"{user}-pw"), "guarded", level))
    assert table == {("reader", "READ"): 200, ("reader", "EDIT"): 403, ("reader", "MANAGE"): 403,
                     ("editor", "READ"): 200, ("editor", "EDIT"): 200, ("editor", "MANAGE"): 403,
                     ("boss", "READ"): 200, ("boss", "EDIT"): 200, ("boss", "MANAGE"): 200,
                     ("stranger", "READ"): 403, ("stranger", "EDIT"): 403, ("stranger", "MANAGE"): 403}
    with pytest.raises(HTTPException) as refused:
        asyncio.run(auth.check(basic("reader", "reader-pw"), "guarded", "MANAGE"))
    assert refused.value.detail == "user 'reader' needs MANAGE on registered model 'guarded' (has READ)"
    # a model that does not exist yet: any known user may ask to create it (MLflow decides at registration)
    assert status_of(auth.check(basic("stranger", "stranger-pw"), "brand-new", "EDIT", creating=True)) == 200
    assert status_of(auth.check(basic("stranger", "wrong"), "brand-new", "EDIT", creating=True)) == 401


def test_no_or_bad_credentials_are_401_with_a_basic_challenge():
    auth, _ = authorizer()
    for header in (None, "Bearer abc", "Basic !!!", basic("reader", "wrong"), "Basic " + base64.b64encode(b"nocolon").decode()):
        with pytest.raises(HTTPException) as refused:
            asyncio.run(auth.check(header, "guarded", "READ"))
        assert refused.value.status_code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")


def test_a_checked_permission_is_trusted_for_the_cache_time_only_and_per_password():
    auth, calls = authorizer(ttl=60)
    for _ in range(3):
        asyncio.run(auth.check(basic("reader", "reader-pw"), "guarded", "READ"))
    assert calls == [("reader", "is admin?"), ("reader", "guarded")]  # asked once each
    assert status_of(auth.check(basic("reader", "other-pw"), "guarded", "READ")) == 401  # not the cached answer
    fresh, calls = authorizer(ttl=0)
    for _ in range(2):
        asyncio.run(fresh.check(basic("reader", "reader-pw"), "guarded", "READ"))
    assert len(calls) == 4


def test_mlflow_admins_may_do_anything_as_mlflows_own_checks_let_them():
    auth, calls = authorizer()
    for model in ("guarded", "other"):
        assert status_of(auth.check(basic("root", "root-pw"), model, "MANAGE")) == 200
    assert calls == [("root", "is admin?")]  # no grant looked up, the answer cached across models
    assert status_of(auth.check(basic("root", "wrong"), "guarded", "READ")) == 401


def test_token_mode_opens_reads_and_guards_changes_and_none_mode_opens_everything():
    token = Authorizer(Settings(_env_file=None, api_token="t" * 20))
    assert status_of(token.check(None, "m", "READ")) == 200
    assert status_of(token.check(None, "m", "EDIT")) == 401
    assert status_of(token.check("Bearer nope", "m", "MANAGE")) == 401
    assert status_of(token.check("Bearer " + "t" * 20, "m", "MANAGE")) == 200
    open_ = Authorizer(Settings(_env_file=None))
    assert status_of(open_.check(None, "m", "MANAGE")) == 200


def test_basic_credentials_keep_a_colon_in_the_password_and_hide_it_in_repr():
    caller = basic_credentials(basic("ann", "p:a:ss"))
    assert caller == Caller("ann", "p:a:ss") and "p:a:ss" not in repr(caller)


@pytest.mark.parametrize(("mode", "scheme", "guarded"), [
    ("none", None, set()),
    ("token", "token", {("post", "/train"), ("put", "/models/{name}/aliases/{alias}"), ("delete", "/train/{job_id}")}),
    ("mlflow", "mlflowUser", {("post", "/train"), ("post", "/predict"), ("get", "/models/{name}"),
                              ("post", "/v2/models/{name}/infer"), ("get", "/train")}),
])
def test_the_openapi_document_declares_the_authentication_of_the_mode_only(tmp_path, mode, scheme, guarded):
    from gateway.app import create_app

    settings = Settings(_env_file=None, stack_dir=tmp_path, auth=mode, api_token="t" * 20 if mode == "token" else None,
                        mlflow_admin_password="x" * 20)
    document = create_app(settings).openapi()
    assert list(document.get("components", {}).get("securitySchemes", {})) == ([scheme] if scheme else [])
    secured = {(m, p) for p, ops in document["paths"].items() for m, op in ops.items() if op.get("security")}
    assert guarded <= secured
    if mode == "token":  # reads are open with a token: declaring one there would be a lie clients act on
        assert ("post", "/predict") not in secured and ("get", "/models/{name}") not in secured
    assert ("get", "/health") not in secured and ("get", "/v2/health/ready") not in secured
