"""The model registry: versions, stage transitions and aliases, under the one policy of contract.registry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import Response
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from contract.names import ALIAS_PATTERN, MODEL_NAME_PATTERN, VERSION_PATTERN, valid_alias
from contract.registry import Conflict, NotFound, Registry
from gateway.deps import Authorized, RegistryDep
from gateway.schemas import (
    AliasRequest,
    ModelVersionOut,
    RegisteredModelOut,
    RegisteredModelSummary,
    StageRequest,
    unprocessable,
)

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]
VersionNumber = Annotated[str, Path(pattern=VERSION_PATTERN)]
# The pattern is documented in the schema and checked by checked_alias, whose message says it in words.
AliasName = Annotated[str, Path(min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN})]
ERRORS = {404: {"description": "unknown model, version or alias"}}
CHANGES = {**ERRORS, 401: {"description": "token required"}, 409: {"description": "illegal transition"}}
T = TypeVar("T")


def registry_errors(call: Callable[[], T]) -> T:
    """Run a registry call, turning our lookups and conflicts into 404 and 409."""
    try:
        return call()
    except NotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(err)) from None
    except Conflict as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from None


def checked_alias(alias: str) -> str:
    if not valid_alias(alias):
        raise unprocessable(["path", "alias"], "letters, digits, '_' and '-', starting with a letter or '_';"
                                               " 'latest' and 'v<number>' are reserved")
    return alias


def version_out(registry: Registry, version: ModelVersion, aliases: dict[str, str]) -> ModelVersionOut:
    metrics: dict[str, float] = {}
    if version.run_id:
        try:
            metrics = registry.client.get_run(version.run_id).data.metrics
        except MlflowException:
            metrics = {}
    return ModelVersionOut(
        name=version.name, version=version.version, stage=version.current_stage,
        aliases=sorted(a for a, v in aliases.items() if v == version.version), status=version.status,
        run_id=version.run_id, metrics=metrics,
        created_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat())


def described(registry: Registry, name: str, version: str) -> ModelVersionOut:
    found = registry.version(name, version)
    return version_out(registry, found, dict(registry.model(name).aliases))


@router.get("", response_model=list[RegisteredModelSummary])
def list_models(registry: RegistryDep) -> list[RegisteredModelSummary]:
    models = registry.client.search_registered_models(max_results=1000)
    return [RegisteredModelSummary(name=m.name, aliases=dict(m.aliases), description=m.description or "",
                                   latest_version=max((v.version for v in m.latest_versions), key=int, default=None))
            for m in models]


@router.get("/{name}", response_model=RegisteredModelOut, responses=ERRORS)
def get_model(name: ModelName, registry: RegistryDep) -> RegisteredModelOut:
    """Every version with its stage, aliases, run id, metrics and creation time."""
    def read() -> RegisteredModelOut:
        model = registry.model(name)
        aliases = dict(model.aliases)  # the versions' own `aliases` are empty in a search
        return RegisteredModelOut(name=name, aliases=aliases, description=model.description or "",
                                  versions=[version_out(registry, v, aliases) for v in registry.versions(name)])
    return registry_errors(read)


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut, responses=ERRORS)
def get_version(name: ModelName, version: VersionNumber, registry: RegistryDep) -> ModelVersionOut:
    return registry_errors(lambda: described(registry, name, version))


@router.post("/{name}/versions/{version}/stage", response_model=ModelVersionOut,
             dependencies=[Authorized], responses=CHANGES)
def transition_stage(name: ModelName, version: VersionNumber, body: StageRequest,
                     registry: RegistryDep) -> ModelVersionOut:
    """Registry stage transition. Production moves the serving alias with it (and the version that
    held it to Archived); Staging moves the challenger alias."""
    def move() -> ModelVersionOut:
        registry.transition(name, version, body.stage, body.archive_existing)
        return described(registry, name, version)
    return registry_errors(move)


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionOut, dependencies=[Authorized],
            responses=CHANGES)
def set_alias(name: ModelName, alias: AliasName, body: AliasRequest, registry: RegistryDep) -> ModelVersionOut:
    """Point ``alias`` at a version. The serving alias (``SERVE_ALIAS``) moves the Production stage with
    it: the model server follows it and switches without a failed request."""
    checked_alias(alias)

    def move() -> ModelVersionOut:
        registry.set_alias(name, alias, body.version)
        return described(registry, name, body.version)
    return registry_errors(move)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[Authorized], responses=CHANGES)
def delete_alias(name: ModelName, alias: AliasName, registry: RegistryDep) -> Response:
    checked_alias(alias)
    registry_errors(lambda: registry.delete_alias(name, alias))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
