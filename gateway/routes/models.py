"""The model registry: versions, stage transitions and aliases, under the one policy of contract.registry."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from contract.names import TAG_DECISION_THRESHOLD
from contract.registry import Conflict, NotFound, Registry
from contract.traffic import TrafficPolicy
from gateway.auth import acting_user
from gateway.deps import (Authenticated, Manages, ModelClientDep, ModelInfoDep, Reads, RegistryDep, RolloutsDep,
                          SettingsDep)
from gateway.model_client import announce
from gateway.model_info import ModelInfo, NotOurModel
from gateway.schemas import (
    AliasName,
    AliasQuery,
    AliasRequest,
    ColumnOut,
    ImportanceOut,
    ModelName,
    ModelSchemaOut,
    ModelVersionOut,
    PromoteRequest,
    RegisteredModelOut,
    RegisteredModelSummary,
    ServingOut,
    StageRequest,
    TrafficOut,
    TrafficRequest,
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
        created_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(),
        threshold=decision_threshold(version.tags or {}))


def decision_threshold(tags: dict[str, str]) -> float | None:
    """The version's cut-off as the train step tagged it; None for argmax or a version from before."""
    try:
        return float(tags[TAG_DECISION_THRESHOLD])
    except (KeyError, ValueError):
        return None


def described(registry: Registry, name: str, version: str) -> ModelVersionOut:
    found = registry.version(name, version)
    return version_out(registry, found, dict(registry.model(name).aliases))


@router.get("", response_model=list[RegisteredModelSummary], dependencies=[Authenticated])
def list_models(registry: RegistryDep) -> list[RegisteredModelSummary]:
    models = registry.client.search_registered_models(max_results=1000)
    return [RegisteredModelSummary(name=m.name, aliases=dict(m.aliases), description=m.description or "",
                                   latest_version=max((v.version for v in m.latest_versions), key=int, default=None))
            for m in models]


@router.get("/{name}", response_model=RegisteredModelOut, responses=ERRORS, dependencies=[Reads])
async def get_model(name: ModelName, registry: RegistryDep, model_server: ModelClientDep) -> RegisteredModelOut:
    """Every version with its stage, aliases, run id, metrics and creation time, and what the model server
    serves and has loaded of the model."""
    def read() -> RegisteredModelOut:
        model = registry.model(name)
        aliases = dict(model.aliases)  # the versions' own `aliases` are empty in a search
        return RegisteredModelOut(name=name, aliases=aliases, description=model.description or "",
                                  versions=[version_out(registry, v, aliases) for v in registry.versions(name)])
    out = await run_in_threadpool(registry_errors, read)
    status_body = await model_server.status()
    if isinstance(status_body, dict):
        out.serving = [ServingOut(**{k: m[k] for k in ("alias", "status", "version", "reason")})
                       for m in status_body.get("models", []) if m["name"] == name]
        out.loaded_versions = sorted((b["version"] for b in status_body.get("loaded", []) if b["name"] == name),
                                     key=int)
    return out


@router.get("/{name}/schema", response_model=ModelSchemaOut, dependencies=[Reads],
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


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut, responses=ERRORS, dependencies=[Reads])
def get_version(name: ModelName, version: VersionNumber, registry: RegistryDep) -> ModelVersionOut:
    return registry_errors(lambda: described(registry, name, version))


# The training run's artifact (steps/train.py) and what it holds.
IMPORTANCE_ARTIFACT = "feature_importance.csv"
IMPORTANCE_METHOD = ("impurity: the forest's mean decrease in Gini impurity (scikit-learn's feature_importances_),"
                     " summed over each column's features")


@router.get("/{name}/versions/{version}/importance", response_model=ImportanceOut, dependencies=[Reads],
            responses={**ERRORS, 409: {"description": "the version's run logged no feature importance"}})
def get_importance(name: ModelName, version: VersionNumber, registry: RegistryDep) -> ImportanceOut:
    """The feature importance logged when the version was trained, one value a raw input column, largest first.
    For why one prediction came out as it did, see ``POST /models/{name}/explain``."""
    def read() -> ImportanceOut:
        found = registry.version(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = registry.client.download_artifacts(found.run_id, IMPORTANCE_ARTIFACT, tmp)
                rows = list(csv.DictReader(Path(path).read_text(encoding="utf-8").splitlines()))
                importance = {row["column"]: float(row["importance"]) for row in rows}
            except (MlflowException, OSError, KeyError, ValueError):
                raise Conflict(f"the run of version {version} of '{name}' logged no {IMPORTANCE_ARTIFACT}") from None
        ordered = dict(sorted(importance.items(), key=lambda item: item[1], reverse=True))
        return ImportanceOut(name=name, version=version, method=IMPORTANCE_METHOD, importance=ordered)
    return registry_errors(read)


@router.post("/{name}/versions/{version}/stage", response_model=ModelVersionOut,
             dependencies=[Manages], responses=CHANGES)
def transition_stage(name: ModelName, version: VersionNumber, body: StageRequest,
                     registry: RegistryDep, settings: SettingsDep) -> ModelVersionOut:
    """Registry stage transition. Production moves the serving alias with it (and the version that
    held it to Archived); Staging moves the challenger alias."""
    def move() -> ModelVersionOut:
        registry.transition(name, version, body.stage, body.archive_existing)
        announce(settings, name)
        return described(registry, name, version)
    return registry_errors(move)


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionOut, dependencies=[Manages],
            responses=CHANGES)
