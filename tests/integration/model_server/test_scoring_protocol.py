"""Both model-server modes speak MLflow's scoring protocol alike, tested with MLflow's own client.

One tracking server and one registered version; a model server in mode ``fast``
(our worker) and one in mode ``mlflow`` (``mlflow models serve``) side by side.
Every request form ``mlflow models serve`` accepts must give the same
predictions from both, row for row.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from model_server import backends
from contract.params import DataParams, ForestParams, ModelParams, SplitParams
from runtime.processes import free_port
from stack.local import LocalStack
from steps.preprocess import run_preprocess
from steps.train import train_and_register
from tests.conftest import census_rows
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

MODEL = "protocol"
RAW = census_rows(1640).tail(40).drop(columns=["income"]).reset_index(drop=True)
RAW.loc[0, "age"] = " 41 "
RAW.loc[1, "education"] = "A degree nobody has"
RAW.loc[2, "wage_per_hour"] = "?"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[LocalStack]:
    """A tracking server with version 1 of MODEL, served (the stack's model server is started by `servers`)."""
    fast = LocalStack(stack_settings(tmp_path_factory.mktemp("protocol") / "fast", data_root, model_name=MODEL,
                                     model_server_mode="fast"))
    try:
        fast.start_tracking()
        register_a_version(fast.tracking_uri, data_root / "census-small.csv")
        fast.registry().serve(MODEL, "1")
        yield fast
    finally:
        fast.down()


@pytest.fixture(scope="module")
def servers(registry: LocalStack, tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[dict[str, str]]:
    """{"fast": url, "mlflow": url}: two model servers following one registry."""
    slow = LocalStack(stack_settings(tmp_path_factory.mktemp("protocol") / "mlflow", data_root, model_name=MODEL,
                                     model_server_mode="mlflow", mlflow_port=registry.settings.mlflow_port))
    try:
        registry.start_model_server()
        slow.start_model_server()
        yield {mode: f"http://127.0.0.1:{stack.settings.model_server_port}"
               for mode, stack in (("fast", registry), ("mlflow", slow))}
    finally:
        slow.down()


def register_a_version(tracking_uri: str, csv: Path) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment("protocol")
        with mlflow.start_run() as prepared:
            run_preprocess(DataParams(data_path=str(csv)))
        with mlflow.start_run():
            train_and_register(SplitParams(splits_uri=f"{prepared.info.artifact_uri}/splits"),
                               ModelParams(model_name=MODEL), ForestParams(n_estimators=15, n_jobs=1))
    finally:
        mlflow.set_tracking_uri(previous)


def post(url: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{url}/invocations", content=body, headers={"Content-Type": content_type}, timeout=120)


def predictions(url: str, body: bytes, content_type: str = "application/json") -> list[dict]:
    answer = post(url, body, content_type)
    assert answer.status_code == 200, answer.text[:1000]
    assert answer.headers["X-Model-Version"] == "1"
    return answer.json()["predictions"]


def as_json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def records() -> list[dict]:
    return json.loads(RAW.to_json(orient="records"))


def parquet() -> bytes:
    buffer = io.BytesIO()
    RAW.to_parquet(buffer)
    return buffer.getvalue()


def test_mlflows_client_gets_the_same_predictions_from_both_modes_as_dataframe_records(servers):
    expected = predictions(servers["fast"], as_json({"dataframe_records": records()}))
    for url in servers.values():
        host, port = url.removeprefix("http://").split(":")
        client = ScoringServerClient(host, int(port))
        client.wait_server_ready(timeout=60)
        assert client.invoke(RAW).get_predictions().to_dict(orient="records") == expected


REQUESTS = {
    "dataframe_records": lambda: (as_json({"dataframe_records": records()}), "application/json"),
    "dataframe_split": lambda: (as_json({"dataframe_split": json.loads(RAW.to_json(orient="split"))}),
                                "application/json; charset=utf-8"),
    "instances as rows": lambda: (as_json({"instances": records()}), "application/json"),
    "inputs as columns": lambda: (as_json({"inputs": RAW.to_dict(orient="list")}), "application/json"),
    "params": lambda: (as_json({"dataframe_records": records(), "params": {"on_invalid": "report"}}),
                       "application/json"),
    "parquet": lambda: (parquet(), "application/vnd.apache.parquet"),
}


@pytest.mark.parametrize("form", REQUESTS)
def test_every_request_form_gives_the_same_rows_in_both_modes(servers, form):
    body, content_type = REQUESTS[form]()
    reference = predictions(servers["fast"], as_json({"dataframe_records": records()}))
    fast, slow = (predictions(servers[mode], body, content_type) for mode in ("fast", "mlflow"))
    assert fast == slow
    assert [{k: v for k, v in row.items() if k != "error"} for row in fast] == reference
    if form == "params":
        assert all(row["error"] is None for row in fast)


def test_a_csv_body_gives_the_json_answer(servers):
    assert predictions(servers["fast"], RAW.to_csv(index=False).encode(), "text/csv") == predictions(
        servers["fast"], as_json({"dataframe_records": records()}))


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"{not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (as_json({"dataframe_records": [], "inputs": []}), "application/json", 400),
    (as_json({"columns": ["a"]}), "application/json", 400),
    (b"{}", "text/plain", 415),
    (b"{}", "application/json; charset=latin-1", 415),
])
def test_both_modes_refuse_alike(servers, body, content_type, status):
    answers = {mode: post(url, body, content_type) for mode, url in servers.items()}
    assert {mode: a.status_code for mode, a in answers.items()} == {"fast": status, "mlflow": status}
    if status == 400:
        codes = {mode: a.json()["error_code"] for mode, a in answers.items()}
        assert codes["fast"] == codes["mlflow"], codes


def test_a_row_the_model_cannot_score_is_the_same_400_in_both_modes(servers):
    bad = records()[:2]
    bad[1]["age"] = "forty"
    answers = {mode: post(url, as_json({"dataframe_records": bad})) for mode, url in servers.items()}
    assert {a.status_code for a in answers.values()} == {400}
    assert {a.json()["error_code"] for a in answers.values()} == {"INVALID_PARAMETER_VALUE"}
    assert "column 'age' row 1: 'forty' is not a number" in answers["fast"].json()["message"]
    assert "'forty' is not a number" in answers["mlflow"].json()["message"]


def test_a_backend_whose_port_was_taken_meanwhile_starts_again_on_another(registry, tmp_path, monkeypatch):
    """`mlflow models serve` binds the port free_port found earlier; if another process took it since, the
    version is not failed for it: the launcher starts the backend again on another port."""
    settings = stack_settings(tmp_path, tmp_path, model_name=MODEL, model_server_mode="mlflow",
                              mlflow_port=registry.settings.mlflow_port)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    ports = iter([taken_port])
    monkeypatch.setattr(backends, "free_port", lambda host: next(ports, None) or free_port(host))

    async def start() -> tuple[str, bool]:
        async with httpx.AsyncClient() as http:
            launcher = backends.Launcher(settings, backends.ChildProcesses(tmp_path / "children.json"), tmp_path, http)
            backend = await launcher.start(MODEL, "1")
            try:
                return backend.url, await backend.ready()
            finally:
                await backend.close()

    try:
        url, ready = asyncio.run(start())
    finally:
        taken.close()
    assert ready and url != f"http://127.0.0.1:{taken_port}"
    log = (settings.logs_dir / f"mlflow-{MODEL}-v1.log").read_text()
    assert "address already in use" in log.lower()  # the first start did meet the taken port
