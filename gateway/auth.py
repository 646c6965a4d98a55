"""Who may call what: the gateway's three authentication modes (``GATEWAY_AUTH``).

- ``none``: anyone (allowed on loopback only, contract/exposure.py);
- ``token``: one shared bearer token for every route that changes something; reads are open;
- ``mlflow``: callers are the tracking server's users (HTTP Basic), and MLflow's permission on the
  registered model decides, per route: READ to predict and read, EDIT to train, send feedback and
  monitor, MANAGE to move stages, aliases and traffic. A checked caller is trusted for
  ``GATEWAY_AUTH_CACHE_SECONDS`` (so a revoked permission is out within that time), and the
  registry calls a request makes carry the caller's credentials, so MLflow's own checks apply.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import FastAPI, HTTPException, status
from mlflow import MlflowClient
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.tracking._model_registry.client import ModelRegistryClient
from mlflow.utils.rest_utils import MlflowHostCreds

from contract.settings import Settings
from gateway.errors import error_for, protocol_error
from runtime.docs import amend_openapi

Level = Literal["READ", "EDIT", "MANAGE"]
# MLflow's permissions, weakest first (mlflow.server.auth.permissions); what it does not name ranks 0
RANKS = {"NO_PERMISSIONS": 0, "DENY": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
REALM = 'Basic realm="tabular-classifier", charset="UTF-8"'
TOKEN_SCHEME, USER_SCHEME = "token", "mlflowUser"  # the OpenAPI security schemes of the two modes
CACHE_ENTRIES = 10_000
# the auth app's answer to "what may this user do on that resource" (what its own checks resolve)
PERMISSION_PATH = "/api/3.0/mlflow/users/permissions/get"
USER_PATH = "/api/2.0/mlflow/users/get"  # is_admin: a user may read their own
ADMIN_KEY = ""  # the cache entry of "is this caller an admin" (no model is named "")


@dataclass(frozen=True)
class Caller:
    username: str
    password: str = field(repr=False)


# The caller of the request being served; read by the registry client's credentials (below).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


def unauthorized(why: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=why, headers={"WWW-Authenticate": REALM})


def basic_credentials(header: str | None) -> Caller:
    """The caller of an ``Authorization: Basic ...`` header; 401 without one that decodes."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise unauthorized("credentials required: HTTP Basic with an MLflow user (GATEWAY_AUTH=mlflow)")
    try:
        username, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized("the Basic credentials do not decode") from None
    if not colon or not username:
        raise unauthorized("the Basic credentials do not decode")
    return Caller(username, password)


class MlflowPermissions:
    """A caller's permission on a registered model, as the tracking server's auth app resolves it (the
    same answer its own checks would give), cached for ``ttl`` seconds a (user, password, model)."""

    def __init__(self, tracking_uri: str, ttl: float, http: httpx.AsyncClient | None = None):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.ttl = ttl
        self.http = http or httpx.AsyncClient(timeout=10)
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(caller: Caller, model: str) -> tuple[str, str, str]:
        # the password only as a digest: a memory dump shows no credential
        return caller.username, hashlib.sha256(caller.password.encode()).hexdigest(), model

    async def permission(self, caller: Caller, model: str) -> str:
        """READ, EDIT, MANAGE or NO_PERMISSIONS; MANAGE for MLflow's admins, whom its own checks let do
        anything (its permission endpoint answers for grants only)."""
        if await self._cached(caller, ADMIN_KEY, self._ask_is_admin) == "admin":
            return "MANAGE"
        return await self._cached(caller, model, self._ask_permission)

    async def _cached(self, caller: Caller, model: str, ask: Callable[[Caller, str], Awaitable[str]]) -> str:
        key, now = self._key(caller, model), time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
        answer = await ask(caller, model)
        with self._lock:
            self._cache[key] = (now + self.ttl, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return answer

    async def _get(self, caller: Caller, path: str, params: dict[str, str]) -> dict:
        answer = await self.http.get(f"{self.tracking_uri}{path}", params=params,
                                     auth=(caller.username, caller.password))
        if answer.status_code == status.HTTP_401_UNAUTHORIZED:
            raise unauthorized(f"the tracking server does not know user {caller.username!r} with that password")
        if answer.status_code != status.HTTP_200_OK:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"},
                                detail=f"the tracking server could not check permissions: {answer.status_code} "
                                       f"{answer.text[:200]}")
        return answer.json()

    async def _ask_is_admin(self, caller: Caller, _: str) -> str:
        user = await self._get(caller, USER_PATH, {"username": caller.username})
        return "admin" if user.get("user", {}).get("is_admin") else "user"

    async def _ask_permission(self, caller: Caller, model: str) -> str:
        answer = await self._get(caller, PERMISSION_PATH, {"username": caller.username,
                                                           "resource_type": "registered_model", "resource_id": model})
        return str(answer.get("permission", "NO_PERMISSIONS"))


