"""Safe rollouts on real processes: canary share and stickiness, shadow traffic, automatic rollback of a
failing challenger, promote and rollback under continuous traffic."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.inference_log import output_rows
from stack.local import LocalStack
from tests.conftest import census_rows
from tests.integration.conftest import TOKEN, running_stack
from tests.integration.helpers import finished_job, start_training, wait_for

pytestmark = pytest.mark.integration

MODEL = "rolled"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = census_rows(1700).tail(200).drop(columns=["income"]).to_dict(orient="records")
RAISING = '''
import mlflow


class Raising(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise RuntimeError("this version fails on every row, on purpose")


mlflow.models.set_model(Raising())
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("rollouts")
    with running_stack(root, data_root, model_name=MODEL, rollout_min_requests=5, rollout_window_seconds=30) as local, \
            httpx.Client(base_url=local.settings.gateway_url, timeout=120) as api:
        for trees in (8, 5):
            job = finished_job(api, start_training(api, AUTH, data_path="census-small.csv", target="income",
                                                   model_name=MODEL, n_estimators=trees))
            assert job["status"] == "succeeded", job
        api.put(f"/models/{MODEL}/aliases/champion", json={"version": "1"}, headers=AUTH).raise_for_status()
        api.put(f"/models/{MODEL}/aliases/challenger", json={"version": "2"}, headers=AUTH).raise_for_status()
        wait_for(lambda: api.get("/ready").status_code == 200, 120, "version 1 served")
        # version 3: a model that raises on every row, as a version can
        code = root / "raising.py"
        code.write_text(RAISING)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(local.tracking_uri)
        try:  # nothing of this left in the process (mlflow.set_experiment would export MLFLOW_EXPERIMENT_ID)
            experiment = mlflow.MlflowClient().create_experiment("rollouts")
            with mlflow.start_run(experiment_id=experiment):
                mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name=MODEL)
        finally:
            mlflow.set_tracking_uri(previous)
        yield local


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=120) as client:
        yield client


def predict(api: httpx.Client, row: dict, request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return api.post("/predict", json={"records": [row]}, headers=headers)


def warmed(api: httpx.Client, alias: str) -> None:
    """The alias's version loaded, so that no canary request waits on a load."""
    wait_for(lambda: api.post(f"/models/{MODEL}/predict?alias={alias}", json={"records": ROWS[:1]}).status_code
             in (200, 400, 422, 502), 120, f"{alias} loaded")


