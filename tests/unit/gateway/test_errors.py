"""One error body across the gateway: ``detail`` is one string, ``errors`` lists the fields at fault."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from contract.settings import Settings
from gateway.app import install_error_handlers
from gateway.errors import error_body, message_of, where
from gateway.observability import Metrics, RequestContext
from gateway.schemas import unprocessable
from tests.unit.gateway.test_observability import call


class Body(BaseModel):
    name: str
    n_estimators: int = Field(gt=0)


def app_with_handlers(tmp_path) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContext, metrics=Metrics(), max_body_bytes=200)
    install_error_handlers(app, Settings(stack_dir=tmp_path, tracking_uri="http://127.0.0.1:1"))

    @app.post("/things")
    def create(body: Body) -> dict:
        return body.model_dump()

    @app.get("/things/{number}")
    def read(number: int, version: int | None = None) -> dict:
        if number == 7:
            raise unprocessable(["body", "labels", 2, "label"], "'maybe' is not a class")
        if number == 8:
            raise MlflowException("connection refused")
        raise HTTPException(404, detail=f"no thing {number}")

    @app.get("/v2/models/{name}/ready")
    def ready(name: str, version: int) -> dict:
        raise HTTPException(404, detail=f"no model {name}")

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("a bug of ours")

    return app


def the_gateways_shape(body: dict) -> bool:
    return isinstance(body.get("detail"), str) and body["detail"] and \
        all(isinstance(e, dict) and {"loc", "msg", "type"} <= e.keys() for e in body.get("errors", []))


def test_every_kind_of_error_answers_one_string_detail_and_names_the_field(tmp_path):
    app = app_with_handlers(tmp_path)
    answers = {
        "validation": call(app, "POST", "/things", json={"name": "x", "n_estimators": 0, "secret": "pasted"}),
        "missing field": call(app, "POST", "/things", json={"n_estimators": 3}),
        "bad json": call(app, "POST", "/things", content=b'{"name": ', headers={"Content-Type": "application/json"}),
        "query": call(app, "GET", "/things/1?version=abc"),
        "by hand": call(app, "GET", "/things/7"),
        "not found": call(app, "GET", "/things/1"),
        "no route": call(app, "GET", "/nothing"),
        "method": call(app, "DELETE", "/things"),
        "too large": call(app, "POST", "/things", content=b"x" * 300, headers={"Content-Type": "application/json"}),
        "tracking server": call(app, "GET", "/things/8"),
        "crash": call(app, "GET", "/boom"),
    }
    for kind, answer in answers.items():
        assert answer.status_code >= 400 and the_gateways_shape(answer.json()), (kind, answer.text)
    assert answers["validation"].status_code == 422
    assert answers["validation"].json()["detail"] == "n_estimators: Input should be greater than 0"
    assert "pasted" not in answers["validation"].text and "input" not in answers["validation"].json()["errors"][0]
    assert answers["missing field"].json()["detail"] == "name: Field required"
    assert answers["missing field"].json()["errors"][0]["loc"] == ["body", "name"]
    assert answers["bad json"].json()["detail"].startswith("body: body is not valid JSON")
    assert answers["query"].json()["detail"].startswith("query parameter version: ")
    assert answers["by hand"].json()["detail"] == "labels.2.label: 'maybe' is not a class"
    assert answers["not found"].json() == {"detail": "no thing 1"}
    assert answers["method"].headers["Allow"] == "POST"
    assert answers["tracking server"].status_code == 503 and answers["tracking server"].headers["Retry-After"]
    assert "connection refused" in answers["tracking server"].json()["detail"]
    assert answers["crash"].status_code == 500 and answers["crash"].json()["request_id"]


def test_the_open_inference_protocol_routes_answer_its_own_error_form_with_the_same_words(tmp_path):
    app = app_with_handlers(tmp_path)
    missing = call(app, "GET", "/v2/models/census/ready?version=x")
    assert missing.status_code == 422 and missing.json() == {
        "error": "query parameter version: Input should be a valid integer, unable to parse string as an integer"}
    assert call(app, "GET", "/v2/models/census/ready?version=1").json() == {"error": "no model census"}


@pytest.mark.parametrize(("loc", "words"), [
    (["body", "n_estimators"], "n_estimators"), (["body"], "body"), (["path", "name"], "path parameter name"),
    (["body", "records", 3, "age"], "records.3.age"), ([], ""),
])
def test_where_names_a_location_in_words(loc, words):
    assert where(loc) == words


def test_a_plain_message_stays_as_it_is_and_a_list_becomes_one_line_with_the_list_kept():
    assert error_body("no thing") == {"detail": "no thing"}
    problems = [{"loc": ["body", "a"], "msg": "bad", "type": "t", "input": 1},
                {"loc": ["body", "b"], "msg": "worse", "type": "t"}]
    assert error_body(problems, accepted=2) == {
        "detail": "a: bad; b: worse", "accepted": 2,
        "errors": [{"loc": ["body", "a"], "msg": "bad", "type": "t"}, {"loc": ["body", "b"], "msg": "worse", "type": "t"}]}
    assert message_of([{"msg": "no location"}]) == "no location"


def test_the_openapi_document_declares_the_body_the_gateway_answers(tmp_path):
    from gateway.app import create_app

    document = create_app(Settings(stack_dir=tmp_path)).openapi()
    assert "HTTPValidationError" not in str(document)
    train = document["paths"]["/train"]["post"]["responses"]
    assert train["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert train["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert infer["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferenceProtocolError")
    assert document["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "string"


def test_a_train_parameter_out_of_range_is_named_with_the_validators_own_words():
    from gateway.schemas import TrainRequest

    with pytest.raises(ValueError) as raised:
        TrainRequest.model_validate({"data_path": "a.csv", "target": "y", "n_estimators": 0})
    body = error_body([{**e, "loc": ["body", *e["loc"]]} for e in raised.value.errors()])
    assert body["detail"] == "n_estimators: must be at least 1"
    assert body["errors"][0]["ctx"] == {"error": "must be at least 1"}
