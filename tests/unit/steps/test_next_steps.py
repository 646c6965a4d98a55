"""What `mlflow run .` and `tune` print last: where the version is, how to see it and serve it."""

from __future__ import annotations

import mlflow
import pytest

from steps.runs import next_steps


@pytest.fixture
def tracking_uri():
    before = mlflow.get_tracking_uri()
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(before)


def test_a_local_store_gets_the_ui_command_on_a_port_the_stack_leaves_free(tracking_uri):
    tracking_uri("sqlite:////work/p/mlflow.db")
    text = next_steps("churn", "3")
    assert "models:/churn/3  (tracking: sqlite:////work/p/mlflow.db)" in text
    assert "mlflow ui --backend-store-uri sqlite:////work/p/mlflow.db -p 5050" in text
    assert "http://127.0.0.1:5050/#/models/churn/versions/3" in text
    assert ("MLFLOW_TRACKING_URI=sqlite:////work/p/mlflow.db mlflow models serve -m models:/churn/3 "
            "--env-manager local") in text


def test_a_tracking_server_gets_the_versions_page(tracking_uri):
    tracking_uri("http://127.0.0.1:5000/")
    assert "see it     http://127.0.0.1:5000/#/models/churn/versions/3" in next_steps("churn", "3")
