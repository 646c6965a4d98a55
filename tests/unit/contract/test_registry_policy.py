"""The one alias/stage policy (contract.registry.plan_*), as pure functions: no MLflow needed."""

from __future__ import annotations

import pytest

from contract.registry import (
    Conflict,
    DeleteAlias,
    NotFound,
    Pairs,
    RegistryState,
    SetAlias,
    SetStage,
    plan_alias,
    plan_delete_alias,
    plan_transition,
)

PAIRS = Pairs(serving_alias="prod")


def apply(state: RegistryState, changes: list) -> RegistryState:
    stages, aliases = dict(state.stages), dict(state.aliases)
    for change in changes:
        if isinstance(change, SetStage):
            stages[change.version] = change.stage
        elif isinstance(change, SetAlias):
            aliases[change.alias] = change.version
        else:
            del aliases[change.alias]
    return RegistryState(stages, aliases)


def assert_pairs_whole(state: RegistryState) -> None:
    """Exactly the version holding each paired alias is in its stage."""
    for alias, stage in (("prod", "Production"), ("challenger", "Staging")):
        in_stage = sorted(v for v, s in state.stages.items() if s == stage)
        holder = state.aliases.get(alias)
        assert in_stage == ([holder] if holder else []), (alias, state)


SERVED_1 = RegistryState({"1": "Production", "2": "None", "3": "Staging"}, {"prod": "1", "challenger": "3"})


def test_moving_the_serving_alias_moves_production_and_archives_the_old_holder():
    changes = plan_alias(SERVED_1, PAIRS, "prod", "2")
    after = apply(SERVED_1, changes)
    assert after.stages == {"1": "Archived", "2": "Production", "3": "Staging"}
    assert after.aliases == {"prod": "2", "challenger": "3"}
    assert_pairs_whole(after)
    # the new holder is in place before the old one leaves: a follower never sees the pair empty
    assert changes.index(SetAlias("prod", "2")) < changes.index(SetStage("1", "Archived"))


def test_a_production_transition_moves_the_serving_alias_whichever_route_was_taken():
    by_stage = apply(SERVED_1, plan_transition(SERVED_1, PAIRS, "2", "Production"))
    by_alias = apply(SERVED_1, plan_alias(SERVED_1, PAIRS, "prod", "2"))
    assert by_stage == by_alias


def test_promoting_the_challenger_takes_it_out_of_staging_and_drops_its_alias():
    after = apply(SERVED_1, plan_transition(SERVED_1, PAIRS, "3", "Production"))
    assert after.stages == {"1": "Archived", "2": "None", "3": "Production"}
    assert after.aliases == {"prod": "3"}
    assert_pairs_whole(after)


def test_every_extra_production_version_is_archived_not_only_the_alias_holder():
    drifted = RegistryState({"1": "Production", "2": "Production", "3": "None"}, {"prod": "1"})
    after = apply(drifted, plan_transition(drifted, PAIRS, "3", "Production"))
    assert after.stages == {"1": "Archived", "2": "Archived", "3": "Production"}
    assert_pairs_whole(after)


def test_staging_replaces_the_challenger_which_returns_to_none_or_is_archived_on_request():
    assert apply(SERVED_1, plan_transition(SERVED_1, PAIRS, "2", "Staging")).stages["3"] == "None"
    archived = apply(SERVED_1, plan_transition(SERVED_1, PAIRS, "2", "Staging", archive_existing=True))
    assert archived.stages["3"] == "Archived" and archived.aliases["challenger"] == "2"
    assert_pairs_whole(archived)


def test_leaving_production_drops_the_serving_alias():
    after = apply(SERVED_1, plan_transition(SERVED_1, PAIRS, "1", "Archived"))
    assert "prod" not in after.aliases and after.stages["1"] == "Archived"
    assert_pairs_whole(after)


def test_deleting_the_serving_alias_takes_its_version_out_of_production():
    assert plan_delete_alias(SERVED_1, PAIRS, "prod") == [SetStage("1", "None"), DeleteAlias("prod")]
    assert_pairs_whole(apply(SERVED_1, plan_delete_alias(SERVED_1, PAIRS, "prod")))


def test_other_aliases_touch_no_stage():
    assert plan_alias(SERVED_1, PAIRS, "nightly", "2") == [SetAlias("nightly", "2")]
    with_nightly = RegistryState(SERVED_1.stages, {**SERVED_1.aliases, "nightly": "2"})
    assert plan_delete_alias(with_nightly, PAIRS, "nightly") == [DeleteAlias("nightly")]
    assert plan_alias(with_nightly, PAIRS, "nightly", "2") == []  # already there: nothing to do


def test_the_serving_alias_is_a_setting_champion_is_only_its_default():
    champion = Pairs(serving_alias="champion")
    assert plan_alias(SERVED_1, champion, "champion", "2")[:2] == [SetStage("2", "Production"), SetAlias("champion", "2")]
    assert plan_alias(SERVED_1, PAIRS, "champion", "2") == [SetAlias("champion", "2")]  # just a name under "prod"


def test_refused_moves():
    with pytest.raises(Conflict, match="already in stage Production"):
        plan_transition(SERVED_1, PAIRS, "1", "Production")
    archived = RegistryState({"1": "Archived", "2": "Production"}, {"prod": "2"})
    with pytest.raises(Conflict, match="Staging before Production"):
        plan_transition(archived, PAIRS, "1", "Production")
    with pytest.raises(Conflict, match="Staging before Production"):
        plan_alias(archived, PAIRS, "prod", "1")
    with pytest.raises(NotFound, match="no alias 'nobody'"):
        plan_delete_alias(SERVED_1, PAIRS, "nobody")


def test_a_serving_alias_already_in_place_changes_nothing_and_a_missing_one_is_restored():
    assert plan_alias(SERVED_1, PAIRS, "prod", "1") == []
    lost = RegistryState({"1": "Production"}, {})  # a registry changed by hand outside the gateway
    assert plan_alias(lost, PAIRS, "prod", "1") == [SetAlias("prod", "1")]


def test_the_registry_applies_the_policy_on_a_real_store_whose_client_hands_out_int_versions(tracking):
    import mlflow

    from contract.registry import Registry
    from tests.conftest import registered_versions

    client = mlflow.MlflowClient()
    registered_versions(client, "m", 2)
    registry = Registry(client, "prod")
    registry.serve("m", "1")
    registry.serve("m", "2")
    assert registry.state("m") == RegistryState({"1": "Archived", "2": "Production"}, {"prod": "2"})