def traffic(api: httpx.Client, **policy: object) -> httpx.Response:
    answer = api.put(f"/models/{MODEL}/traffic", json=policy, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer


def test_a_canary_at_20_percent_takes_a_binomial_share_of_requests(api):
    warmed(api, "challenger")
    traffic(api, mode="canary", alias="challenger", percent=20)
    rng = np.random.default_rng(2026)
    n = 600
    versions = []
    for i in range(n):
        answer = predict(api, ROWS[i % len(ROWS)], request_id=f"req-{rng.integers(1 << 40)}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == answer.json()["model"]["version"]
        versions.append(answer.json()["model"]["version"])
    share = versions.count("2") / n
    tolerance = 4 * np.sqrt(0.2 * 0.8 / n)  # four standard deviations of a binomial share
    assert abs(share - 0.2) <= tolerance, share
    assert set(versions) == {"1", "2"}
    figures = api.get(f"/models/{MODEL}/traffic").json()
    assert figures["mode"] == "canary" and figures["figures"]["canary"]["version"] == "2"
    assert figures["figures"]["served"]["requests"] + figures["figures"]["canary"]["requests"] >= n


def test_sticky_keys_always_land_on_the_same_version(api):
    traffic(api, mode="canary", alias="challenger", percent=50, sticky_key="education")
    seen: dict[str, set[str]] = {}
    for row in ROWS:
        for _ in range(2):
            answer = predict(api, row)
            assert answer.status_code == 200
            seen.setdefault(row["education"], set()).add(answer.json()["model"]["version"])
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {"1", "2"}  # both versions take some keys


def test_shadow_answers_only_from_the_served_version_and_logs_both(api, stack):
    traffic(api, mode="shadow", alias="challenger")
    ids = []
    for row in ROWS[:40]:
        answer = predict(api, row)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
        ids.append(answer.json()["predictions"][0]["id"])
    shadow = wait_for(lambda: (f := api.get(f"/models/{MODEL}/traffic").json()["figures"])["shadow_comparison"]["rows"]
                      >= 40 and f, 60, "shadow answers compared")
    assert shadow["shadow"]["version"] == "2" and shadow["shadow_comparison"]["rows"] == 40
    # loaded before the policy routed anything to it (the canary's tests used it): none skipped, both serving
    assert shadow["shadow_comparison"]["skipped"] == 0, shadow
    assert shadow["shadow"]["state"] == shadow["served"]["state"] == "serving", shadow
    database = stack.settings.stack_dir / "inference.db"

    def logged() -> dict[tuple[str, str], tuple[str, str, str]]:
        with sqlite3.connect(database) as db:
            requests = db.execute("SELECT id, role, model_version, outputs FROM inference_requests").fetchall()
        found = {}
        for key, role, version, outputs in requests:
            for i, row in enumerate(output_rows(outputs)):
                probabilities = {k.removeprefix("proba_"): v for k, v in row.items() if k.startswith("proba_")}
                found[f"{key}-{i}", role] = (version, json.dumps(row["label"]), json.dumps(probabilities))
        return {k: v for k, v in found.items() if k[0] in ids}

    both = wait_for(lambda: len(found := logged()) == 80 and found, 30, "both answers logged")
    assert all(both[i, "answer"][0] == "1" and both[i, "shadow"][0] == "2" for i in ids)
    # the reported agreement and probability difference are those of the logged answers
    agree = [json.loads(both[i, "answer"][1]) == json.loads(both[i, "shadow"][1]) for i in ids]
    served, other = ([json.loads(both[i, role][2]) for i in ids] for role in ("answer", "shadow"))
    difference = np.mean([np.mean([abs(a[k] - b[k]) for k in a]) for a, b in zip(served, other, strict=True)])
    assert shadow["shadow_comparison"]["agreement"] == pytest.approx(np.mean(agree))
    assert shadow["shadow_comparison"]["mean_abs_probability_difference"] == pytest.approx(difference)
    assert 0 < difference  # two different forests: the comparison has something to measure


def test_a_restarted_model_server_loads_the_version_in_a_rollout_before_any_request(api, stack):
    traffic(api, mode="shadow", alias="challenger")
    stack.stop("model-server")
    stack.start_model_server()

    def serving() -> dict[tuple[str, str | None], str]:
        status = httpx.get(f"{stack.settings.model_server}/status", timeout=10).json()
        return {(m["name"], m["alias"]): m["version"] for m in status["models"] if m["status"] == "serving"}

    # no request names the challenger: the model server found it in the model's traffic policy as it started
    found = wait_for(lambda: (pairs := serving()).get((MODEL, "challenger")) and pairs, 120, "the shadow loaded")
    assert found[MODEL, "challenger"] == "2" and found[MODEL, None] == "1"
    states = api.get(f"/models/{MODEL}/traffic").json()["figures"]
    assert states["shadow"]["state"] == states["served"]["state"] == "serving", states


def rolled_back(api: httpx.Client) -> dict:
    return api.get(f"/models/{MODEL}/traffic").json()


def metric(api: httpx.Client, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(api.get("/metrics").text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_challenger_that_fails_is_rolled_back_automatically_and_no_caller_sees_it(api, stack):
    api.put(f"/models/{MODEL}/aliases/challenger", json={"version": "3"}, headers=AUTH).raise_for_status()
    warmed(api, "challenger")
    traffic(api, mode="canary", alias="challenger", percent=50)
    # traffic until the watcher rolls the canary back (it judges every few seconds): a deadline, not a
    # number of requests, which a fast machine sends before the first judgement
    statuses, deadline, i = [], time.monotonic() + 90, 0
    while time.monotonic() < deadline:
        statuses.append(predict(api, ROWS[i % len(ROWS)]).status_code)
        i += 1
        if rolled_back(api)["mode"] == "single":
            break
    assert set(statuses) == {200}  # the served version answered for the failing canary
    assert rolled_back(api)["mode"] == "single"
    tags = mlflow.MlflowClient(stack.tracking_uri).get_registered_model(MODEL).tags
    assert "error rate" in tags["rollback_reason"] and tags["rolled_back_at"].startswith("20")
    assert metric(api, "gateway_rollouts_rolled_back_total", model=MODEL) >= 1


def test_promote_and_rollback_switch_with_no_failed_request_under_traffic(api):
    api.put(f"/models/{MODEL}/aliases/challenger", json={"version": "2"}, headers=AUTH).raise_for_status()
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            while not stop.is_set():
                answer = client.post("/predict", json={"records": ROWS[:2]})
                outcomes.append((answer.status_code,
                                 answer.json()["model"]["version"] if answer.status_code == 200 else None))

    worker = threading.Thread(target=keep_predicting)
    worker.start()
    try:
        wait_for(lambda: len(outcomes) >= 5, 30, "traffic")
        promoted = api.post(f"/models/{MODEL}/promote", json={"alias": "challenger"}, headers=AUTH)
        assert promoted.status_code == 200 and promoted.json()["version"] == "2", promoted.text
        assert promoted.json()["stage"] == "Production"
        wait_for(lambda: outcomes[-1][1] == "2", 60, "answers from version 2")
        model = api.get(f"/models/{MODEL}").json()
        assert model["aliases"]["previous"] == "1" and model["aliases"]["champion"] == "2"
        restored = api.post(f"/models/{MODEL}/rollback", headers=AUTH)
        assert restored.status_code == 200 and restored.json()["version"] == "1", restored.text
        wait_for(lambda: outcomes[-1][1] == "1", 60, "answers from version 1 again")
        count = len(outcomes)
        wait_for(lambda: len(outcomes) >= count + 5, 30, "traffic after the rollback")
    finally:
        stop.set()
        worker.join()
    assert all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    assert api.post(f"/models/{MODEL}/rollback").status_code == 401  # a change: the token
