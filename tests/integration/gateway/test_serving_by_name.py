"""Every registered model served by name, the way clients call: JSON or CSV, MLflow's protocol, V2.

One stack for the module (mode fast): three models trained through /train and
promoted, then asked for by name with no restart; rows copied from a CSV whose
header has a space after each comma; ``mlflow models serve`` of the same
version; ``tritonclient.http`` on the Open Inference Protocol; a promotion of
one model under traffic on all of them.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import tritonclient.http as triton

from contract.params import DEFAULT_NA_VALUES
from runtime.processes import VENV_BIN, stop_process_group, tool_env
from stack.local import LocalStack, http_ok, wait_until
from tests.conftest import census_rows, listen_port, mixed_frame
from tests.integration.conftest import TOKEN, running_stack
from tests.integration.helpers import answers, finished_job, own_probabilities, start_training, wait_for

pytestmark = pytest.mark.integration

DEFAULT, CENSUS, MIXED = "by-name-default", "census-b", "mixed-c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RAW = census_rows(1590).tail(25).drop(columns=["income"]).reset_index(drop=True)
RAW.loc[0, "education"] = "A degree nobody has"
RECORDS = RAW.to_dict(orient="records")


def spaced_csv(frame) -> str:
    """The rows as a person pastes them from a CSV written with ", " between cells, header included."""
    lines = [", ".join(frame.columns)] + [", ".join(str(v) for v in row) for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[LocalStack]:
    mixed_frame(n=300, seed=4).to_csv(data_root / "mixed.csv", index=False)
    with running_stack(tmp_path_factory.mktemp("by-name"), data_root, model_name=DEFAULT,
                       model_server_max_loaded=4) as local, \
            httpx.Client(base_url=local.settings.gateway_url, timeout=60) as api:
        for name, data, target in ((DEFAULT, "census-small.csv", "income"), (CENSUS, "census-small.csv", "income"),
                                   (MIXED, "mixed.csv", "label")):
            job = finished_job(api, start_training(api, AUTH, data_path=data, target=target, model_name=name,
                                                   n_estimators=8))
            assert job["status"] == "succeeded", job
            api.put(f"/models/{name}/aliases/champion", json={"version": "1"}, headers=AUTH).raise_for_status()
        yield local


@pytest.fixture(scope="module")
def mlflow_serve(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow models serve`` of version 1 of CENSUS, beside the stack: its URL."""
    logs = tmp_path_factory.mktemp("serve") / "serve.log"
    port = listen_port()
    serve = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{CENSUS}/1", "-h", "127.0.0.1",
         "-p", str(port), "--env-manager", "local"],
        env=tool_env(MLFLOW_TRACKING_URI=stack.tracking_uri), stdout=subprocess.DEVNULL, stderr=logs.open("wb"),
        start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{url}/ping"), 180, "mlflow models serve", serve, logs)
        yield url
    finally:
        stop_process_group(serve.pid)


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=60) as client:
        yield client


def predicted(api: httpx.Client, path: str, timeout: float = 120, **kwargs) -> dict:
    """The answer once the model is loaded: a model not served yet answers 503 with Retry-After first."""
    def attempt() -> dict | None:
        answer = api.post(path, **kwargs)
        if answer.status_code == 503:
            assert answer.headers.get("Retry-After") or "no version" in answer.text, answer.text
            return None
        assert answer.status_code == 200, answer.text
        return answer.json()
    return wait_for(attempt, timeout, f"{path} answered")


def test_every_promoted_model_answers_by_name_with_no_restart(api, stack):
    pids = (stack.service_pid("gateway"), stack.service_pid("model-server"))
    # promoted through the gateway, each is loaded before any request asks for it (issue 34): its first
    # request is answered, not a 503 while it loads
    status_url = f"http://{stack.settings.host}:{stack.settings.model_server_port}/status"

    def loaded() -> bool:
        served = {(m["name"], m["alias"]): m["status"] for m in httpx.get(status_url, timeout=10).json()["models"]}
        return all(served.get((name, None)) == "serving" for name in (CENSUS, MIXED))

    wait_for(loaded, 120, "the promoted models loaded with no request")
    first = api.post(f"/models/{CENSUS}/predict", json={"records": RECORDS})
    assert first.status_code == 200, first.text
    census = predicted(api, f"/models/{CENSUS}/predict", json={"records": RECORDS})
    assert census["model"] == {"name": CENSUS, "version": "1"} and len(census["predictions"]) == len(RECORDS)
    mixed = predicted(api, f"/models/{MIXED}/predict", json={"records": [{"age": "33", "hours": "?", "colour": "red",
                                                                         "city": "Oslo"}]})
    assert mixed["model"] == {"name": MIXED, "version": "1"} and mixed["predictions"][0]["label"] in ("no", "yes")
    default = predicted(api, "/predict", json={"records": RECORDS})
    assert default["model"]["name"] == DEFAULT  # /predict keeps answering MODEL_NAME
    assert (stack.service_pid("gateway"), stack.service_pid("model-server")) == pids

    described = api.get(f"/models/{CENSUS}").json()
    assert described["loaded_versions"] == ["1"]
    assert described["serving"] == [{"alias": None, "status": "serving", "version": "1", "reason": None}]
    metrics = api.get("/metrics").text
    for name in (DEFAULT, CENSUS, MIXED):
        assert f'gateway_loaded_model_info{{name="{name}",version="1"}} 1.0' in metrics
        assert f'gateway_model_requests_total{{model="{name}",status="200",version="1"}}' in metrics


