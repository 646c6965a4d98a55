"""Per-model permissions at route level (GATEWAY_AUTH=mlflow), in process: every route x every permission level.

The gateway's app as ``create_app`` builds it, its routes and their dependencies unchanged, on a real MLflow
registry (SQLite) and inference log; the one stand-in is where the permissions come from: the two questions
the gateway asks MLflow's auth app (is this user an admin, what is their permission on this model) answered
from a table in memory, behind MlflowPermissions' own cache and admin rule. MLflow's real auth app is
exercised in tests/integration/gateway/test_mlflow_auth.py. The job routes (GET /train, /monitor, a job,
cancelling one) are scoped per model elsewhere and are not in this table.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import mlflow
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from contract.registry import Registry
from contract.settings import Settings
from gateway.app import create_app
from gateway.auth import Authorizer, Caller, MlflowPermissions, unauthorized
from gateway.inference_log import InferenceLog
from gateway.jobs import JobStore, TrainingJobRunner
from gateway.model_client import ModelServerClient
from gateway.model_info import ModelInfoCache
from gateway.predictor import Predictor
from gateway.rollouts import Rollouts
from tests.conftest import registered_versions, temporary_tracking

MODEL, OTHER = "guarded", "other"
LEVELS = ("none", "READ", "EDIT", "MANAGE", "admin")
# user -> (is an MLflow admin, permission on MODEL); nobody holds anything on OTHER but the admin
USERS = {"none": (False, None), "READ": (False, "READ"), "EDIT": (False, "EDIT"), "MANAGE": (False, "MANAGE"),
         "admin": (True, None)}
ROW = {"age": "39", "hours": "40", "colour": "red", "city": "Oslo"}
PREDICTION = "{m}-request-0"  # the first prediction of a request the model answered, in the inference log

# What each route needs, written out: yes = the caller gets past the permission check, no = 403.
#                                                  none   READ   EDIT   MANAGE admin
TABLE = {
    "POST /models/{m}/predict":                     ("no", "yes", "yes", "yes", "yes"),
    "POST /v2/models/{m}/infer":                    ("no", "yes", "yes", "yes", "yes"),
    "POST /models/{m}/explain":                     ("no", "yes", "yes", "yes", "yes"),
    "GET /models/{m}":                              ("no", "yes", "yes", "yes", "yes"),
    "GET /models/{m}/schema":                       ("no", "yes", "yes", "yes", "yes"),
    "GET /models/{m}/versions/1":                   ("no", "yes", "yes", "yes", "yes"),
    "GET /models/{m}/traffic":                      ("no", "yes", "yes", "yes", "yes"),
    "POST /feedback":                               ("no", "no", "yes", "yes", "yes"),
    "POST /monitor":                                ("no", "no", "yes", "yes", "yes"),
    "POST /train":                                  ("no", "no", "yes", "yes", "yes"),
    "POST /models/{m}/versions/2/stage":            ("no", "no", "no", "yes", "yes"),
    "PUT /models/{m}/aliases/challenger":           ("no", "no", "no", "yes", "yes"),
    "DELETE /models/{m}/aliases/challenger":        ("no", "no", "no", "yes", "yes"),
    "PUT /models/{m}/traffic":                      ("no", "no", "no", "yes", "yes"),
    "POST /models/{m}/promote":                     ("no", "no", "no", "yes", "yes"),
    "POST /models/{m}/rollback":                    ("no", "no", "no", "yes", "yes"),
}
BODIES = {
    "POST /models/{m}/predict": {"records": [ROW]},
    "POST /v2/models/{m}/infer": {"inputs": [{"name": k, "shape": [1], "datatype": "BYTES", "data": [v]}
                                             for k, v in ROW.items()]},
    "POST /models/{m}/explain": {"records": [ROW]},
    "POST /feedback": {"labels": [{"id": PREDICTION, "label": "yes"}]},
    "POST /monitor": {"model_name": "{m}"},
    "POST /train": {"data_path": "rows.csv", "target": "label", "model_name": "{m}"},
    "POST /models/{m}/versions/2/stage": {"stage": "Staging"},
    "PUT /models/{m}/aliases/challenger": {"version": "2"},
    "PUT /models/{m}/traffic": {"mode": "single"},
    "POST /models/{m}/promote": {"alias": "challenger"},
}


class GrantsInMemory(MlflowPermissions):
    """MlflowPermissions (its cache, its admin rule) answering its two questions to the tracking server's
    auth app from ``USERS`` instead of over HTTP."""

    def __init__(self) -> None:
        super().__init__("http://unused", ttl=60.0)

    @staticmethod
    def _known(caller: Caller) -> tuple[bool, str | None]:
        if caller.username not in USERS or caller.password != f"{caller.username}-pw":
            raise unauthorized(f"the tracking server does not know user {caller.username!r} with that password")
        return USERS[caller.username]

    async def _ask_is_admin(self, caller: Caller, _: str) -> str:
        return "admin" if self._known(caller)[0] else "user"

    async def _ask_permission(self, caller: Caller, model: str) -> str:
        granted = self._known(caller)[1]
        return (granted if model == MODEL else None) or "NO_PERMISSIONS"


def basic(user: str, password: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password or user + '-pw'}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("route-permissions")
    data = root / "data"
    data.mkdir()
    (data / "rows.csv").write_text("age,hours,colour,city,label\n39,40,red,Oslo,yes\n50,20,blue,Lima,no\n")
    with temporary_tracking(root) as tracking:
        settings = Settings(_env_file=None, stack_dir=root, auth="mlflow", mlflow_admin_password="x" * 20,
                            mlflow_tracking_uri=tracking.uri, data_roots=[str(data)],
                            model_server_url="http://127.0.0.1:9")  # no model server: a predict ends in 503
        client = mlflow.MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
        for name in (MODEL, OTHER):
            registered_versions(client, name, 2)
            client.set_registered_model_alias(name, "champion", "1")
        app = create_app(settings)
        app.router.lifespan_context = lambda app: in_process_state(app, settings, client)
        with TestClient(app, raise_server_exceptions=False) as http:
            yield http


@contextlib.asynccontextmanager
async def in_process_state(app: FastAPI, settings: Settings, client: mlflow.MlflowClient) -> AsyncIterator[None]:
    """What the app's own lifespan builds, but the permissions from memory and no background loop."""
    state = app.state
    state.authorizer = Authorizer(settings, GrantsInMemory())
    state.registry = Registry(client, settings.serve_alias)
    state.model_info = ModelInfoCache(state.registry, settings.tracking_uri)
    state.jobs = TrainingJobRunner(JobStore(settings.jobs_db), settings, client)  # not started: jobs stay queued
    state.model_client = ModelServerClient(settings, state.metrics)
    state.inference_log = InferenceLog(settings, state.metrics)
    for name in (MODEL, OTHER):
        state.inference_log.record(f"{name}-request", None, name, "1", "json", [ROW], [{"label": "yes"}], 1.0)
    state.rollouts = Rollouts(state.registry, settings, state.metrics)
    state.predictor = Predictor(settings, state.model_client, state.metrics, state.inference_log, state.rollouts)
    try:
        yield
    finally:
        await state.rollouts.close()
        await state.model_client.close()
        await state.inference_log.stop()