class Authorizer:
    """The one rule of the three modes; routes ask it for a level on a model."""

    def __init__(self, settings: Settings, permissions: MlflowPermissions | None = None):
        self.settings = settings
        self.permissions = permissions

    async def check(self, authorization: str | None, model: str | None, level: Level,
                    creating: bool = False) -> Caller | None:
        """The caller, when ``level`` on ``model`` is theirs; 401/403 otherwise. ``creating``: the model does
        not exist yet (a first /train of it), so any authenticated user may ask, and MLflow's own rule for
        creating registered models decides when the job registers it."""
        mode = self.settings.auth_mode
        if mode == "none":
            return None
        if mode == "token":
            if level == "READ":
                return None
            token = self.settings.api_token or ""
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
                raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                    detail="missing or wrong bearer token (Authorization: Bearer <GATEWAY_API_TOKEN>)",
                                    headers={"WWW-Authenticate": "Bearer"})
            return None
        caller = basic_credentials(authorization)
        assert self.permissions is not None
        if model is None:  # routes that check per model themselves: the credentials only
            await self.permissions.permission(caller, self.settings.model_name)
            return caller
        has = await self.permissions.permission(caller, model)
        if RANKS.get(has, 0) < RANKS[level] and not creating:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail=f"user {caller.username!r} needs {level} on registered model {model!r} "
                                       f"(has {has})")
        return caller


    async def allows(self, authorization: str | None, model: str, level: Level) -> bool:
        """Whether the request's caller may do ``level`` on ``model`` (401 for credentials not accepted)."""
        try:
            await self.check(authorization, model, level)
        except HTTPException as refused:
            if refused.status_code == status.HTTP_403_FORBIDDEN:
                return False
            raise
        return True


def acting_as_caller(client: MlflowClient, settings: Settings) -> None:
    """Make ``client``'s registry calls carry the credentials of the request being served (the stack's own
    otherwise), so MLflow checks and records the caller, not the gateway."""
    service = MlflowHostCreds(settings.tracking_uri, username=settings.mlflow_admin_username,
                              password=settings.mlflow_admin_password)

    def credentials() -> MlflowHostCreds:
        caller = current_caller.get()
        if caller is None:
            return service
        return MlflowHostCreds(settings.tracking_uri, username=caller.username, password=caller.password)

    client._registry_client_lazy = _CallerRegistryClient(settings.tracking_uri, RegistryRestStore(credentials))


class _CallerRegistryClient(ModelRegistryClient):
    """MLflow's registry client over a store of our own (MLflow builds its store from the process's
    environment, one identity for every call)."""

    def __init__(self, uri: str, store: RegistryRestStore):  # noqa: D107 (the parent's would build its own store)
        self.registry_uri = self.tracking_uri = uri
        self._store = store

    @property
    def store(self) -> RegistryRestStore:
        return self._store