def test_a_version_or_an_alias_by_name_and_clear_404s(api):
    by_version = predicted(api, f"/models/{CENSUS}/predict?version=1", json={"records": RECORDS[:2]})
    assert by_version["model"]["version"] == "1"
    assert api.put(f"/models/{CENSUS}/aliases/nightly", json={"version": "1"}, headers=AUTH).status_code == 200
    # version 1 is loaded already: a new alias on it answers on its first request, no 503 while "loading"
    by_alias = api.post(f"/models/{CENSUS}/predict?alias=nightly", json={"records": RECORDS[:2]})
    assert by_alias.status_code == 200, by_alias.text
    assert [(p["label"], p["probability"]) for p in by_alias.json()["predictions"]] == \
        [(p["label"], p["probability"]) for p in by_version["predictions"]]
    for path, words in (("/models/nope/predict", "no registered model named 'nope'"),
                        (f"/models/{CENSUS}/predict?version=99", "no version 99"),
                        (f"/models/{CENSUS}/predict?alias=nobody", "no alias 'nobody'")):
        answer = api.post(path, json={"records": RECORDS[:1]})
        assert answer.status_code == 404 and words in answer.json()["detail"], answer.text
    assert api.post(f"/models/{CENSUS}/predict?version=1&alias=x", json={"records": RECORDS[:1]}).status_code == 422


def test_the_schema_says_what_to_send_and_its_example_is_a_valid_body(api):
    schema = api.get(f"/models/{CENSUS}/schema").json()
    assert schema["version"] == "1" and schema["classes"] == ["- 50000.", "50000+."]
    kinds = {c["name"]: c["kind"] for c in schema["columns"]}
    assert kinds["age"] == "number" and kinds["education"] == "category" and "income" not in kinds
    assert schema["missing_values"] == list(DEFAULT_NA_VALUES) and schema["outputs"][:2] == ["label", "probability"]
    as_json = api.post(f"/models/{CENSUS}/predict", json=schema["example"])
    as_csv = api.post(f"/models/{CENSUS}/predict", content=schema["example_csv"], headers={"content-type": "text/csv"})
    assert as_json.status_code == 200 and as_csv.status_code == 200
    assert answers(as_json.json()["predictions"]) == answers(as_csv.json()["predictions"])
    assert api.get("/models/nope/schema").status_code == 404


