"""Real services on 127.0.0.1 for the gateway tests: tracking server, model server, gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.model_server import free_port
from gateway.settings import Settings
from gateway.stack import LocalStack
from tests.conftest import census_rows

TOKEN = "test-token"


def stack_settings(root: Path, data_root: Path, **overrides: object) -> Settings:
    values = dict(
        stack_dir=root / "stack", host="127.0.0.1", gateway_port=free_port("127.0.0.1"),
        mlflow_port=free_port("127.0.0.1"), model_server_port=free_port("127.0.0.1"),
        model_name="gw-test", data_roots=[data_root], experiment_name="gateway-tests",
        registry_poll_seconds=0.5, drain_seconds=2.0, api_token=TOKEN,
        mlflow_tracking_uri=None, model_server_url=None,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    census_rows(1500).to_csv(root / "census-small.csv", index=False)
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[LocalStack]:
    """Tracking server, model server and gateway as real processes; stopped afterwards."""
    local = LocalStack(stack_settings(tmp_path_factory.mktemp("stack"), data_root))
    try:
        local.start_tracking()
        local.start_model_server(wait_for_model=False)
        local.start_gateway()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
