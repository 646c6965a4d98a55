"""The model registry: versions, stage transitions and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import Response

from gateway.deps import Authorized, RegistryDep
from gateway.registry import ALIAS_PATTERN, Conflict, NotFound, valid_alias
from gateway.schemas import (
    AliasRequest,
    ModelVersionOut,
    RegisteredModelOut,
    RegisteredModelSummary,
    StageRequest,
    unprocessable,
)

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
VersionNumber = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,9}$")]
# The pattern is documented in the schema and checked by checked_alias, whose message says it in words.
AliasName = Annotated[str, Path(min_length=1, max_length=255, json_schema_extra={"pattern": ALIAS_PATTERN})]
ERRORS = {404: {"description": "unknown model, version or alias"}}
CHANGES = {**ERRORS, 401: {"description": "token required"}, 409: {"description": "illegal transition"}}


def registry_errors(call):  # type: ignore[no-untyped-def]
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


@router.get("", response_model=list[RegisteredModelSummary])
def list_models(registry: RegistryDep) -> list[RegisteredModelSummary]:
    return [RegisteredModelSummary(**m) for m in registry.list_models()]


@router.get("/{name}", response_model=RegisteredModelOut, responses=ERRORS)
def get_model(name: ModelName, registry: RegistryDep) -> RegisteredModelOut:
    """Every version with its stage, aliases, run id, metrics and creation time."""
    return RegisteredModelOut(**registry_errors(lambda: registry.get_model(name)))


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut, responses=ERRORS)
def get_version(name: ModelName, version: VersionNumber, registry: RegistryDep) -> ModelVersionOut:
    return ModelVersionOut(**registry_errors(lambda: registry.get_version(name, version)))


@router.post("/{name}/versions/{version}/stage", response_model=ModelVersionOut,
             dependencies=[Authorized], responses=CHANGES)
def transition_stage(name: ModelName, version: VersionNumber, body: StageRequest,
                     registry: RegistryDep) -> ModelVersionOut:
    """Registry stage transition. Production/Staging also move the champion/challenger alias."""
    return ModelVersionOut(**registry_errors(
        lambda: registry.transition(name, version, body.stage, body.archive_existing)))


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionOut, dependencies=[Authorized],
            responses=CHANGES)
def set_alias(name: ModelName, alias: AliasName, body: AliasRequest, registry: RegistryDep) -> ModelVersionOut:
    """Point ``alias`` at a version (the model server follows ``SERVE_ALIAS``, champion by default)."""
    checked_alias(alias)
    return ModelVersionOut(**registry_errors(lambda: registry.set_alias(name, alias, body.version)))


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[Authorized], responses=CHANGES)
def delete_alias(name: ModelName, alias: AliasName, registry: RegistryDep) -> Response:
    checked_alias(alias)
    registry_errors(lambda: registry.delete_alias(name, alias))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