def test_rows_from_a_csv_with_spaces_after_the_commas_predict_the_same_everywhere(api, mlflow_serve):
    clean = predicted(api, f"/models/{CENSUS}/predict", json={"records": RECORDS})["predictions"]
    text = spaced_csv(RAW)
    assert text.startswith("age, class_of_worker, ")
    as_csv = api.post(f"/models/{CENSUS}/predict", content=text, headers={"content-type": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text
    spaced_json = [{f" {k}": v for k, v in row.items()} for row in RECORDS]
    as_json = api.post(f"/models/{CENSUS}/predict", json={"records": spaced_json})
    assert answers(as_csv.json()["predictions"]) == answers(clean) == answers(as_json.json()["predictions"])
    unknown = api.post(f"/models/{CENSUS}/predict", json={"records": [{**RECORDS[0], "Age": 3, "agee": 1}]})
    assert unknown.status_code == 200  # extra columns are ignored...
    missing = {k: v for k, v in RECORDS[0].items() if k != "age"}
    refused = api.post(f"/models/{CENSUS}/predict", json={"records": [{**missing, "Age": 3}]})
    assert refused.status_code == 422  # ...but when one is missing, the error names what was sent instead
    assert "missing required column(s): 'age'" in refused.text and "'Age'" in refused.text

    # `mlflow models serve` of the same version, with the same rows
    for body, content_type in ((text, "text/csv"),
                               (RAW.rename(columns=lambda c: f" {c}").to_json(orient="split"), "application/json")):
        if content_type == "application/json":
            body = f'{{"dataframe_split": {body}}}'
        answer = httpx.post(f"{mlflow_serve}/invocations", content=body, headers={"content-type": content_type},
                            timeout=60)
        assert answer.status_code == 200, answer.text[:2000]
        rows = answer.json()["predictions"]
        assert [r["label"] for r in rows] == [p["label"] for p in clean]
        np.testing.assert_allclose([r["proba_50000+."] for r in rows],
                                   [p["probabilities"]["50000+."] for p in clean], rtol=0, atol=1e-12)


def test_explanations_agree_across_the_gateway_the_pyfunc_and_mlflow_models_serve(api, stack, mlflow_serve):
    explained = predicted(api, f"/models/{CENSUS}/explain?classes=all", json={"records": RECORDS})
    assert explained["model"] == {"name": CENSUS, "version": "1"}
    rows = explained["explanations"]
    plain = predicted(api, f"/models/{CENSUS}/predict", json={"records": RECORDS})["predictions"]
    assert [(r["label"], r["probabilities"]) for r in rows] == [(p["label"], p["probabilities"]) for p in plain]
    columns = [c["name"] for c in api.get(f"/models/{CENSUS}/schema").json()["columns"]]
    # a forest's explanation adds up to its own probability, before calibration, and says so
    own, explains = own_probabilities(stack.tracking_uri, CENSUS, "1", RECORDS)
    for row, before in zip(rows, own, strict=True):
        values = list(row["contributions"].values())
        assert sorted(row["contributions"]) == sorted(columns) and values == sorted(values, key=abs, reverse=True)
        assert row["explains"] == explains
        assert row["base_value"] + sum(values) == pytest.approx(before[str(row["label"])], abs=1e-6)  # local accuracy
        for label, part in row["by_class"].items():
            total = part["base_value"] + sum(part["contributions"].values())
            assert total == pytest.approx(before[label], abs=1e-6)
        assert row["by_class"][row["label"]]["contributions"] == row["contributions"]
    as_csv = api.post(f"/models/{CENSUS}/explain?classes=all", content=spaced_csv(RAW), headers={"content-type": "text/csv"})
    assert answers(as_csv.json()["explanations"]) == answers(rows)

    # the same numbers from `mlflow models serve` of the version, and from the pyfunc in this process
    body = {"dataframe_records": RECORDS, "params": {"explain": True}}
    served = httpx.post(f"{mlflow_serve}/invocations", json=body, timeout=60)
    assert served.status_code == 200, served.text[:2000]
    source = mlflow.MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri) \
        .get_model_version_download_uri(CENSUS, "1")
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=stack.tracking_uri)
    in_process = mlflow.pyfunc.load_model(local).predict(RAW, params={"explain": True}).to_dict(orient="records")
    for row, other, mine in zip(rows, served.json()["predictions"], in_process, strict=True):
        for source in (other, mine):
            assert source["base_value"] == pytest.approx(row["base_value"], abs=1e-12)
            for column, value in row["contributions"].items():
                assert source[f"contrib_{column}"] == pytest.approx(value, abs=1e-12), column

    # limits and errors as /predict's, with the explanation's own row limit
    too_many = api.post(f"/models/{CENSUS}/explain", json={"records": RECORDS * 5})
    assert too_many.status_code == 413 and "GATEWAY_MAX_EXPLAIN_ROWS" in too_many.text
    missing = api.post(f"/models/{CENSUS}/explain", json={"records": [{k: v for k, v in RECORDS[0].items()
                                                                       if k != "age"}]})
    assert missing.status_code == 422 and "'age'" in missing.text
    assert api.post(f"/models/{CENSUS}/explain?classes=some", json={"records": RECORDS[:1]}).status_code == 422
    assert api.post("/models/nope/explain", json={"records": RECORDS[:1]}).status_code == 404
    assert 'route="/models/{name}/explain",status="200"' in api.get("/metrics").text


def test_the_importance_logged_at_training_per_input_column(api):
    answer = api.get(f"/models/{CENSUS}/versions/1/importance")
    assert answer.status_code == 200, answer.text
    importance = answer.json()
    columns = [c["name"] for c in api.get(f"/models/{CENSUS}/schema").json()["columns"]]
    assert importance["version"] == "1" and sorted(importance["importance"]) == sorted(columns)
    values = list(importance["importance"].values())
    assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1.0)
    assert "impurity" in importance["method"]
    assert api.get(f"/models/{CENSUS}/versions/99/importance").status_code == 404