def _admin_http(settings: Settings) -> httpx.Client:
    return httpx.Client(base_url=settings.tracking_uri.rstrip("/"), timeout=30,
                        auth=(settings.mlflow_admin_username, settings.mlflow_admin_password or ""))


def experiment_permission(settings: Settings, username: str, experiment_id: str) -> str:
    """What ``username`` may do on the experiment, as MLflow's auth app resolves it."""
    with _admin_http(settings) as http:
        held = http.get(PERMISSION_PATH, params={"username": username, "resource_type": "experiment",
                                                 "resource_id": experiment_id})
        held.raise_for_status()
        return str(held.json().get("permission", "NO_PERMISSIONS"))


def set_experiment_permission(settings: Settings, username: str, experiment_id: str, permission: str,
                              current: str) -> None:
    """``username``'s grant on the experiment becomes ``permission`` (none for NO_PERMISSIONS), from ``current``:
    MLflow replaces no grant in place, so one held is revoked first."""
    grant = {"username": username, "resource_type": "experiment", "resource_id": experiment_id}
    with _admin_http(settings) as http:
        if current not in ("NO_PERMISSIONS", "DENY"):
            revoked = http.post("/api/3.0/mlflow/users/permissions/revoke", json=grant)
            if revoked.status_code != status.HTTP_404_NOT_FOUND:  # none held after all: nothing to revoke
                revoked.raise_for_status()
        if permission not in ("NO_PERMISSIONS", "DENY"):
            http.post("/api/3.0/mlflow/users/permissions/grant",
                      json={**grant, "permission": permission}).raise_for_status()


def as_caller_run(settings: Settings, caller: Caller, experiment_id: str, run_name: str,
                  tags: dict[str, str]) -> str:
    """A job's run, created as ``caller`` (MLflow records them as its user) in the experiment of the model,
    on which the job runner has granted them EDIT for the job (gateway/jobs.py)."""
    with httpx.Client(timeout=30) as http:
        created = http.post(f"{settings.tracking_uri.rstrip('/')}/api/2.0/mlflow/runs/create",
                            auth=(caller.username, caller.password),
                            json={"experiment_id": experiment_id, "user_id": caller.username, "run_name": run_name,
                                  "start_time": int(time.time() * 1000),
                                  "tags": [{"key": k, "value": v} for k, v in
                                           {**tags, "mlflow.user": caller.username,
                                            "mlflow.runName": run_name}.items()]})
        created.raise_for_status()
        return str(created.json()["run"]["info"]["run_id"])


def acting_user() -> str:
    """Who a change is recorded as (the ``promoted_by`` tag): the caller, or the gateway itself."""
    caller = current_caller.get()
    return caller.username if caller else "gateway"


def document_auth(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document declares the authentication this gateway asks for: the token on the routes
    that change things (mode token), an MLflow user on every guarded route (mode mlflow), none (mode none)."""
    keep = {"token": TOKEN_SCHEME, "mlflow": USER_SCHEME}.get(settings.auth_mode)
    # what a guarded route may answer besides its own codes (a client generated from the document expects them)
    refusals = {"401": "no credentials, or credentials the gateway does not accept"}
    if settings.auth_mode == "mlflow":
        refusals["403"] = "the MLflow user lacks the permission on the model (named in the answer)"

    def amend(schema: dict[str, Any]) -> None:
        schemes = schema.get("components", {}).get("securitySchemes", {})
        for name in [n for n in schemes if n != keep]:
            del schemes[name]
        for path, operations in schema.get("paths", {}).items():
            error = "InferenceProtocolError" if error_for(path) is protocol_error else "Error"
            for operation in operations.values():
                kept = [s for s in operation.get("security", []) if keep in s]
                if not kept:
                    operation.pop("security", None)
                    continue
                operation["security"] = kept
                for code, description in refusals.items():
                    operation.setdefault("responses", {}).setdefault(code, {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}}})

    amend_openapi(app, amend)
