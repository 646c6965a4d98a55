"""The job routes (GATEWAY_AUTH=mlflow), in process: a caller sees and cancels only the jobs of models they
may read (cancel: EDIT) and their own; a model not yet created is its first trainer's; feedback of another
model is that model's to read. The app and the in-memory permissions of test_route_permissions.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.test_route_permissions import MODEL, OTHER, basic, gateway  # noqa: F401 (the fixture)

NEW = "brand-new"


def train(http: TestClient, user: str, model: str, **more: object):
    return http.post("/train", json={"data_path": "rows.csv", "target": "label", "model_name": model, **more},
                     headers=basic(user))


@pytest.fixture(scope="module")
def jobs(gateway: TestClient) -> dict[str, str]:  # noqa: F811 (the imported fixture)
    """One queued job of each model: MODEL's and OTHER's by the admin, NEW's by a user with no grant."""
    made = {model: train(gateway, user, model) for model, user in ((MODEL, "admin"), (OTHER, "admin"), (NEW, "none"))}
    assert all(a.status_code == 202 for a in made.values()), {m: a.text for m, a in made.items()}
    return {model: answer.json()["job_id"] for model, answer in made.items()}


def listed(http: TestClient, user: str, path: str = "/train") -> set[str]:
    answer = http.get(path, headers=basic(user))
    assert answer.status_code == 200, answer.text
    return {job["model_name"] for job in answer.json()}


def test_a_caller_lists_and_reads_only_the_jobs_of_models_they_may_read_and_their_own(gateway, jobs):  # noqa: F811
    assert listed(gateway, "none") == {NEW}  # theirs, of a model that does not exist yet
    assert listed(gateway, "READ") == listed(gateway, "MANAGE") == {MODEL}
    assert listed(gateway, "admin") >= {MODEL, OTHER, NEW}
    for user, model, code in (("MANAGE", OTHER, 404), ("READ", NEW, 404), ("none", MODEL, 404),
                              ("READ", MODEL, 200), ("none", NEW, 200), ("admin", OTHER, 200)):
        answer = gateway.get(f"/train/{jobs[model]}", headers=basic(user))
        assert answer.status_code == code, (user, model, answer.text)
    assert gateway.get(f"/train/{jobs[OTHER]}", headers=basic("MANAGE")).json()["detail"] == \
        gateway.get("/train/no-such-job", headers=basic("MANAGE")).json()["detail"].replace("no-such-job", jobs[OTHER])


def test_monitoring_jobs_are_scoped_the_same_way(gateway, jobs):  # noqa: F811
    for model in (MODEL, OTHER):
        assert gateway.post("/monitor", json={"model_name": model}, headers=basic("admin")).status_code == 202
    assert listed(gateway, "READ", "/monitor") == {MODEL} and listed(gateway, "none", "/monitor") == set()
    (other,) = [j for j in gateway.get("/monitor", headers=basic("admin")).json() if j["model_name"] == OTHER]
    assert gateway.get(f"/monitor/{other['job_id']}", headers=basic("MANAGE")).status_code == 404


def test_cancelling_needs_edit_on_the_model_or_being_the_one_who_asked(gateway, jobs):  # noqa: F811
    assert gateway.delete(f"/train/{jobs[OTHER]}", headers=basic("MANAGE")).status_code == 404  # unseen
    refused = gateway.delete(f"/train/{jobs[MODEL]}", headers=basic("READ"))
    assert refused.status_code == 403 and "needs EDIT" in refused.json()["detail"]
    assert gateway.delete(f"/train/{jobs[NEW]}", headers=basic("none")).json()["status"] == "cancelled"
    assert gateway.delete(f"/train/{jobs[MODEL]}", headers=basic("EDIT")).json()["status"] == "cancelled"


def test_a_model_being_created_is_its_first_trainers_alone(gateway, jobs):  # noqa: F811
    first = train(gateway, "none", "claimed")
    assert first.status_code == 202
    second = train(gateway, "EDIT", "claimed")
    assert second.status_code == 409 and first.json()["job_id"] in second.json()["detail"], second.text
    assert train(gateway, "none", "claimed").status_code == 202  # the same user again: theirs


def test_training_on_another_models_feedback_needs_read_on_it(gateway, jobs):  # noqa: F811
    refused = train(gateway, "EDIT", MODEL, include_feedback=True, feedback_from=OTHER)
    assert refused.status_code == 403 and f"needs READ on registered model '{OTHER}'" in refused.json()["detail"]
    assert train(gateway, "EDIT", MODEL, include_feedback=True).status_code == 202  # its own model's feedback
