"""The model registry as this project reads and changes it, under one alias/stage policy.

MLflow keeps stages (deprecated, still supported) and aliases apart. Users move
either, and the model server follows one of them, so this project keeps two
pairs in step:

- the serving alias (the setting ``SERVE_ALIAS``) and the stage ``Production``;
- the alias ``challenger`` and the stage ``Staging``.

Exactly one version holds each pair. Moving the alias moves the stage with it
and the reverse; the version that held the pair leaves it: out of Production it
is Archived, out of Staging it returns to None (or is Archived with
``archive_existing``). A version moved out of a paired stage loses the alias;
deleting a paired alias returns its version to stage None. Archived versions go
back through Staging before Production.

:func:`plan` is the policy as a pure function (what to change, given what the
registry holds); :class:`Registry` reads the registry, applies plans, and is
what the gateway's routes, the automatic promotion and ``make up`` all call.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from contract.names import CHALLENGER_ALIAS, PREVIOUS_ALIAS, TAG_PROMOTED_AT, TAG_PROMOTED_BY
from contract.traffic import TAG_TRAFFIC, TrafficPolicy

Stage = Literal["None", "Staging", "Production", "Archived"]


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


# --- the policy ----------------------------------------------------------------------


@dataclass(frozen=True)
class SetStage:
    version: str
    stage: str


@dataclass(frozen=True)
class SetAlias:
    alias: str
    version: str


@dataclass(frozen=True)
class DeleteAlias:
    alias: str


Change = SetStage | SetAlias | DeleteAlias


@dataclass(frozen=True)
class RegistryState:
    """What the policy needs to know of one registered model."""

    stages: Mapping[str, str]  # version -> stage
    aliases: Mapping[str, str]  # alias -> version


@dataclass(frozen=True)
class Pairs:
    """The aliases paired with stages: the serving alias with Production, challenger with Staging."""

    serving_alias: str

    def alias_of(self, stage: str) -> str | None:
        return {"Production": self.serving_alias, "Staging": CHALLENGER_ALIAS}.get(stage)

    def stage_of(self, alias: str) -> str | None:
        return {self.serving_alias: "Production", CHALLENGER_ALIAS: "Staging"}.get(alias)


def plan_transition(state: RegistryState, pairs: Pairs, version: str, stage: str,
                    archive_existing: bool = False, restore: bool = False) -> list[Change]:
    """The changes that put ``version`` in ``stage`` and keep the pairs whole.

    Ordered so that a model server following either the alias or the stage never
    sees the pair empty: the new holder is set before the old one leaves.
    ``restore`` lets an Archived version back into Production directly (a rollback).
    """
    current = state.stages[version]
    if current == stage:
        raise Conflict(f"version {version} is already in stage {stage}")
    if (current, stage) == ("Archived", "Production") and not restore:
        raise Conflict(f"version {version} is Archived: move it to Staging before Production")
    changes: list[Change] = [SetStage(version, stage)]
    alias = pairs.alias_of(stage)
    if alias:
        changes.append(SetAlias(alias, version))
        leaving = "Archived" if stage == "Production" or archive_existing else "None"
        changes += [SetStage(other, leaving) for other, held in sorted(state.stages.items(), key=_by_number)
                    if held == stage and other != version]
    left = pairs.alias_of(current)
    if left and state.aliases.get(left) == version:
        changes.append(DeleteAlias(left))
    return changes


def plan_alias(state: RegistryState, pairs: Pairs, alias: str, version: str) -> list[Change]:
    """The changes that point ``alias`` at ``version``: for a paired alias, its stage too."""
    stage = pairs.stage_of(alias)
    if stage is None:
        return [] if state.aliases.get(alias) == version else [SetAlias(alias, version)]
    if state.stages[version] == stage:
        # already in the stage: only the alias may be missing (a registry changed by hand)
        return [] if state.aliases.get(alias) == version else [SetAlias(alias, version)]
    return plan_transition(state, pairs, version, stage)


def plan_delete_alias(state: RegistryState, pairs: Pairs, alias: str) -> list[Change]:
    """The changes that remove ``alias``: a paired alias takes its version out of the stage."""
    version = state.aliases.get(alias)
    if version is None:
        raise NotFound(f"no alias '{alias}'")
    stage = pairs.stage_of(alias)
    if stage is not None and state.stages.get(version) == stage:
        return [SetStage(version, "None"), DeleteAlias(alias)]
    return [DeleteAlias(alias)]


def _by_number(item: tuple[str, str]) -> int:
    return int(item[0])


# --- the registry ---------------------------------------------------------------------


def _not_found(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


class Registry:
    """Reads and policy-abiding changes of the MLflow model registry."""

    def __init__(self, client: MlflowClient, serving_alias: str):
        self.client = client
        self.pairs = Pairs(serving_alias)

    # --- reads ----------------------------------------------------------------------
    def model(self, name: str) -> RegisteredModel:
        try:
            return self.client.get_registered_model(name)
        except MlflowException as err:
            if _not_found(err):
                raise NotFound(f"no registered model named '{name}'") from None
            raise

    def exists(self, name: str) -> bool:
        try:
            self.model(name)
        except NotFound:
            return False
        return True

    def version(self, name: str, version: str) -> ModelVersion:
        self.model(name)  # the 404 names the model before the version
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as err:
            if _not_found(err):
                raise NotFound(f"model '{name}' has no version {version}") from None
            raise

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version, newest first. Their ``aliases`` are empty: read them from :meth:`model`."""
        found = self.client.search_model_versions(f"name = '{name}'", max_results=1000)
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def state(self, name: str) -> RegistryState:
        # version numbers are text everywhere here; a SQL store's client hands out ints, REST text
        aliases = {alias: str(version) for alias, version in self.model(name).aliases.items()}
        return RegistryState({str(v.version): v.current_stage for v in self.versions(name)}, aliases)

    def served_version(self, name: str, follows: str, alias: str, stage: str) -> str | None:
        """The version to serve: the one holding ``alias``, or the newest in ``stage``; None if none.

        Raises :class:`NotFound` if there is no such registered model.
        """
        try:
            if follows == "alias":
                return self.client.get_model_version_by_alias(name, alias).version
            versions = self.client.get_latest_versions(name, stages=[stage])
        except MlflowException as err:
            if _not_found(err) or "not found" in err.message.lower():
                self.model(name)  # NotFound when the model itself is missing
                return None
            raise
        return max((v.version for v in versions), key=int, default=None)

    # --- changes --------------------------------------------------------------------
    def transition(self, name: str, version: str, stage: str, archive_existing: bool = False) -> ModelVersion:
        found = self.version(name, version)
        if found.status != "READY":
            raise Conflict(f"version {version} of '{name}' is {found.status}, not READY")
        self._apply(name, self._planned(name, lambda state: plan_transition(
            state, self.pairs, version, stage, archive_existing)))
        return self.version(name, version)

    def set_alias(self, name: str, alias: str, version: str) -> ModelVersion:
        self.version(name, version)
        self._apply(name, self._planned(name, lambda state: plan_alias(state, self.pairs, alias, version)))
        return self.version(name, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._apply(name, self._planned(name, lambda state: plan_delete_alias(state, self.pairs, alias)))

    def serve(self, name: str, version: str) -> ModelVersion:
        """Make ``version`` the served one (the serving alias and Production, as the policy says)."""
        return self.set_alias(name, self.pairs.serving_alias, version)

    # --- rollouts ---------------------------------------------------------------------
    def promote(self, name: str, version: str, by: str = "") -> ModelVersion:
        """Serve ``version``; the version it replaces keeps the alias ``previous`` (for :meth:`rollback`),
        and the traffic policy returns to single."""
        replaced = self.state(name).aliases.get(self.pairs.serving_alias)
        self.serve(name, version)
        self._after_switch(name, version, replaced, by)
        return self.version(name, version)

    def rollback(self, name: str, by: str = "") -> ModelVersion:
        """Serve the version ``previous`` holds again, even Archived; the one it replaces becomes ``previous``."""
        state = self.state(name)
        previous = state.aliases.get(PREVIOUS_ALIAS)
        if previous is None:
            raise NotFound(f"model '{name}' has no alias '{PREVIOUS_ALIAS}': nothing to roll back to")
        replaced = state.aliases.get(self.pairs.serving_alias)
        if replaced == previous:
            raise Conflict(f"model '{name}': version {previous} is served already")
        if state.stages[previous] == "Production":
            changes = plan_alias(state, self.pairs, self.pairs.serving_alias, previous)
        else:
            changes = plan_transition(state, self.pairs, previous, "Production", restore=True)
        self._apply(name, changes)
        self._after_switch(name, previous, replaced, by)
        return self.version(name, previous)

    def _after_switch(self, name: str, served: str, replaced: str | None, by: str) -> None:
        if replaced and replaced != served:
            self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, replaced)
        self.set_traffic(name, TrafficPolicy())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.client.set_model_version_tag(name, served, TAG_PROMOTED_AT, stamp)
        self.client.set_model_version_tag(name, served, TAG_PROMOTED_BY, by or "unknown")

    def start_canary(self, name: str, version: str, policy: TrafficPolicy) -> None:
        """``version`` becomes the challenger, and ``policy`` (a canary of the challenger) applies."""
        self.set_alias(name, CHALLENGER_ALIAS, version)
        self.set_traffic(name, policy)

    def traffic(self, name: str) -> TrafficPolicy:
        return TrafficPolicy.from_tag(self.model(name).tags.get(TAG_TRAFFIC))

    def rollout_pairs(self) -> list[tuple[str, str]]:
        """(model, alias) for every model whose traffic policy sends requests to a second version (canary,
        shadow): what a model server loads as it starts, with each such model's served version."""
        pairs, token = [], None
        while True:
            page = self.client.search_registered_models(filter_string=f"tags.{TAG_TRAFFIC} LIKE '%alias%'",
                                                        max_results=100, page_token=token)
            for model in page:
                policy = TrafficPolicy.from_tag(model.tags.get(TAG_TRAFFIC))
                if policy.mode != "single" and policy.alias:
                    pairs.append((model.name, policy.alias))
            token = page.token
            if not token:
                return pairs

    def set_traffic(self, name: str, policy: TrafficPolicy) -> None:
        self.client.set_registered_model_tag(name, TAG_TRAFFIC, policy.to_tag())

    def _planned(self, name: str, plan: Callable[[RegistryState], list[Change]]) -> list[Change]:
        state = self.state(name)
        try:
            return plan(state)
        except Conflict as err:
            raise Conflict(f"model '{name}': {err}") from None
        except NotFound as err:
            raise NotFound(f"model '{name}' has {err}") from None

    def _apply(self, name: str, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, SetStage):
                with warnings.catch_warnings():
                    # deprecated since MLflow 2.9 and still supported: stages are offered on purpose
                    warnings.simplefilter("ignore", FutureWarning)
                    self.client.transition_model_version_stage(name, change.version, change.stage)
            elif isinstance(change, SetAlias):
                self.client.set_registered_model_alias(name, change.alias, change.version)
            else:
                self.client.delete_registered_model_alias(name, change.alias)
