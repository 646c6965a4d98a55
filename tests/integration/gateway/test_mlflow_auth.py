"""GATEWAY_AUTH=mlflow on real processes: the tracking server runs MLflow's basic-auth app, callers are
its users, and MLflow's per-model permission decides each route (gateway/auth.py).

Users: ``reader`` (READ), ``editor`` (EDIT) and ``manager`` (MANAGE) on model ``guarded``, ``outsider``
with nothing; nobody but the admin on model ``other``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest

from stack.local import LocalStack
from tests.integration.conftest import running_stack
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

ADMIN = ("admin", "adm1n-Passw0rd-for-tests")
USERS = {name: f"{name}-Passw0rd-123" for name in ("reader", "editor", "manager", "outsider")}
GRANTS = {"reader": "READ", "editor": "EDIT", "manager": "MANAGE"}
MODEL, OTHER = "guarded", "other"
CACHE_SECONDS = 2.0


def as_user(name: str | None) -> dict[str, str]:
    """httpx keyword arguments: the user's Basic credentials (none for None)."""
    if name is None:
        return {}
    return {"auth": ADMIN if name == "admin" else (name, USERS[name])}


class Tracking:
    """The tracking server's own REST API, as its admin."""

    def __init__(self, uri: str):
        self.http = httpx.Client(base_url=uri, auth=ADMIN, timeout=30)

    def call(self, path: str, body: dict) -> dict:
        answer = self.http.post(path, json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def grant(self, user: str, model: str, permission: str) -> None:
        self.call("/api/3.0/mlflow/users/permissions/grant", {"username": user, "resource_type": "registered_model",
                                                             "resource_id": model, "permission": permission})

    def revoke(self, user: str, model: str) -> None:
        self.call("/api/3.0/mlflow/users/permissions/revoke",
                  {"username": user, "resource_type": "registered_model", "resource_id": model})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[tuple[LocalStack, Tracking]]:
    root = tmp_path_factory.mktemp("auth")
    # artifacts proxied by the tracking server, as compose and Kubernetes run it: MLflow's auth app then guards
    # artifact writes too (by the run's experiment)
    with running_stack(root, data_root, auth="mlflow", api_token=None,
                       backend_store_uri=f"sqlite:///{root / 'tracking.db'}",
                       mlflow_admin_username=ADMIN[0], mlflow_admin_password=ADMIN[1],
                       auth_cache_seconds=CACHE_SECONDS, model_name=MODEL) as stack:
        tracking = Tracking(stack.tracking_uri)
        for user, password in USERS.items():
            tracking.call("/api/2.0/mlflow/users/create", {"username": user, "password": password})
        tracking.call("/api/2.0/mlflow/registered-models/create", {"name": OTHER})
        yield stack, tracking
        tracking.http.close()


@pytest.fixture(scope="module")
def gateway(secured) -> Iterator[httpx.Client]:
    stack, tracking = secured
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=60) as api:
        # the admin trains and serves version 1 through the gateway, as any MLflow user would
        started = api.post("/train", json={"data_path": "census-small.csv", "target": "income", "model_name": MODEL,
                                           "n_estimators": 10}, **as_user("admin"))
        assert started.status_code == 202, started.text
        job = _finished(api, started)
        assert job["status"] == "succeeded", job
        assert api.put(f"/models/{MODEL}/aliases/champion", json={"version": "1"},
                       **as_user("admin")).status_code == 200
        for user, permission in GRANTS.items():
            tracking.grant(user, MODEL, permission)
        yield api


def _finished(api: httpx.Client, started: httpx.Response, user: str = "admin") -> dict:
    job_id = started.json()["job_id"]
    return wait_for(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
        api.get(f"/train/{job_id}", **as_user(user)).json()), 600, f"job {job_id}")