def set_alias(name: ModelName, alias: AliasName, body: AliasRequest, registry: RegistryDep,
              settings: SettingsDep) -> ModelVersionOut:
    """Point ``alias`` at a version. The serving alias (``SERVE_ALIAS``) moves the Production stage with
    it: the model server follows it and switches without a failed request."""
    checked_alias(alias)

    def move() -> ModelVersionOut:
        registry.set_alias(name, alias, body.version)
        if alias == registry.pairs.serving_alias:
            announce(settings, name)
        return described(registry, name, body.version)
    return registry_errors(move)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[Manages], responses=CHANGES)
def delete_alias(name: ModelName, alias: AliasName, registry: RegistryDep) -> Response:
    checked_alias(alias)
    registry_errors(lambda: registry.delete_alias(name, alias))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- rollouts --------------------------------------------------------------------------------


@router.get("/{name}/traffic", response_model=TrafficOut, responses=ERRORS, dependencies=[Reads])
async def get_traffic(name: ModelName, registry: RegistryDep, rollouts: RolloutsDep,
                      model_server: ModelClientDep) -> TrafficOut:
    """The model's traffic policy and, for a canary or a shadow, each version's figures in the rollout
    window (as this gateway replica saw them) and its state on the model server (``serving``, or
    ``unavailable`` with the reason, such as loading)."""
    def read() -> TrafficOut:
        policy = registry.traffic(name)
        aliases = {a: str(v) for a, v in registry.model(name).aliases.items()}
        versions = {"served": aliases.get(registry.pairs.serving_alias)}
        if policy.mode != "single" and policy.alias:
            versions[policy.mode] = aliases.get(policy.alias)
        figures = rollouts.figures(name, {role: v for role, v in versions.items() if v}) if policy.mode != "single" \
            else {}
        return TrafficOut(**asdict(policy), figures=figures)

    out = await run_in_threadpool(registry_errors, read)
    if out.mode != "single":
        status_ = await model_server.status()
        followed = {(m["name"], m["alias"]): m for m in status_.get("models", [])} if isinstance(status_, dict) else {}
        for role, alias in (("served", None), (out.mode, out.alias)):
            if role in out.figures:
                entry = followed.get((name, alias))
                out.figures[role]["state"] = entry["status"] if entry else "unknown"
                out.figures[role]["state_reason"] = (entry["reason"] if entry else status_ if isinstance(status_, str)
                                                     else "not followed by the model server yet")
    return out


@router.put("/{name}/traffic", response_model=TrafficOut, dependencies=[Manages], responses=CHANGES)
def set_traffic(name: ModelName, body: TrafficRequest, registry: RegistryDep, rollouts: RolloutsDep,
                settings: SettingsDep) -> TrafficOut:
    """Set the traffic policy: ``single``, ``canary`` (``alias``, ``percent``, optional ``sticky_key``) or
    ``shadow`` (``alias``). Stored in the registry: every gateway replica applies it within a few seconds."""
    policy = TrafficPolicy(body.mode, body.alias, body.percent, body.sticky_key)
    problems = policy.problems(registry.pairs.serving_alias)
    if body.alias:
        checked_alias(body.alias, "body")
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["body", f], "msg": m, "type": "value_error"} for f, m in problems])

    def write() -> TrafficOut:
        aliases = dict(registry.model(name).aliases)
        if policy.alias and policy.alias not in aliases:
            raise NotFound(f"model '{name}' has no alias '{policy.alias}'")
        registry.set_traffic(name, policy)
        rollouts.set_policy(name, policy)
        if policy.alias:  # the canary's or the shadow's version, loaded before requests are routed to it
            announce(settings, name, policy.alias)
        return TrafficOut(**asdict(policy), figures={})
    return registry_errors(write)


@router.post("/{name}/promote", response_model=ModelVersionOut, dependencies=[Manages], responses=CHANGES)
def promote(name: ModelName, body: PromoteRequest, registry: RegistryDep, rollouts: RolloutsDep,
            settings: SettingsDep) -> ModelVersionOut:
    """Serve the version ``alias`` holds (serving alias and Production, the one it replaces Archived and held by
    the alias ``previous``); the traffic policy returns to single. No request fails on the way."""
    checked_alias(body.alias, "body")

    def move() -> ModelVersionOut:
        version = dict(registry.model(name).aliases).get(body.alias)
        if version is None:
            raise NotFound(f"model '{name}' has no alias '{body.alias}'")
        registry.promote(name, str(version), by=acting_user())
        rollouts.set_policy(name, TrafficPolicy())
        announce(settings, name)
        return described(registry, name, str(version))
    return registry_errors(move)


@router.post("/{name}/rollback", response_model=ModelVersionOut, dependencies=[Manages], responses=CHANGES)
def rollback(name: ModelName, registry: RegistryDep, rollouts: RolloutsDep,
             settings: SettingsDep) -> ModelVersionOut:
    """Serve again the version the last promotion replaced (alias ``previous``), in one call."""
    def move() -> ModelVersionOut:
        restored = registry.rollback(name, by=acting_user())
        rollouts.set_policy(name, TrafficPolicy())
        announce(settings, name)
        return described(registry, name, str(restored.version))
    return registry_errors(move)
