"""The model registry: versions, stage transitions and aliases, under the one policy of contract.registry."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from contract.registry import Conflict, NotFound, Registry
from gateway.deps import Authorized, ModelHttpDep, ModelInfoDep, RegistryDep, SettingsDep
from gateway.model_info import ModelInfo, NotOurModel
from gateway.routes.health import model_server_status
from gateway.schemas import (
    AliasName,
    AliasQuery,
    AliasRequest,
    ColumnOut,
    ModelName,
    ModelSchemaOut,
    ModelVersionOut,
    RegisteredModelOut,
    RegisteredModelSummary,
    ServingOut,
    StageRequest,
    VersionNumber,
    checked_alias,
    VersionQuery,
    unprocessable,
)

router = APIRouter(prefix="/models", tags=["models"])

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
async def get_model(name: ModelName, registry: RegistryDep, settings: SettingsDep,
                    http: ModelHttpDep) -> RegisteredModelOut:
    """Every version with its stage, aliases, run id, metrics and creation time, and what the model server
    serves and has loaded of the model."""
    def read() -> RegisteredModelOut:
        model = registry.model(name)
        aliases = dict(model.aliases)  # the versions' own `aliases` are empty in a search
        return RegisteredModelOut(name=name, aliases=aliases, description=model.description or "",
                                  versions=[version_out(registry, v, aliases) for v in registry.versions(name)])
    out = await run_in_threadpool(registry_errors, read)
    status_body = await model_server_status(settings, http)
    if isinstance(status_body, dict):
        out.serving = [ServingOut(**{k: m[k] for k in ("alias", "status", "version", "reason")})
                       for m in status_body.get("models", []) if m["name"] == name]
        out.loaded_versions = sorted((b["version"] for b in status_body.get("loaded", []) if b["name"] == name),
                                     key=int)
    return out


@router.get("/{name}/schema", response_model=ModelSchemaOut,
            responses={**ERRORS, 409: {"description": "the version was not logged by this project"}})
def get_schema(name: ModelName, registry: RegistryDep, info: ModelInfoDep, settings: SettingsDep,
               version: VersionQuery = None, alias: AliasQuery = None) -> ModelSchemaOut:
    """What to send: the input columns in order with their kind, the missing-value markers, the classes,
    and a valid example body (JSON and CSV) from the version's logged input example. The served version
    (``SERVE_ALIAS``) unless ``?version=N`` or ``?alias=A``."""
    if version and alias:
        raise unprocessable(["query"], "give version or alias, not both")
    if alias:
        checked_alias(alias, "query")

    def read() -> ModelSchemaOut:
        found = version or registry.served_version(name, "alias" if alias else settings.serve_follows,
                                                   alias or settings.serve_alias, settings.serve_stage)
        if found is None:
            raise NotFound(f"no version of '{name}' holds alias '{alias or settings.serve_alias}'")
        registry.version(name, found)
        try:
            model = info.get(name, found)
        except NotOurModel as err:
            raise Conflict(str(err)) from None
        return schema_out(model)
    return registry_errors(read)


def schema_out(model: ModelInfo) -> ModelSchemaOut:
    example = [{c: row.get(c) for c, _ in model.columns} for row in model.example]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c for c, _ in model.columns])
    writer.writerows([["" if row[c] is None else row[c] for c, _ in model.columns] for row in example])
    return ModelSchemaOut(name=model.name, version=model.version,
                          columns=[ColumnOut(name=c, kind=kind) for c, kind in model.columns],
                          missing_values=model.na_values, classes=model.classes,
                          outputs=[name for name, _ in model.outputs], example={"records": example},
                          example_csv=buffer.getvalue())


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