def admin_client(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    """The test's own MLflow client, as the admin (MLflow clients read credentials from the environment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    return mlflow.MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)


def rows(api: httpx.Client) -> dict:
    return api.get(f"/models/{MODEL}/schema", **as_user("admin")).json()["example"]


def test_the_route_matrix_follows_mlflow_permissions(gateway: httpx.Client):
    api, body = gateway, rows(gateway)
    wait_for(lambda: api.post(f"/models/{MODEL}/predict", json=body, **as_user("admin")).status_code == 200, 120,
             "version 1 served")
    bad_train = {"data_path": "census-small.csv", "model_name": MODEL}  # no target: 422 once past the check
    routes = {  # route -> the least permission it needs
        ("POST", f"/models/{MODEL}/predict", json.dumps(body)): "READ",
        ("POST", "/predict", json.dumps(body)): "READ",
        ("GET", f"/models/{MODEL}", None): "READ",
        ("GET", f"/models/{MODEL}/schema", None): "READ",
        ("GET", f"/models/{MODEL}/traffic", None): "READ",
        ("GET", f"/v2/models/{MODEL}", None): "READ",
        ("POST", "/train", json.dumps(bad_train)): "EDIT",
        ("PUT", f"/models/{MODEL}/aliases/review", json.dumps({"version": "1"})): "MANAGE",
        ("POST", f"/models/{MODEL}/versions/1/stage", json.dumps({"stage": "Production"})): "MANAGE",
        ("PUT", f"/models/{MODEL}/traffic", json.dumps({"mode": "single"})): "MANAGE",
    }
    ranks = {"READ": 1, "EDIT": 3, "MANAGE": 4}
    for (method, path, content), needed in routes.items():
        headers = {"content-type": "application/json"}
        anonymous = api.request(method, path, content=content, headers=headers)
        assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"], (path, anonymous.text)
        wrong = api.request(method, path, content=content, headers=headers, auth=("reader", "not-the-password"))
        assert wrong.status_code == 401, (path, wrong.text)
        for user in ("outsider", *GRANTS):
            answer = api.request(method, path, content=content, headers=headers, **as_user(user))
            allowed = ranks.get(GRANTS.get(user, ""), 0) >= ranks[needed]
            if allowed:  # past the check: done, or the route's own answer (a 409 for a move already made)
                assert answer.status_code in (200, 202, 409, 422), (user, method, path, answer.text)
                assert answer.status_code != 422 or path == "/train", (user, path, answer.text)
            else:
                assert answer.status_code == 403, (user, method, path, answer.text)
                message = answer.json().get("detail") or answer.json().get("error")
                assert f"needs {needed} on registered model '{MODEL}'" in message and f"'{user}'" in message
    # nobody but the admin has anything on the other model; the list shows each caller what they may read
    assert api.get(f"/models/{OTHER}", **as_user("manager")).status_code == 403
    assert [m["name"] for m in api.get("/models", **as_user("reader")).json()] == [MODEL]
    assert {m["name"] for m in api.get("/models", **as_user("admin")).json()} == {MODEL, OTHER}
    assert api.get("/models", **as_user("outsider")).json() == []


def test_a_reader_cannot_promote_and_a_manager_can_with_the_change_recorded_as_theirs(gateway, secured, monkeypatch):
    api, (stack, _) = gateway, secured
    assert api.post(f"/models/{MODEL}/promote", json={"alias": "review"}, **as_user("reader")).status_code == 403
    assert api.put(f"/models/{MODEL}/aliases/review", json={"version": "1"}, **as_user("manager")).status_code == 200
    promoted = api.post(f"/models/{MODEL}/promote", json={"alias": "review"}, **as_user("manager"))
    assert promoted.status_code == 200, promoted.text
    tags = admin_client(stack, monkeypatch).get_model_version(MODEL, "1").tags
    assert tags["promoted_by"] == "manager"
    audit = [json.loads(line) for line in stack.log_file("gateway").read_text().splitlines()
             if '"gateway.audit"' in line]
    mine = [a for a in audit if a.get("user") == "manager" and a.get("route") == "/models/{name}/promote"]
    assert mine and mine[-1]["model"] == MODEL and mine[-1]["outcome"] == "done", audit[-3:]
    refused = [a for a in audit if a.get("route") == "/models/{name}/promote" and a.get("outcome") == "refused"]
    assert refused and refused[0]["user"] == "unknown"


def test_an_editors_training_job_runs_and_registers_as_the_editor(gateway, secured, monkeypatch):
    api, (stack, _) = gateway, secured
    started = api.post("/train", json={"data_path": "census-small.csv", "target": "income", "model_name": MODEL,
                                       "n_estimators": 10}, **as_user("editor"))
    assert started.status_code == 202, started.text
    job = _finished(api, started, "editor")
    assert job["status"] == "succeeded" and job["requested_by"] == "editor", job
    client = admin_client(stack, monkeypatch)
    run = client.get_run(job["run_id"])
    assert run.info.user_id == "editor" and run.data.tags["mlflow.user"] == "editor"
    assert client.get_model_version(MODEL, job["model_version"]).run_id  # registered, with the editor's credentials
    # a reader may not train it
    assert api.post("/train", json={"data_path": "census-small.csv", "target": "income", "model_name": MODEL},
                    **as_user("reader")).status_code == 403


def test_training_a_model_of_ones_own_reaches_no_other_models_runs_artifacts_or_jobs(gateway, secured, monkeypatch):
    """Symptoms 5 and 6 of issue 33: EDIT on the one shared training experiment, granted to whoever trained
    a model, reached every model's runs and (artifacts proxied) the code logged with them; and every job
    was listed to every caller."""
    api, (stack, tracking) = gateway, secured
    client = admin_client(stack, monkeypatch)
    victim = client.get_run(client.get_model_version(MODEL, "1").run_id)
    assert victim.info.artifact_uri.startswith("mlflow-artifacts:/"), victim.info.artifact_uri
    stored = victim.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")

    def tamper(user: str) -> tuple[int, int]:
        """(setting a tag on the victim's run, writing a file into its artifacts), as ``user``."""
        tagged = tracking.http.post("/api/2.0/mlflow/runs/set-tag", auth=(user, USERS[user]),
                                    json={"run_id": victim.info.run_id, "key": "tampered", "value": user})
        written = tracking.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{stored}/model/tampered.py",
                                    content=b"raise SystemExit", auth=(user, USERS[user]))
        return tagged.status_code, written.status_code

    assert tamper("outsider") == (403, 403)
    own = "outsiders-own"
    started = api.post("/train", json={"data_path": "census-small.csv", "target": "income", "model_name": own,
                                       "n_estimators": 5}, **as_user("outsider"))
    assert started.status_code == 202, started.text
    # a model not yet registered is its first trainer's: nobody else's job may write to it meanwhile
    contested = api.post("/train", json={"data_path": "census-small.csv", "target": "income", "model_name": own},
                         **as_user("editor"))
    assert contested.status_code == 409 and started.json()["job_id"] in contested.text, contested.text
    job = _finished(api, started, "outsider")  # their own job, of a model that did not exist: theirs to follow
    assert job["status"] == "succeeded", job
    assert tamper("outsider") == (403, 403), "training a model of one's own reached another model's run"
    assert "tampered" not in client.get_run(victim.info.run_id).data.tags
    # their own run they may read, no longer write: the job's EDIT lasted as long as the job
    own_run = client.get_run(job["run_id"])
    assert own_run.info.experiment_id != victim.info.experiment_id
    assert tracking.http.post("/api/2.0/mlflow/runs/set-tag", auth=("outsider", USERS["outsider"]), json={
        "run_id": job["run_id"], "key": "later", "value": "x"}).status_code == 403
    assert tracking.http.get("/api/2.0/mlflow/runs/get", auth=("outsider", USERS["outsider"]),
                             params={"run_id": job["run_id"]}).status_code == 200

    # job listings and records follow the models' permissions
    def listed(user: str, path: str = "/train") -> set[str]:
        answer = api.get(path, **as_user(user))
        assert answer.status_code == 200, answer.text
        return {j["model_name"] for j in answer.json()}

    assert listed("outsider") == {own}
    assert listed("reader") == {MODEL}
    assert listed("admin") >= {MODEL, own}
    others = [j for j in api.get("/train", **as_user("admin")).json() if j["model_name"] == MODEL]
    for method in ("GET", "DELETE"):
        hidden = api.request(method, f"/train/{others[0]['job_id']}", **as_user("outsider"))
        assert hidden.status_code == 404, hidden.text
    assert api.get(f"/train/{others[0]['job_id']}", **as_user("reader")).status_code == 200
    # the manager never trained it, so holds nothing on its experiments: monitoring runs as the gateway
    monitored = api.post("/monitor", json={"model_name": MODEL}, **as_user("manager"))
    assert monitored.status_code == 202, monitored.text
    assert listed("outsider", "/monitor") == set() and listed("reader", "/monitor") == {MODEL}
    assert api.get(monitored.headers["Location"], **as_user("outsider")).status_code == 404
    assert api.get(monitored.headers["Location"], **as_user("reader")).status_code == 200
    done = wait_for(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
        api.get(monitored.headers["Location"], **as_user("manager")).json()), 300, "the monitoring job")
    assert done["status"] == "succeeded" and done["summary"]["status"], done


