"""Column names are data (issue 33): a model whose columns are named as public CSV headers name them
(``/ . ( " : # é``, a backtick, a backslash, 200 characters) trains through /train and serves by name on every
path: JSON, CSV and V2 predictions, explanations, its schema, the inference log (one of those columns
excluded). Symptom 3: with a ``"`` in a name, the version trained and registered, but its worker died on
loading it, and the model answered 503 for good.

One stack for the module in each model server mode (``fast`` is the one whose body reader refused such names).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.inference_log import logged_rows, open_log
from stack.local import LocalStack
from tests.conftest import ODD_NAMES, mixed_frame
from tests.integration.conftest import SERVER_MODES, TOKEN, running_stack
from tests.integration.helpers import answers, finished_job, own_probabilities, start_training, wait_for

pytestmark = pytest.mark.integration

MODEL = "odd-names"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = list(ODD_NAMES.values())
EXCLUDED = ODD_NAMES["colour"]  # INFERENCE_LOG_EXCLUDE_COLUMNS: never stored
ROWS = mixed_frame(n=20, seed=9).drop(columns=["label"]).rename(columns=ODD_NAMES).to_dict(orient="records")


def as_csv(rows: list[dict]) -> str:
    """The rows as a CSV file holds them: quoted where a header or a cell needs it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=SERVER_MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          data_root: Path) -> Iterator[LocalStack]:
    mixed_frame(n=300, seed=4).rename(columns=ODD_NAMES).to_csv(data_root / "odd-names.csv", index=False)
    with running_stack(tmp_path_factory.mktemp("names"), data_root, model_name=MODEL, model_server_mode=request.param,
                       inference_log_exclude_columns=[EXCLUDED]) as local:
        yield local


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=60) as client:
        yield client


def predicted(api: httpx.Client, path: str, timeout: float = 120, **kwargs) -> dict:
    """The answer once the model is loaded: 503 while it loads (for good, before the fix of symptom 3)."""
    last = {}

    def attempt() -> dict | None:
        answer = api.post(path, **kwargs)
        last["answer"] = answer.text[:500]
        if answer.status_code == 503:
            return None
        assert answer.status_code == 200, answer.text
        return answer.json()
    try:
        return wait_for(attempt, timeout, f"{path} answered")
    except AssertionError as err:
        raise AssertionError(f"{err}; last answer: {last.get('answer')}") from None


def test_a_model_with_odd_column_names_trains_through_train_and_shows_its_schema(api):
    job = finished_job(api, start_training(api, AUTH, data_path="odd-names.csv", target="label", model_name=MODEL,
                                           n_estimators=8))
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])
    api.put(f"/models/{MODEL}/aliases/champion", json={"version": "1"}, headers=AUTH).raise_for_status()
    schema = api.get(f"/models/{MODEL}/schema")
    assert schema.status_code == 200, schema.text
    body = schema.json()
    assert sorted(c["name"] for c in body["columns"]) == sorted(NAMES)
    header, *rows = list(csv.reader(io.StringIO(body["example_csv"])))
    assert header == [c["name"] for c in body["columns"]] and rows
    assert sorted(body["example"]["records"][0]) == sorted(NAMES)


def test_it_serves_json_csv_and_v2_by_name_with_the_same_answers(api):
    as_json = predicted(api, f"/models/{MODEL}/predict", json={"records": ROWS})
    assert as_json["model"] == {"name": MODEL, "version": "1"} and len(as_json["predictions"]) == len(ROWS)
    text = api.post(f"/models/{MODEL}/predict", content=as_csv(ROWS), headers={"content-type": "text/csv"})
    assert text.status_code == 200, text.text
    assert answers(text.json()["predictions"]) == answers(as_json["predictions"])
    metadata = api.get(f"/v2/models/{MODEL}").json()
    assert sorted(i["name"] for i in metadata["inputs"]) == sorted(NAMES)
    v2 = api.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": name, "datatype": "BYTES", "shape": [len(ROWS)], "data": [row[name] for row in ROWS]}
        for name in NAMES]})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert outputs["label"] == [p["label"] for p in as_json["predictions"]]
    # a missing column is named by its own name
    missing = api.post(f"/models/{MODEL}/predict", json={"records": [{k: v for k, v in ROWS[0].items()
                                                                      if k != ODD_NAMES["hours"]}]})
    assert missing.status_code == 422 and repr(ODD_NAMES["hours"]) in missing.json()["detail"], missing.text


def test_it_explains_each_column_by_its_own_name(api, stack):
    explained = predicted(api, f"/models/{MODEL}/explain?classes=all", json={"records": ROWS[:3]})
    own, explains = own_probabilities(stack.tracking_uri, MODEL, explained["model"]["version"], ROWS[:3])
    for row, before in zip(explained["explanations"], own, strict=True):
        assert sorted(row["contributions"]) == sorted(NAMES) and row["explains"] == explains
        # a forest's explanation: of its probability before calibration
        total = row["base_value"] + sum(row["contributions"].values())
        assert total == pytest.approx(before[str(row["label"])])
        for part in row["by_class"].values():
            assert sorted(part["contributions"]) == sorted(NAMES)
    as_text = api.post(f"/models/{MODEL}/explain", content=as_csv(ROWS[:3]), headers={"content-type": "text/csv"})
    assert as_text.status_code == 200, as_text.text
    assert [e["contributions"] for e in as_text.json()["explanations"]] == \
        [e["contributions"] for e in explained["explanations"]]


def test_the_inference_log_keeps_the_names_and_drops_the_excluded_column(api, stack):
    ids = {p["id"] for p in predicted(api, f"/models/{MODEL}/predict", json={"records": ROWS[:2]})["predictions"]}
    text = api.post(f"/models/{MODEL}/predict", content=as_csv(ROWS[:2]), headers={"content-type": "text/csv"})
    ids |= {p["id"] for p in text.json()["predictions"]}
    log = open_log(f"sqlite:///{stack.settings.stack_dir / 'inference.db'}")
    logged = wait_for(lambda: len(found := [r for r in logged_rows(log, MODEL) if r.id in ids]) == 4 and found,
                      30, "the requests in the inference log")
    kept = [name for name in NAMES if name != EXCLUDED]
    for row in logged:
        assert sorted(row.inputs) == sorted(kept)
        assert row.inputs in [{k: v for k, v in r.items() if k in kept} for r in ROWS[:2]]  # cells are text


@pytest.mark.any_server_mode
def test_a_header_no_version_could_serve_is_refused_before_training(api, data_root):
    (data_root / "repeated.csv").write_text('"a ""b""",x," a ""b"" ",label\n1,2,3,no\n4,5,6,yes\n', encoding="utf-8")
    refused = api.post("/train", json={"data_path": "repeated.csv", "target": "label", "model_name": "refused-a"},
                       headers=AUTH)
    assert refused.status_code == 422, refused.text
    assert "column 3 ('a \"b\"') names the same column as column 1" in str(refused.json()["detail"])
    frame = mixed_frame(n=60, seed=2).rename(columns={"city": "proba_yes"})
    frame.to_csv(data_root / "clash.csv", index=False)
    job = finished_job(api, start_training(api, AUTH, data_path="clash.csv", target="label", model_name="refused-b",
                                           n_estimators=4))
    assert job["status"] == "failed" and job["model_version"] is None, job
    assert "column 4 ('proba_yes') is named like a column the model's answers add" in (job["error"] or "") + \
        (job["log_tail"] or ""), job
    assert api.get("/models/refused-b").status_code == 404
