"""Dependencies of the routes, as typed aliases, and :class:`LeanRoute` for the routes that predict."""
# Dependencies are coroutines: FastAPI runs a plain function dependency in its thread pool,
# a hop that cost ~30% of /predict throughput for these attribute lookups.

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from contract.names import valid_model_name
from contract.registry import Registry
from contract.settings import Settings
from gateway.auth import TOKEN_SCHEME, USER_SCHEME, Caller, Level, current_caller
from gateway.inference_log import InferenceLog
from gateway.jobs import TrainingJobRunner
from gateway.model_client import ModelServerClient
from gateway.model_info import ModelInfoCache
from gateway.observability import Admission, Metrics
from gateway.predictor import Predictor
from gateway.rollouts import Rollouts


def app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency answering the object the app keeps as ``app.state.<name>``."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.state_name = name  # type: ignore[attr-defined]  # what LeanRoute reads instead of calling it
    return dependency


SettingsDep = Annotated[Settings, Depends(app_state("settings"))]
RegistryDep = Annotated[Registry, Depends(app_state("registry"))]
JobsDep = Annotated[TrainingJobRunner, Depends(app_state("jobs"))]
ModelClientDep = Annotated[ModelServerClient, Depends(app_state("model_client"))]
AdmissionDep = Annotated[Admission, Depends(app_state("admission"))]
MetricsDep = Annotated[Metrics, Depends(app_state("metrics"))]
ModelInfoDep = Annotated[ModelInfoCache, Depends(app_state("model_info"))]
InferenceLogDep = Annotated[InferenceLog | None, Depends(app_state("inference_log"))]
PredictorDep = Annotated[Predictor, Depends(app_state("predictor"))]
RolloutsDep = Annotated[Rollouts, Depends(app_state("rollouts"))]

# The schemes the OpenAPI document declares, by name; gateway/auth.py: document_auth keeps those of the mode.
_bearer = HTTPBearer(auto_error=False, scheme_name=TOKEN_SCHEME, description="GATEWAY_AUTH=token: GATEWAY_API_TOKEN")
_basic = HTTPBasic(auto_error=False, scheme_name=USER_SCHEME,
                   description="GATEWAY_AUTH=mlflow: an MLflow user of the tracking server")
ModelFrom = Literal["path", "body", "caller"]


async def _model_of(request: Request, settings: Settings, model_from: ModelFrom) -> str | None:
    if model_from == "path":
        return request.path_params.get("name") or settings.model_name
    if model_from == "body":  # POST /train, /monitor: the model they are for
        try:
            body = await request.json()
        except ValueError:  # not JSON: the route's own validation answers 422 once the caller is known
            body = None
        named = body.get("model_name") if isinstance(body, dict) else None
        if not named:
            return settings.model_name
        # not a model name: the credentials are checked, then the route's validation answers 422 naming the field
        return named if isinstance(named, str) and valid_model_name(named) else None
    return None  # the route checks per model itself (POST /feedback: the models that answered)


def requires(level: Level, model_from: ModelFrom) -> Callable[..., Awaitable[Caller | None]]:
    """A dependency: :func:`authorize` for ``level`` on the route's model."""

    # The security schemes each declares (for /docs and clients): the token guards changes only.
    if level == "READ":
        async def dependency(request: Request, settings: SettingsDep,
                             _user: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> Caller | None:
            return await authorize(request, settings, level, model_from)
    else:
        async def dependency(request: Request, settings: SettingsDep,
                             _token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                             _user: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> Caller | None:
            return await authorize(request, settings, level, model_from)
    dependency.access = (level, model_from)  # type: ignore[attr-defined]  # what LeanRoute checks instead
    return dependency


async def authorize(request: Request, settings: Settings, level: Level, model_from: ModelFrom) -> Caller | None:
    """The caller, who may do ``level`` on the request's model (gateway/auth.py) and is then the caller of
    every registry call the request makes; 401/403 otherwise."""
    model = await _model_of(request, settings, model_from)
    creating = False
    if model_from == "body" and settings.auth_mode == "mlflow" and model is not None:
        registry: Registry = request.app.state.registry
        creating = not await run_in_threadpool(registry.exists, model)
    request.state.creating = creating  # POST /train: who else's job is creating it (gateway/routes/train.py)
    # a change gets the audit line the request middleware writes once the answer is known
    # (gateway/observability.py); a refused caller is "unknown" there
    audited = level != "READ"
    if audited:
        request.state.audit = {"user": "unknown", "model": model}
    caller = await request.app.state.authorizer.check(request.headers.get("authorization"), model, level,
                                                      creating)
    current_caller.set(caller)
    request.state.caller = caller
    if audited:
        request.state.audit = {"user": caller.username if caller else f"({settings.auth_mode})", "model": model}
    return caller


# Route dependencies by what the route does to which model.
Reads = Depends(requires("READ", "path"))  # /models/{name}/..., /v2/models/{name}/...; /predict: MODEL_NAME
Trains = Depends(requires("EDIT", "body"))  # POST /train, /monitor
EditsPerModel = Depends(requires("EDIT", "caller"))  # POST /feedback, DELETE /train/{id}: then EDIT per model
Manages = Depends(requires("MANAGE", "path"))  # stages, aliases, traffic, promote, rollback
Authenticated = Depends(requires("READ", "caller"))  # jobs: any known caller


async def caller_of(request: Request) -> Caller | None:
    return getattr(request.state, "caller", None)


CallerDep = Annotated[Caller | None, Depends(caller_of)]


class LeanRoute(APIRoute):
    """A route documented like any other, from its endpoint's signature, answered without FastAPI's
    per-request dependency solving.

    FastAPI solves a route's dependency tree anew for every request: for a single-row /predict that
    was a quarter of the gateway's time (the route's six dependencies, each with cache keys, scope and
    generator checks), more than reading the row and calling the model. A lean route resolves what its
    endpoint declares directly: the request; path and query parameters, validated by the same fields
    FastAPI would use (the same 422); dependencies made by :func:`app_state` (the object itself) and by
    :func:`requires` (:func:`authorize`, first, as FastAPI would). Anything else is refused when the
    route is made. The endpoint returns its Response. Not for a router included with dependencies of
    its own: only the route's are resolved.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        dependant, endpoint = self.dependant, self.endpoint
        if dependant.header_params or dependant.cookie_params or dependant.body_params:
            raise TypeError(f"LeanRoute {self.path}: only path and query parameters are resolved; "
                            "read headers and the body from the request")
        access, state = [], {}
        for sub in dependant.dependencies:
            if hasattr(sub.call, "access"):
                access.append(sub.call.access)
            elif hasattr(sub.call, "state_name") and sub.name:
                state[sub.name] = sub.call.state_name
            else:
                raise TypeError(f"LeanRoute {self.path}: dependency {sub.call!r} is neither app_state nor requires")
        request_name = dependant.request_param_name

        async def handler(request: Request) -> Response:
            app_state = request.app.state
            for level, model_from in access:
                await authorize(request, app_state.settings, level, model_from)
            values: dict[str, Any] = {name: getattr(app_state, attr) for name, attr in state.items()}
            path_values, path_errors = request_params_to_args(dependant.path_params, request.path_params)
            query_values, query_errors = request_params_to_args(dependant.query_params, request.query_params)
            if path_errors or query_errors:
                raise RequestValidationError([*path_errors, *query_errors])
            values.update(path_values, **query_values)
            if request_name:
                values[request_name] = request
            return await endpoint(**values)

        return handler
