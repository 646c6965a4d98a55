"""Which models a model server loads the rollout of as it starts (contract/registry.py: rollout_pairs): those
whose traffic policy sends requests to a second version, across pages of the registry. A real MLflow registry
in a SQLite file."""

from __future__ import annotations

from mlflow import MlflowClient

from contract.registry import Registry
from contract.traffic import TAG_TRAFFIC, TrafficPolicy


def test_the_models_in_a_canary_or_shadow_and_only_they_are_listed_with_their_alias_across_pages(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    registry = Registry(client, "champion")
    canaries = [f"canary-{i:03d}" for i in range(101)]  # more than a page of the search
    for name in [*canaries, "shadowed", "single", "untagged", "unreadable"]:
        client.create_registered_model(name)
    for name in canaries:
        registry.set_traffic(name, TrafficPolicy.canary_default())
    registry.set_traffic("shadowed", TrafficPolicy("shadow", "b"))
    registry.set_traffic("single", TrafficPolicy())
    client.set_registered_model_tag("unreadable", TAG_TRAFFIC, '{"mode": "canary", "alias": ')  # cut short
    assert sorted(registry.rollout_pairs()) == sorted([(name, "challenger") for name in canaries] + [("shadowed", "b")])
