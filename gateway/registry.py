"""The model registry as the gateway exposes it: versions, stage transitions, aliases.

Stages are deprecated by MLflow in favour of aliases; we support both and keep
them in step for the stages that mean something to serving:
``Production`` <-> alias ``champion``, ``Staging`` <-> alias ``challenger``.
A transition into one of these stages points its alias at the version; a
transition of the version holding the alias out of that stage removes it.
"""

from __future__ import annotations

import re
import warnings
from datetime import datetime, UTC
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

STAGE_ALIASES = {"Production": "champion", "Staging": "challenger"}
STAGES = ("None", "Staging", "Production", "Archived")
# Moves the registry refuses: a retired version comes back through Staging first.
ILLEGAL_TRANSITIONS = {("Archived", "Production")}
# MLflow's alias rule, less the names MLflow reserves: ``latest`` (any case) and ``v<digits>``.
ALIAS_PATTERN = r"^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)(?![vV][0-9]+$)[A-Za-z_][A-Za-z0-9_-]{0,254}$"
_ALIAS = re.compile(ALIAS_PATTERN.removeprefix("^").removesuffix("$"))


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def _not_found(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


def valid_alias(alias: str) -> bool:
    return bool(_ALIAS.fullmatch(alias))


class Registry:
    def __init__(self, client: MlflowClient):
        self.client = client

    def _version(self, name: str, version: str) -> ModelVersion:
        self.model(name)  # 404 names the model before the version
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as err:
            if _not_found(err):
                raise NotFound(f"model '{name}' has no version {version}") from None
            raise

    def model(self, name: str) -> Any:
        try:
            return self.client.get_registered_model(name)
        except MlflowException as err:
            if _not_found(err):
                raise NotFound(f"no registered model named '{name}'") from None
            raise

    def describe_version(self, version: ModelVersion, aliases: dict[str, str]) -> dict[str, Any]:
        metrics: dict[str, float] = {}
        if version.run_id:
            try:
                metrics = self.client.get_run(version.run_id).data.metrics
            except MlflowException:
                metrics = {}
        return {
            "name": version.name,
            "version": version.version,
            "stage": version.current_stage,
            "aliases": sorted(a for a, v in aliases.items() if v == version.version),
            "status": version.status,
            "run_id": version.run_id,
            "metrics": metrics,
            "created_at": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(),
        }

    def list_models(self) -> list[dict[str, Any]]:
        models = self.client.search_registered_models(max_results=1000)
        return [
            {"name": m.name, "aliases": dict(m.aliases),
             "latest_version": max((v.version for v in m.latest_versions), key=int, default=None),
             "description": m.description or ""}
            for m in models
        ]

    def get_model(self, name: str) -> dict[str, Any]:
        model = self.model(name)
        # search_model_versions leaves `aliases` empty: the registered model has them.
        aliases = dict(model.aliases)
        versions = self.client.search_model_versions(f"name = '{name}'", max_results=1000)
        versions = sorted(versions, key=lambda v: int(v.version), reverse=True)
        return {
            "name": name,
            "aliases": aliases,
            "description": model.description or "",
            "versions": [self.describe_version(v, aliases) for v in versions],
        }

    def get_version(self, name: str, version: str) -> dict[str, Any]:
        found = self._version(name, version)
        return self.describe_version(found, dict(self.model(name).aliases))

    def transition(self, name: str, version: str, stage: str, archive_existing: bool) -> dict[str, Any]:
        found = self._version(name, version)
        current = found.current_stage
        if current == stage:
            raise Conflict(f"version {version} of '{name}' is already in stage {stage}")
        if (current, stage) in ILLEGAL_TRANSITIONS:
            raise Conflict(f"version {version} of '{name}' is {current}: move it to Staging before {stage}")
        if found.status != "READY":
            raise Conflict(f"version {version} of '{name}' is {found.status}, not READY")
        aliases = dict(self.model(name).aliases)
        with warnings.catch_warnings():
            # Deprecated since MLflow 2.9 and still supported: we offer stages on purpose.
            warnings.simplefilter("ignore", FutureWarning)
            self.client.transition_model_version_stage(
                # MLflow answers 500 to archive_existing for Archived/None: it only means something
                # for the active stages, so it is ignored for the others.
                name, version, stage, archive_existing_versions=archive_existing and stage in STAGE_ALIASES
            )
        left = STAGE_ALIASES.get(current)
        if left and aliases.get(left) == version:
            self.client.delete_registered_model_alias(name, left)
        if stage in STAGE_ALIASES:
            self.client.set_registered_model_alias(name, STAGE_ALIASES[stage], version)
        return self.get_version(name, version)

    def set_alias(self, name: str, alias: str, version: str) -> dict[str, Any]:
        found = self._version(name, version)
        if found.current_stage == "Archived":
            raise Conflict(f"version {version} of '{name}' is Archived: move it to Staging first")
        self.client.set_registered_model_alias(name, alias, version)
        return self.get_version(name, version)

    def delete_alias(self, name: str, alias: str) -> None:
        aliases = dict(self.model(name).aliases)
        if alias not in aliases:
            raise NotFound(f"model '{name}' has no alias '{alias}'")
        self.client.delete_registered_model_alias(name, alias)