def call(http: TestClient, route: str, model: str, headers: dict[str, str]) -> httpx.Response:
    method, path = route.split(" ")
    body = json.dumps(BODIES[route]).replace("{m}", model) if route in BODIES else None
    headers = {**headers, "Content-Type": "application/json"} if body else headers
    return http.request(method, path.replace("{m}", model), content=body, headers=headers)


def outcome(answer: httpx.Response) -> str:
    """no: refused for the permission (403; /feedback refuses label by label, in a 422 naming the model);
    yes: past the check, whatever the route answers next. Here that is often a failure of its own (no model
    server; versions of the SQLite registry that this project did not log, numbered as integers where the
    tracking server's REST API gives text): none is a permission's, which are 401 or 403 only."""
    if answer.status_code == 403:
        return "no"
    if answer.status_code == 422 and any(e.get("type") == "forbidden" for e in answer.json().get("errors", [])):
        return "no"
    assert answer.status_code != 401, answer.text
    return "yes"


@pytest.mark.parametrize("route", TABLE)
def test_each_route_needs_its_permission_on_the_model(gateway, route):
    seen = tuple(outcome(call(gateway, route, MODEL, basic(user))) for user in LEVELS)
    assert dict(zip(LEVELS, seen)) == dict(zip(LEVELS, TABLE[route]))


@pytest.mark.parametrize("route", TABLE)
def test_a_permission_on_one_model_reaches_no_other(gateway, route):
    """MANAGE on MODEL is nothing on OTHER; an admin may do anything anywhere."""
    assert outcome(call(gateway, route, OTHER, basic("MANAGE"))) == "no"
    assert outcome(call(gateway, route, OTHER, basic("admin"))) == "yes"


@pytest.mark.parametrize("route", TABLE)
def test_no_or_wrong_credentials_are_401_on_every_route(gateway, route):
    assert call(gateway, route, MODEL, {}).status_code == 401
    assert call(gateway, route, MODEL, basic("READ", "wrong")).status_code == 401


def test_a_refusal_names_the_user_the_permission_needed_and_the_model(gateway):
    answer = call(gateway, "PUT /models/{m}/aliases/challenger", MODEL, basic("EDIT"))
    assert answer.json()["detail"] == "user 'EDIT' needs MANAGE on registered model 'guarded' (has EDIT)"
    label = call(gateway, "POST /feedback", MODEL, basic("READ")).json()["errors"][0]
    assert label["msg"] == "user 'READ' needs EDIT on registered model 'guarded' (has READ)"


def test_training_a_model_that_does_not_exist_yet_needs_only_a_known_user(gateway):
    """MLflow's own rule for creating registered models decides when the job registers it."""
    body = {"data_path": "rows.csv", "target": "label", "model_name": "brand-new"}
    assert gateway.post("/train", json=body, headers=basic("none")).status_code == 202
    assert gateway.post("/train", json=body, headers=basic("none", "wrong")).status_code == 401