def test_a_revoked_permission_is_out_within_the_cache_time_and_mlflow_checks_the_caller_itself(gateway, secured):
    api, (_, tracking) = gateway, secured
    body = rows(api)
    assert api.post(f"/models/{MODEL}/predict", json=body, **as_user("reader")).status_code == 200
    tracking.revoke("reader", MODEL)
    refused = wait_for(lambda: (lambda a: a if a.status_code == 403 else None)(
        api.post(f"/models/{MODEL}/predict", json=body, **as_user("reader"))), CACHE_SECONDS + 3, "the revocation")
    assert "needs READ" in refused.json()["detail"]

    # the gateway's check is cached, MLflow's own is not: registry calls carry the caller's credentials
    checked = time.monotonic()
    assert api.put(f"/models/{MODEL}/aliases/review", json={"version": "1"}, **as_user("manager")).status_code == 200
    tracking.revoke("manager", MODEL)
    right_after = api.put(f"/models/{MODEL}/aliases/review", json={"version": "1"}, **as_user("manager"))
    assert right_after.status_code == 403, right_after.text
    if time.monotonic() - checked < CACHE_SECONDS:  # the gateway still trusted its cached MANAGE: MLflow refused
        assert "the tracking server refused user 'manager'" in right_after.json()["detail"], right_after.text
    tracking.grant("manager", MODEL, "MANAGE")
    tracking.grant("reader", MODEL, "READ")


