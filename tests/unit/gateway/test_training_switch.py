"""GATEWAY_TRAINING=false: the scaled-out gateway pods on Kubernetes leave training to the trainer."""

from __future__ import annotations

from gateway.app import create_app
from contract.settings import Settings
from tests.unit.gateway.test_observability import call


def test_a_gateway_with_training_off_answers_503_on_every_train_route(tmp_path):
    app = create_app(Settings(stack_dir=tmp_path, training_enabled=False, api_token=None))
    for method, path in (("GET", "/train"), ("POST", "/train"), ("GET", "/train/x"), ("DELETE", "/train/x")):
        answer = call(app, method, path, json={"data_path": "x.csv", "target": "y"})
        assert answer.status_code == 503 and "GATEWAY_TRAINING=false" in answer.json()["detail"], (method, path)