def test_tritonclient_infers_over_the_open_inference_protocol(api, stack):
    expected = predicted(api, f"/models/{CENSUS}/predict", json={"records": RECORDS})["predictions"]
    client = triton.InferenceServerClient(url=stack.settings.gateway_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(CENSUS)
    metadata = client.get_model_metadata(CENSUS)
    assert [i["name"] for i in metadata["inputs"]] == [c["name"] for c in api.get(f"/models/{CENSUS}/schema").json()
                                                      ["columns"]]
    for binary in (True, False):  # Triton's binary tensor extension (the client's default), and plain JSON
        inputs = []
        for column in metadata["inputs"]:
            tensor = triton.InferInput(column["name"], [len(RAW)], "BYTES")
            tensor.set_data_from_numpy(RAW[column["name"]].to_numpy(dtype=object), binary_data=binary)
            inputs.append(tensor)
        result = client.infer(CENSUS, inputs, request_id="r-1")
        labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
        assert labels == [p["label"] for p in expected]
        assert result.as_numpy("proba_50000+.").tolist() == [p["probabilities"]["50000+."] for p in expected]
        assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "r-1"
    versioned = client.infer(CENSUS, inputs, model_version="1",
                             outputs=[triton.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in versioned.get_response()["outputs"]] == ["label"]
    with pytest.raises(triton.InferenceServerException, match="missing required column"):
        client.infer(CENSUS, inputs[1:])
    with pytest.raises(triton.InferenceServerException, match="no registered model named 'nope'"):
        client.infer("nope", inputs)


def test_promoting_one_model_switches_only_it_with_no_failed_request(api):
    job = finished_job(api, start_training(api, AUTH, data_path="census-small.csv", target="income",
                                           model_name=CENSUS, n_estimators=5))
    assert job["status"] == "succeeded" and job["model_version"] == "2", job
    outcomes: dict[str, list[tuple[int, str | None]]] = {name: [] for name in (DEFAULT, CENSUS, MIXED)}
    stop = threading.Event()
    bodies = {DEFAULT: RECORDS[:3], CENSUS: RECORDS[:3],
              MIXED: [{"age": "33", "hours": "?", "colour": "red", "city": "Oslo"}]}

    def keep_predicting(name: str) -> None:
        path = "/predict" if name == DEFAULT else f"/models/{name}/predict"
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            while not stop.is_set():
                answer = client.post(path, json={"records": bodies[name]})
                outcomes[name].append((answer.status_code,
                                       answer.json()["model"]["version"] if answer.status_code == 200 else None))
    workers = [threading.Thread(target=keep_predicting, args=(name,)) for name in outcomes]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: all(len(o) >= 5 for o in outcomes.values()), 60, "traffic on every model")
        assert api.put(f"/models/{CENSUS}/aliases/champion", json={"version": "2"}, headers=AUTH).status_code == 200
        wait_for(lambda: outcomes[CENSUS][-1][1] == "2", 60, f"{CENSUS} answers from version 2")
        count = len(outcomes[CENSUS])
        wait_for(lambda: len(outcomes[CENSUS]) >= count + 5, 30, "requests after the switch")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    for name, seen in outcomes.items():
        assert all(status == 200 for status, _ in seen), (name, [s for s in seen if s[0] != 200][:5])
    versions = [v for _, v in outcomes[CENSUS]]
    assert set(versions[:versions.index("2")]) == {"1"} and set(versions[versions.index("2"):]) == {"2"}
    assert {v for _, v in outcomes[MIXED]} == {"1"} and {v for _, v in outcomes[DEFAULT]} == {"1"}


def test_labels_follow_the_threshold_the_version_was_trained_with(api):
    threshold = api.get(f"/models/{CENSUS}/versions/1").json()["threshold"]
    assert 0 < threshold < 0.5  # chosen for F1 on a rare positive class
    listed = {v["version"]: v for v in api.get(f"/models/{CENSUS}").json()["versions"]}
    assert listed["1"]["threshold"] == threshold
    rows = census_rows(3400).tail(400).drop(columns=["income"]).to_dict(orient="records")
    predictions = predicted(api, f"/models/{CENSUS}/predict?version=1", json={"records": rows})["predictions"]
    positive = [p["probabilities"]["50000+."] for p in predictions]
    assert [p["label"] == "50000+." for p in predictions] == [value >= threshold for value in positive]
    assert any(threshold <= value < 0.5 for value in positive)  # rows where argmax would answer otherwise