def test_schemathesis_with_an_mlflow_users_credentials_finds_no_server_error_and_no_auth_left_undeclared(
        secured, gateway, tmp_path):
    """The fuzzing of tests/integration/gateway/test_fuzz.py in this mode, fewer cases: as the admin, with
    schemathesis' ``ignored_auth`` check (every route the OpenAPI document declares guarded refuses a
    request without credentials) among all the others."""
    stack, _ = secured
    document = gateway.get("/openapi.json").json()
    guarded = [operation for operations in document["paths"].values() for operation in operations.values()
               if operation.get("security")]
    assert len(guarded) > 20 and all({"401", "403"} <= set(operation["responses"]) for operation in guarded)
    # Every model and version the fuzzer can name is looked up and loaded first: the 503 (with Retry-After) a
    # model's first request gets while that happens is right, and not what this run looks for; so is the 503
    # of a model with nothing promoted (as /predict's before the first promotion), so that one goes
    _, tracking = secured
    deleted = tracking.http.request("DELETE", "/api/2.0/mlflow/registered-models/delete", json={"name": OTHER})
    assert deleted.status_code == 200, deleted.text
    versions = [v["version"] for v in gateway.get(f"/models/{MODEL}", **as_user("admin")).json()["versions"]]
    for target in ["/predict", *(f"/models/{MODEL}/predict?version={v}" for v in versions)]:
        wait_for(lambda t=target: gateway.post(t, json=rows(gateway), **as_user("admin")).status_code == 200,
                 120, f"{target} answering")
    wait_for(lambda: gateway.post(f"/models/{OTHER}/predict", json=rows(gateway),
                                  **as_user("admin")).status_code == 404, 60, f"{OTHER} gone")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    credentials = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    done = subprocess.run([
        str(schemathesis), "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "--no-color",
        "run", f"{stack.settings.gateway_url}/openapi.json", "--checks", "all", "--max-examples", "3",
        "--seed", "20261128", "--header", f"Authorization: {credentials}", "--request-timeout", "60",
        "--report", "junit", "--report-dir", str(tmp_path),
    ], capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in output, output[-3000:]
