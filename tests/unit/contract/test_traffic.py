"""The traffic policy (contract.traffic): stable routing, sound policies, and its place in the registry."""

from __future__ import annotations

import mlflow
import pytest

from contract.registry import Conflict, NotFound, Registry
from contract.traffic import TrafficPolicy, share, to_canary
from tests.conftest import registered_versions


def test_a_key_has_one_place_everywhere():
    assert share("customer-42") == share("customer-42")  # not Python's salted hash: the same in every process
    assert share("customer-42") == pytest.approx(62.6067, abs=1e-4)  # and the same across releases


def test_a_canary_takes_its_share_of_keys():
    canary = TrafficPolicy("canary", "challenger", 20.0)
    taken = sum(to_canary(canary, f"request-{i}") for i in range(20_000))
    assert abs(taken / 20_000 - 0.20) < 0.01
    assert not any(to_canary(TrafficPolicy(), f"request-{i}") for i in range(1000))


def test_policies_are_checked_field_by_field():
    assert TrafficPolicy.canary_default().problems("champion") == []
    assert TrafficPolicy("shadow", "challenger").problems("champion") == []
    assert [f for f, _ in TrafficPolicy("canary", None, 150).problems("champion")] == ["alias", "percent"]
    assert [f for f, _ in TrafficPolicy("canary", "champion", 5).problems("champion")] == ["alias"]
    assert [f for f, _ in TrafficPolicy("single", percent=5).problems("champion")] == ["percent"]
    assert [f for f, _ in TrafficPolicy("shadow", "challenger", 5).problems("champion")] == ["percent"]


def test_an_unreadable_tag_means_single():
    assert TrafficPolicy.from_tag(None) == TrafficPolicy()
    assert TrafficPolicy.from_tag("{not json") == TrafficPolicy()
    assert TrafficPolicy.from_tag('{"mode": "teleport"}') == TrafficPolicy()
    policy = TrafficPolicy("canary", "challenger", 12.5, "city")
    assert TrafficPolicy.from_tag(policy.to_tag()) == policy


def test_promote_keeps_the_replaced_version_as_previous_and_rollback_restores_it(tracking):
    client = mlflow.MlflowClient()
    registered_versions(client, "m", 3)
    registry = Registry(client, "champion")
    with pytest.raises(NotFound, match="nothing to roll back to"):
        registry.rollback("m")
    registry.promote("m", "1")
    registry.start_canary("m", "2", TrafficPolicy.canary_default())
    assert registry.traffic("m").mode == "canary" and registry.state("m").stages["2"] == "Staging"
    registry.promote("m", "2", by="alice")
    state = registry.state("m")
    assert state.aliases == {"champion": "2", "previous": "1"}  # the challenger alias left with Staging
    assert state.stages == {"1": "Archived", "2": "Production", "3": "None"}
    assert registry.traffic("m") == TrafficPolicy()  # the canary is over
    assert client.get_model_version("m", "2").tags["promoted_by"] == "alice"
    registry.rollback("m", by="bob")  # the archived version comes back in one call
    state = registry.state("m")
    assert state.aliases == {"champion": "1", "previous": "2"}
    assert state.stages == {"1": "Production", "2": "Archived", "3": "None"}
    registry.rollback("m")  # and back again
    assert registry.state("m").aliases == {"champion": "2", "previous": "1"}
    registry.set_alias("m", "previous", "2")
    with pytest.raises(Conflict, match="served already"):
        registry.rollback("m")
